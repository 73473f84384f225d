"""Memory and time bounds of CLI commands end with one clear line and a non-zero exit, in real
subprocesses (torch and dlib allocate natively, so only a real process shows what happens)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

import pytest
from PIL import Image
from typer.testing import CliRunner

from faceveil import limits
from faceveil.cli import app

CLI = [sys.executable, "-c", "from faceveil.cli import app; app()"]


def _run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in (limits.ENV_MEMORY, limits.ENV_SECONDS)} | env
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=e)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def flat_png(tmp_path_factory):
    p = tmp_path_factory.mktemp("flat") / "flat.png"
    Image.new("RGB", (2000, 2000), (128, 128, 128)).save(p)
    return p


def test_cli_memory_bound_gives_one_clear_line(flat_png, tmp_path):
    """protect on a no-face 2000x2000 image needs ~1.4 GB (the CNN's 1 MP pass): under a 0.8 GB
    bound it ends with the bound's message and exit code 3, not a traceback or the OOM killer."""
    r = _run([*CLI, "--max-memory-gb", "0.8", "protect", str(flat_png), "--defense", "blur", "-o", str(tmp_path)])
    line = _one_error_line(r)
    assert r.returncode == limits.EXIT_MEMORY, r.stderr[-2000:]
    assert line.startswith("error: out of the 0.8 GB memory bound while running `faceveil protect`")
    assert line.endswith("raise it with --max-memory-gb or FACEVEIL_MAX_MEMORY_GB")
    # the same bound from the environment variable
    r = _run([*CLI, "protect", str(flat_png), "--defense", "blur", "-o", str(tmp_path)], FACEVEIL_MAX_MEMORY_GB="0.8")
    assert r.returncode == limits.EXIT_MEMORY and "0.8 GB memory bound" in _one_error_line(r)


def test_cli_time_bound_gives_one_clear_line(flat_png, tmp_path):
    r = _run([*CLI, "--max-seconds", "2", "protect", str(flat_png), "--defense", "blur", "-o", str(tmp_path)], timeout=120)
    line = _one_error_line(r)
    assert r.returncode == limits.EXIT_TIME, r.stderr[-2000:]
    assert "out of the 2 s time bound while running `faceveil protect`" in line
    assert line.endswith("raise it with --max-seconds or FACEVEIL_MAX_SECONDS")


@pytest.mark.parametrize("alloc", [
    "import torch; torch.ones(2**31, dtype=torch.uint8)",  # torch: RuntimeError "can't allocate memory"
    "import numpy as np; np.ones(2**31, dtype=np.uint8)",  # numpy: MemoryError
    "import dlib, numpy as np; dlib.get_frontal_face_detector()(np.zeros((8000, 8000, 3), np.uint8), 1)",  # std::bad_alloc
])
def test_native_allocation_failures_are_recognised(alloc):
    code = textwrap.dedent(f"""
        from faceveil.limits import bounded
        with bounded(1.0, None, "faceveil test"):
            {alloc}
        print("not reached")
    """)
    r = _run([sys.executable, "-c", code], timeout=120)
    line = _one_error_line(r)
    assert r.returncode == limits.EXIT_MEMORY, r.stderr[-2000:]
    assert line.startswith("error: out of the 1 GB memory bound while running `faceveil test`")


def test_swallowed_time_error_still_ends_the_process():
    """Code that catches every exception (a bench loop) cannot outlive the bound by more than GRACE."""
    code = textwrap.dedent("""
        import time
        from faceveil import limits
        limits.GRACE = 1.0
        with limits.bounded(None, 0.5, "faceveil loop"):
            while True:
                try:
                    time.sleep(0.05)
                except Exception:
                    pass
    """)
    r = _run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == limits.EXIT_TIME
    assert "out of the 0.5 s time bound while running `faceveil loop`" in _one_error_line(r)


def test_bounds_resolve_and_restore(monkeypatch):
    monkeypatch.delenv(limits.ENV_MEMORY, raising=False)
    monkeypatch.delenv(limits.ENV_SECONDS, raising=False)
    mem, sec = limits.resolve(None, None)
    assert sec is None and mem == pytest.approx(0.8 * limits.physical_memory_gb(), abs=0.1)
    monkeypatch.setenv(limits.ENV_MEMORY, "6")
    monkeypatch.setenv(limits.ENV_SECONDS, "30")
    assert limits.resolve(None, None) == (6.0, 30.0)
    assert limits.resolve(0, 0) == (None, None)  # 0: no bound
    assert limits.resolve(2.5, None) == (2.5, 30.0)
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with limits.bounded(64.0, None) as b:
        assert resource.getrlimit(resource.RLIMIT_DATA)[0] == 64 * 2**30
        assert b.memory_message().startswith("out of the 64 GB memory bound")
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_cli_options_in_process_are_undone(monkeypatch):
    """Under CliRunner (same process) the bounds apply to the command and are removed after it."""
    monkeypatch.delenv(limits.ENV_MEMORY, raising=False)
    before = resource.getrlimit(resource.RLIMIT_DATA)
    res = CliRunner().invoke(app, ["--max-memory-gb", "64", "--max-seconds", "600", "defenses", "list"])
    assert res.exit_code == 0, res.output
    assert "pixelate" in res.output
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    res = CliRunner().invoke(app, ["--help"])
    assert "--max-memory-gb" in res.output and "--max-seconds" in res.output


def test_memory_error_classification():
    assert limits.is_memory_error(MemoryError())
    assert limits.is_memory_error(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    try:
        try:
            raise MemoryError
        except MemoryError as e:
            raise ValueError("wrapped") from e
    except ValueError as e:
        assert limits.is_memory_error(e)
    assert not limits.is_memory_error(RuntimeError("shape mismatch"))
    assert not limits.is_memory_error(ValueError("bad"))


def test_a_time_error_wrapped_by_an_extension_import_is_the_time_bound():
    """The alarm landing inside ``import dlib`` surfaces as pybind11's ``ImportError: initialization failed``
    raised from the time error: still the time bound's line and exit code, not a traceback."""
    import typer

    b = limits.Bounds(None, 2.0, "faceveil protect")
    try:
        try:
            raise limits.TimeBoundError(b.time_message())
        except limits.TimeBoundError as t:
            raise ImportError("initialization failed") from t
    except ImportError as e:
        msg, code = b.outcome(e)
    assert code == limits.EXIT_TIME and msg.startswith("out of the 2 s time bound while running `faceveil protect`")
    assert b.outcome(ImportError("initialization failed")) is None  # an unrelated import error is not
    b.timed_out = True
    try:  # a command that printed the time error itself and exited 2: no second line
        try:
            raise limits.TimeBoundError(b.time_message())
        except limits.TimeBoundError:
            raise typer.Exit(2) from None
    except typer.Exit as x:
        assert x.__context__ is not None and b.outcome(x) == ("", limits.EXIT_TIME)


def test_exit_after_a_caught_time_error_is_remapped():
    import typer

    b = limits.Bounds(seconds=1, what="faceveil bench")
    assert b.outcome(typer.Exit(1)) is None  # no time-out: exits pass through
    b.timed_out = True
    assert b.outcome(typer.Exit(2)) == ("", limits.EXIT_TIME)  # the command printed the error itself
    msg, code = b.outcome(typer.Exit(5))  # e.g. bench's failed-cell count: the line is still printed
    assert code == limits.EXIT_TIME and msg.startswith("out of the 1 s time bound while running `faceveil bench`")
    assert b.outcome(typer.Exit(0)) is None

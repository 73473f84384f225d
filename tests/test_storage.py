"""Atomic writes (kill -9, full disk, unwritable folders) and verified cache entries (faceveil.storage)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil import storage
from faceveil.config import EpochCheckpoint, load_or_compute
from faceveil.data.io import read_image, write_array, write_image
from faceveil.errors import FaceveilError, FaceveilOutputError
from faceveil.storage import (
    load_cache,
    save_figure_atomic,
    save_torch,
    sidecar,
    sweep_stale,
    verify,
    write_json_atomic,
    write_text_atomic,
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("FACEVEIL_HOME", str(h))
    monkeypatch.delenv("FACEVEIL_ADOPT_UNVERIFIED", raising=False)
    return h


@pytest.fixture(scope="module")
def face(data_root) -> np.ndarray:
    """A real LFW image (250x250 RGB)."""
    return read_image(data_root / "lfw" / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _flip_byte(path: Path, at: int | None = None) -> None:
    b = bytearray(path.read_bytes())
    i = len(b) // 2 if at is None else at
    b[i] ^= 0x01
    path.write_bytes(bytes(b))


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def test_every_writer_is_atomic_and_leaves_no_temp_files(tmp_path: Path, face: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "out" / "deeper"  # folders are created
    write_image(out / "a.png", face)
    write_array(out / "a.npy", np.arange(6.0).reshape(2, 3))
    write_array(out / "odd.bin", np.arange(3))  # np.save must not append .npy
    save_torch(out / "a.pt", {"x": torch.arange(4)})
    write_json_atomic(out / "a.json", {"k": [1, 2]}, indent=2)
    write_text_atomic(out / "a.md", "# report\n")
    fig = plt.figure()
    plt.plot([0, 1])
    save_figure_atomic(fig, out / "a.png.plot.png", dpi=50)
    plt.close(fig)
    assert np.array_equal(read_image(out / "a.png"), face)
    assert np.load(out / "a.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert np.load(out / "odd.bin").tolist() == [0, 1, 2]
    assert torch.equal(torch.load(out / "a.pt", weights_only=True)["x"], torch.arange(4))
    assert verify(out / "a.pt") is None  # save_torch writes a checksum sidecar
    assert json.loads((out / "a.json").read_text()) == {"k": [1, 2]}
    assert (out / "a.md").read_text() == "# report\n"
    assert read_image(out / "a.png.plot.png").shape[2] == 3
    assert _temp_files(tmp_path) == []


def test_temp_file_and_folder_are_fsynced_before_and_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data reaches the disk before it gets its final name, and the rename itself is synced."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(a, b) -> None:
        events.append(f"rename {Path(b).name}")
        real_replace(a, b)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    write_text_atomic(tmp_path / "r.md", "x")
    assert events == ["fsync file", "rename r.md", "fsync dir"]
    events.clear()
    save_torch(tmp_path / "c.pt", torch.ones(2))
    assert events == ["fsync file", "fsync file", "rename c.pt.sha256", "rename c.pt", "fsync dir"]


def _writer_loop(out: Path, face: np.ndarray, ready: int) -> None:
    """What the killed process does: rewrite PNGs, .npy arrays, torch caches (with sidecars) and a
    load_or_compute entry, forever; file k of each kind holds a value that identifies its iteration."""
    os.write(ready, b"1")
    i = 0
    while True:
        k = i % 3
        write_image(out / f"img{k}.png", np.roll(face, 7 * (i % 4), axis=1))
        write_array(out / f"arr{k}.npy", np.full((256, 256), i, dtype=np.float32))
        save_torch(out / f"t{k}.pt", {"x": torch.full((128, 128), float(i)), "i": i})
        load_or_compute(out / f"c{k}.pt", lambda i=i: torch.full((64, 64), float(i)), force=True)
        i += 1


def _check_complete(out: Path, face: np.ndarray) -> dict[str, int]:
    """Every file under a final name decodes completely to a value the writer wrote, and every torch cache
    matches its sidecar (a kill between the sidecar's and the data's rename leaves a consistent pair)."""
    variants = [np.roll(face, 7 * v, axis=1) for v in range(4)]
    seen = {"png": 0, "npy": 0, "pt": 0, "detected": 0}
    for p in out.iterdir():
        if p.name.startswith("."):  # a killed writer's temporary file: never a final name
            assert ".tmp" in p.name
            continue
        if p.suffix == ".png":
            img = read_image(p)  # full decode: a truncated PNG raises here
            assert any(np.array_equal(img, v) for v in variants), p
            seen["png"] += 1
        elif p.suffix == ".npy":
            a = np.load(p)
            assert a.shape == (256, 256) and (a == a[0, 0]).all(), p
            seen["npy"] += 1
        elif p.suffix == ".pt":
            st = torch.load(p, weights_only=True)  # complete and loads
            x = st["x"] if isinstance(st, dict) else st
            assert (x == x[0, 0]).all() and (not isinstance(st, dict) or float(x[0, 0]) == st["i"]), p
            seen["pt"] += 1
            v = load_cache(p, storage.torch_load)  # verified load: the right value or nothing
            if v is None:
                seen["detected"] += 1
            else:
                assert torch.equal(v["x"] if isinstance(v, dict) else v, x)
    return seen


def test_kill9_never_leaves_a_truncated_file(tmp_path: Path, face: np.ndarray) -> None:
    """A process rewriting PNGs (an LFW image), .npy arrays and torch caches is SIGKILLed at random
    moments 24 times; after each kill every file under a final name is complete and loads, and the
    temporary files the dead writers left are swept by the next writer."""
    out = tmp_path / "out"
    out.mkdir()
    rng = random.Random(36)
    kills, totals = 0, {"png": 0, "npy": 0, "pt": 0, "detected": 0}
    for _ in range(24):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child is killed
            try:
                os.close(r)
                _writer_loop(out, face, w)
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        kills += 1
        for k, v in _check_complete(out, face).items():
            totals[k] += v
    assert kills >= 20 and totals["png"] > 0 and totals["npy"] > 0 and totals["pt"] > 0
    assert totals["detected"] == 0  # no sidecar/data pair was torn
    # the dead writers' temporary files are removed (here at once; normally after STALE_TMP_SECONDS)
    sweep_stale(out, min_age=0)
    assert _temp_files(out) == []


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path: Path) -> None:
    """A writer removes, once per folder and process, the temporary files of writers that are gone and
    older than STALE_TMP_SECONDS; a live writer's and a fresh one are kept."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 2 * storage.STALE_TMP_SECONDS
    d = tmp_path / "cache"
    d.mkdir()
    stale = [d / f".x.{dead.pid}-0.tmp.pt", d / f".y.{dead.pid}.tmp.npy", d / f".SOURCE.{dead.pid}.tmp"]
    live = d / f".z.{os.getppid()}-3.tmp.pt"
    fresh = d / f".w.{dead.pid}-1.tmp.png"
    for p in [*stale, live, fresh]:
        p.write_bytes(b"partial")
        if p is not fresh:
            os.utime(p, (old, old))
    write_text_atomic(d / "entry.json", "{}")
    assert sorted(p.name for p in d.iterdir()) == sorted(["entry.json", live.name, fresh.name])


@pytest.mark.parametrize("where", ["write", "fsync"])
@pytest.mark.parametrize("kind", ["png", "npy", "torch", "json", "cache"])
def test_full_disk_is_a_one_line_error_naming_the_file(tmp_path: Path, face: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                       kind: str, where: str) -> None:
    """ENOSPC while writing (or at fsync, where delayed allocation reports it) raises FaceveilOutputError
    naming the path; the previous file is intact and no temporary file is left."""
    path = tmp_path / f"out.{ {'png': 'png', 'npy': 'npy', 'json': 'json'}.get(kind, 'pt') }"
    write = {
        "png": lambda: write_image(path, face),
        "npy": lambda: write_array(path, np.zeros(4)),
        "torch": lambda: save_torch(path, torch.zeros(4)),
        "json": lambda: write_json_atomic(path, {"a": 1}),
        "cache": lambda: load_or_compute(path, lambda: torch.zeros(4), force=True),
    }[kind]
    write()
    before = path.read_bytes()
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "fsync":
        def fsync(fd: int) -> None:
            raise enospc
        monkeypatch.setattr(storage.os, "fsync", fsync)
    else:
        real_open = open

        class Full:  # a file that takes 4 bytes, then the disk is full
            def __init__(self, f):
                self.f, self.n = f, 0

            def write(self, b):
                self.n += len(b)
                if self.n > 4:
                    raise enospc
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

        def full_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            return Full(f) if ".tmp" in str(file) and "w" in mode else f

        import builtins

        monkeypatch.setattr(builtins, "open", full_open)
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: full_open(self, "wb").write(data))
    with pytest.raises(FaceveilOutputError) as e:
        write()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "no space left on device" in msg
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder nothing can be written into: chmod 0o500 for a normal user; as root (whom chmod does not
    stop) a path whose parent is a file."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    return blocker / "out"


def test_unwritable_output_folder_is_a_one_line_error(tmp_path: Path, face: np.ndarray) -> None:
    d = _unwritable_folder(tmp_path)
    for write in (lambda p: write_image(p, face), lambda p: write_array(p, np.zeros(3)), lambda p: save_torch(p, 1),
                  lambda p: write_json_atomic(p, {})):
        with pytest.raises(FaceveilOutputError) as e:
            write(d / "x.out")
        assert "\n" not in str(e.value) and str(d) in str(e.value)


def test_cli_protect_into_unwritable_folder(tmp_path: Path, data_root: Path) -> None:
    """`faceveil protect -o <unwritable>`: `error: ...` naming the folder, exit 2, no traceback."""
    from typer.testing import CliRunner

    from faceveil.cli import app

    d = _unwritable_folder(tmp_path)
    img = data_root / "lfw" / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    res = CliRunner().invoke(app, ["protect", str(img), "--defense", "pixelate", "-o", str(d)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot") and str(d) in lines[0]


def test_cli_protect_on_a_full_disk(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`faceveil protect` when the disk fills up while the PNG is written: one `error:` line naming the
    file, exit 1, nothing under the final name (the manifest records the failure)."""
    import PIL.Image
    from typer.testing import CliRunner

    from faceveil.cli import app

    def full(self, fp, *a, **k):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PIL.Image.Image, "save", full)
    img = data_root / "lfw" / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    res = CliRunner().invoke(app, ["protect", str(img), "--defense", "pixelate", "-o", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output  # the batch stopped: the manifest says what was (not) written
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    dest = tmp_path / "out" / "Aaron_Eckhart_0001.pixelate.png"
    assert lines[0] == f"failed: cannot write {dest}: no space left on device"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["manifest.json"]  # no partial image


# ---------------------------------------------------------------------------------------------
# Verified cache entries
# ---------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "bit-flip":
        _flip_byte(path)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif how == "no-sidecar":
        sidecar(path).unlink()


@pytest.mark.parametrize("how", ["bit-flip", "truncated", "empty", "garbage", "no-sidecar"])
def test_bad_cache_entry_is_reported_discarded_and_recomputed(home: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    path = home / "x" / "value.pt"
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(1000.0)

    assert torch.equal(load_or_compute(path, compute), torch.arange(1000.0)) and len(calls) == 1
    assert torch.equal(load_or_compute(path, compute), torch.arange(1000.0)) and len(calls) == 1  # cached
    _damage(path, how)
    caplog.clear()
    assert torch.equal(load_or_compute(path, compute), torch.arange(1000.0)) and len(calls) == 2  # recomputed
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "recomputing" in warnings[0], warnings
    assert verify(path) is None  # rewritten with a good sidecar
    assert torch.equal(load_or_compute(path, compute), torch.arange(1000.0)) and len(calls) == 2


def test_unverified_entries_can_be_adopted(home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """FACEVEIL_ADOPT_UNVERIFIED=1 keeps a readable entry from before checksums (and writes its sidecar)."""
    path = home / "old.pt"
    path.parent.mkdir(parents=True)
    torch.save(torch.ones(3), path)  # as faceveil wrote it before checksums
    monkeypatch.setenv("FACEVEIL_ADOPT_UNVERIFIED", "1")
    assert torch.equal(load_or_compute(path, lambda: pytest.fail("recomputed")), torch.ones(3))
    assert "adopted" in caplog.text and verify(path) is None
    _flip_byte(path)  # adopted entries are verified from then on
    assert torch.equal(load_or_compute(path, lambda: torch.zeros(3)), torch.zeros(3))


def test_bad_npz_and_json_entries(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same for the .npz (embeddings) and JSON (operating points) caches, through load_cache."""
    from faceveil.models.embed import load_npz
    from faceveil.storage import write_atomically

    npz, js = home / "e.npz", home / "op.json"
    write_atomically(npz, lambda p: np.savez(p, emb=np.ones((4, 3)), status=np.zeros(4)), checksum=True)
    write_json_atomic(js, {"threshold": 0.6}, checksum=True)
    assert load_cache(npz, lambda p: load_npz(p, "emb", "status"))["emb"].shape == (4, 3)
    assert load_cache(js, lambda p: json.loads(p.read_text())) == {"threshold": 0.6}
    _flip_byte(npz)
    _flip_byte(js, at=3)
    assert load_cache(npz, lambda p: load_npz(p, "emb", "status")) is None
    assert load_cache(js, lambda p: json.loads(p.read_text())) is None
    assert str(npz) in caplog.text and str(js) in caplog.text and not npz.exists() and not js.exists()


def test_corrupt_training_checkpoint_restarts_training(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    ck = EpochCheckpoint(home / "run.ckpt", seconds=0.0)
    ck.maybe_save(lambda: {"epoch": 3})
    assert EpochCheckpoint(home / "run.ckpt").load()["epoch"] == 3
    (home / "run.ckpt").write_bytes((home / "run.ckpt").read_bytes()[:100])
    assert EpochCheckpoint(home / "run.ckpt").load() is None
    assert "run.ckpt" in caplog.text and "training from the start" in caplog.text


def test_trained_attacker_cache_is_verified(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trained attacker whose file was bit-flipped is not loaded (the harness retrains it)."""
    from faceveil.attacks.base import get_attack

    a = get_attack("dn", target_size=32)
    a.in_shape = (3, 32, 32)
    a.net = a.build(a.in_shape)
    path = home / "attacks" / "dn.pt"
    a.save(path)
    b = get_attack("dn", target_size=32)
    assert b.load_cached(path) and b.in_shape == (3, 32, 32)
    _flip_byte(path, at=path.stat().st_size - 200)
    c = get_attack("dn", target_size=32)
    assert not c.load_cached(path) and c.net is None
    assert f"{path}: trained attacker does not match its sha256" in caplog.text and not path.exists()


# ---------------------------------------------------------------------------------------------
# Read-only FACEVEIL_HOME
# ---------------------------------------------------------------------------------------------


def _read_only_runner(home: Path) -> list[str] | None:
    """A command prefix that runs its command with ``home`` mounted read-only (a private mount
    namespace; needs root) or, for a normal user, after chmod 0o500; None when neither is possible."""
    if os.geteuid() != 0:
        home.chmod(0o500)
        return []
    if not shutil.which("unshare"):
        return None
    prefix = ["unshare", "-m", "sh", "-c", f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}" && exec "$@"',
              "sh"]
    probe = subprocess.run([*prefix, "sh", "-c", f'touch "{home}/probe"'], capture_output=True)
    return prefix if probe.returncode != 0 and not (home / "probe").exists() else None


def test_read_only_home_gives_a_one_line_error(tmp_path: Path, data_root: Path) -> None:
    """With FACEVEIL_HOME read-only, a command that must fill a cache ends with one `error:` line naming
    FACEVEIL_HOME (exit 2, no traceback); what is already cached is still read."""
    home = tmp_path / "home"
    env = dict(os.environ, FACEVEIL_HOME=str(home), PYTHONPATH=str(SRC), FACEVEIL_DATA=str(data_root))
    cached = home / "utility" / "x.pt"
    subprocess.run([sys.executable, "-c", f"from faceveil.config import load_or_compute; import torch; "
                    f"load_or_compute(__import__('pathlib').Path({str(cached)!r}), lambda: torch.ones(2))"],
                   env=env, check=True)
    prefix = _read_only_runner(home)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    read = subprocess.run([*prefix, sys.executable, "-c", f"from faceveil.config import load_or_compute; "
                           f"print(load_or_compute(__import__('pathlib').Path({str(cached)!r}), lambda: 1/0).tolist())"],
                          env=env, capture_output=True, text=True)
    assert read.returncode == 0 and read.stdout.strip() == "[1.0, 1.0]", read.stderr
    run = subprocess.run([*prefix, sys.executable, "-c", "from faceveil.cli import main; main()", "eval", "lfw",
                          "--per-fold", "1", "--out", str(tmp_path / "lfw.json")], env=env, capture_output=True, text=True)
    err = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert err[0].startswith("error: cannot") and "FACEVEIL_HOME" in err[0] and str(home) in err[0]
    assert "Traceback" not in run.stderr + run.stdout


def test_home_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faceveil.config import cache_dir

    (tmp_path / "f").write_text("")
    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path / "f" / "home"))
    with pytest.raises(FaceveilError) as e:
        cache_dir("align")
    assert "\n" not in str(e.value) and "FACEVEIL_HOME" in str(e.value) and str(tmp_path / "f" / "home") in str(e.value)

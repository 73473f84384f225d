"""Runs the atheris harness (tests/fuzz/fuzz_read_image.py) for a fixed number of iterations,
seeded with small real-face files in every format. Slow: ``pytest -m slow tests/fuzz``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.seeds import seed_files

HARNESS = Path(__file__).with_name("fuzz_read_image.py")
RUNS = int(os.environ.get("FACEVEIL_ATHERIS_RUNS", "20000"))


@pytest.mark.slow
def test_atheris_read_image(tmp_path, data_root):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in seed_files().items():
        (corpus / name).write_bytes(data)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), f"-runs={RUNS}", "-max_len=65536", "-timeout=20",
         "-rss_limit_mb=4096", "-seed=1", "-print_final_stats=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    tail = r.stderr[-4000:]
    assert r.returncode == 0, f"atheris found a failing input (see crash-*/timeout-* in {tmp_path}):\n{tail}"
    assert f"Done {RUNS} runs" in r.stderr, tail

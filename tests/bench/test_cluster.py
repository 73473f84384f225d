"""The cluster path: the bench's cells as Ray tasks on a local Ray instance give the local executor's results."""

from __future__ import annotations

import torch

from faceveil.bench.diff import diff_results
from faceveil.bench.runner import run_bench
from faceveil.context import RunContext


def test_ray_executor_reproduces_the_local_executor(tmp_path, data_root):
    # both runs retrain their attacker (force) and judge it afresh; the utility cell and its template-protection
    # measures come from the shared caches (FACEVEIL_HOME), as they do for every executor
    ctx = RunContext("ci", 0, data_root, force=True, progress=False, out_dir=tmp_path / "ray")
    kw = {"defenses": ["pixelate"], "attacks": ["ridge"], "experiments": False}
    ray_run = run_bench(ctx, executor="ray", ray_cpus=2, **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (one CPU per cell)
    try:
        local = run_bench(ctx.replace(out_dir=tmp_path / "local"), executor="local", **kw)
    finally:
        torch.set_num_threads(threads)
    assert ray_run["executor"] == "ray" and local["executor"] == "local"
    assert [c["status"] for c in ray_run["cells"]] == ["ok", "ok"] == [c["status"] for c in local["cells"]]
    d = diff_results(ray_run, local, tol=1e-3)
    assert d.same and d.compared == 2, d.text(1e-3)
    assert (tmp_path / "ray" / "report.md").is_file() and (tmp_path / "ray" / "results.json").is_file()
    assert ray_run["cells"][1]["result"]["train_log"]["seconds"] >= 0  # the attacker was trained in the Ray task

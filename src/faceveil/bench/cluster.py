"""The bench's cluster path: every planned cell as a Ray task (``faceveil bench --executor ray [--address ...]``).

Each cell (:func:`faceveil.bench.runner.run_cell`: one setting's utility, or one attack on it) is one task that
declares its resources: ``cpus_per_cell`` CPUs (default 1; ``OMP_NUM_THREADS`` is set to match) and, when the
run's device is CUDA, one GPU. Without ``address`` a local Ray instance is started on this machine (all its
cores); ``address="auto"`` joins the cluster this machine belongs to, ``"ray://head:10001"`` a remote one.

**Caches travel through the filesystem, not the object store.** A task reads and writes the same on-disk caches
as a local run (``FACEVEIL_HOME``: aligned chips, embeddings, trained students and attackers, protected sets,
judged results; atomic writes and checksums make concurrent writers safe), so a Ray run resumes from what a
local run (or an interrupted Ray run) cached and vice versa. On a multi-machine cluster ``FACEVEIL_HOME`` and the
face data (``FACEVEIL_DATA``) must therefore be on a filesystem every node mounts at the same path (NFS, a
cluster filesystem); the driver passes both paths to the workers. Only each cell's small result (its JSON dict
and its grid images, a few MB) comes back through Ray's object store. The paper experiments of named defenses
run on the driver afterwards, as in a local run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from faceveil.bench.plan import BenchProfile
from faceveil.context import RunContext
from faceveil.errors import FaceveilError

#: environment the workers need to find the same data, caches and models as the driver
FORWARDED_ENV = ("FACEVEIL_HOME", "FACEVEIL_DATA", "FACEVEIL_RECOGNIZER", "FACEVEIL_ADOPT_UNVERIFIED")


def _cell_task(run_cell: Callable, item, bp: BenchProfile, ctx: RunContext):
    return run_cell(item, bp, ctx)


def run_cells_ray(run_cell: Callable, plan: list, bp: BenchProfile, ctx: RunContext, address: str | None = None,
                  cpus_per_cell: int = 1, num_cpus: int | None = None,
                  on_done: Callable[[int, int], None] | None = None) -> list:
    """``[run_cell(item, bp, ctx) for item in plan]`` (``(cell, images)`` pairs, in plan order) computed as Ray tasks
    (module docstring; ``run_cell`` is :func:`faceveil.bench.runner.run_cell`, passed in by reference).
    ``num_cpus`` limits a local instance's CPUs (default: all); ``on_done(done, total)`` reports progress."""
    try:
        import ray
    except ImportError:
        raise FaceveilError("--executor ray needs Ray: pip install 'faceveil[cluster]' (or pip install ray)") from None
    if cpus_per_cell < 1:
        raise FaceveilError(f"cpus per cell must be >= 1, got {cpus_per_cell}")
    from faceveil.config import data_dir, home

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["FACEVEIL_HOME"] = str(home())
    env["FACEVEIL_DATA"] = str(data_dir(ctx.data))
    env["OMP_NUM_THREADS"] = str(cpus_per_cell)
    started = not ray.is_initialized()
    if started:
        kw: dict = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False,
                    "configure_logging": False}
        if address is None:
            kw |= {"num_cpus": num_cpus or os.cpu_count(), "object_store_memory": 256 * 2**20}
        ray.init(address=address, **kw)
    try:
        gpus = 1 if str(ctx.device).startswith("cuda") else 0
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus, max_retries=1)(_cell_task)
        ctx = ctx.replace(progress=False, data=str(data_dir(ctx.data)))
        refs = [task.remote(run_cell, item, bp, ctx) for item in plan]
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            done += len(ready)
            if ready and on_done is not None:
                on_done(done, len(refs))
            if not ready:
                time.sleep(0.1)
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()

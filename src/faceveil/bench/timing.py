"""Per-face wall time of a batched function, for the ``bench/`` scripts (one run, ratios printed)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def per_face_ms(fn: Callable[[torch.Tensor], object], x: torch.Tensor, batch: int, repeats: int = 1) -> float:
    """Mean ms per face of ``fn`` over ``x`` in batches of ``batch``, after one warm-up call on a
    small batch (first-call allocations and lazy model loading are not timed)."""
    fn(x[: min(batch, 2)])
    t = time.perf_counter()
    for _ in range(repeats):
        for s in range(0, len(x), batch):
            fn(x[s : s + batch])
    return 1000 * (time.perf_counter() - t) / (repeats * len(x))

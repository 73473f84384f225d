"""One typed context for a run: what every training, attack, benchmark and experiment call shares."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    """``profile`` (ci | quick | full budgets), ``seed`` (of every training and research draw), ``data``
    (face-data folder; None: ``FACEVEIL_DATA`` or ``../shared/data``), ``device`` (default ``FACEVEIL_DEVICE``,
    set by ``faceveil --device``, else the CPU), ``force`` (retrain
    cached models), ``progress`` (bars), ``out_dir`` (where results are written; None: nowhere)."""

    profile: str = "quick"
    seed: int = 0
    data: str | os.PathLike | None = None
    device: str = dataclasses.field(default_factory=lambda: os.environ.get("FACEVEIL_DEVICE") or "cpu")
    force: bool = False
    progress: bool = True
    out_dir: Path | None = None

    def replace(self, **changes) -> RunContext:
        return dataclasses.replace(self, **changes)

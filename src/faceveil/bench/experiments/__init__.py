"""Paper-specific experiments (tables, figures, ablations), one module per defense, registered in
:data:`faceveil.bench.runner.EXPERIMENTS`; they run when their defense is named in ``--defenses``."""

from __future__ import annotations

import importlib

for _m in ("faceobfuscator", "advface", "pmt", "deepblur"):
    try:
        importlib.import_module(f"faceveil.bench.experiments.{_m}")
    except ModuleNotFoundError as _e:
        if _e.name != f"faceveil.bench.experiments.{_m}":
            raise

"""Shared pieces of the paper experiments: utility / privacy measurements and markdown tables."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from faceveil.attacks.base import ThreatModel
from faceveil.bench.build import bench_system, lfw_utility
from faceveil.defenses import Defense
from faceveil.storage import ensure_dir


def utility(defense: Defense, server: str, ctx: dict) -> dict:
    """LFW 10-fold utility through the protected path (per the bench profile's pair budget)."""
    bp = ctx["bench_profile"]
    system = bench_system(defense, server, bp.attack_profile, ctx["seed"], ctx["data"])
    out = lfw_utility(system, ctx["lfw"], per_fold=bp.utility_per_fold, seed=ctx["seed"])
    if server == "adapted":
        out["train_log"] = getattr(system.model, "train_log", None)
    return out


def privacy(defense: Defense, attack: str, ctx: dict, view: str | None = None, leakage: str = "channel") -> dict:
    """One attack run (cached attacker) -> the result dict of :func:`faceveil.attacks.harness.run_attack`."""
    from faceveil.attacks.harness import run_attack

    threat = ThreatModel(leakage=leakage, knowledge="white-box" if attack == "whitebox" else "black-box client",
                         adaptive=view is not None, view=view)
    r = run_attack(defense, attack, threat, profile=ctx["bench_profile"].attack_profile, seed=ctx["seed"], data=ctx["data"],
                   force=ctx.get("force", False), out_dir=Path(ctx["out_dir"]) / "cells", progress=ctx.get("progress", True))
    return r


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def attempt(fn, *args, **kwargs) -> tuple[object | None, str | None]:
    """Run one measurement; a failure is returned as an error string (the experiment continues)."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # recorded in the report
        return None, f"{type(e).__name__}: {e}"


def experiment_parser(description: str, profiles: Iterable[str], default_out: str) -> argparse.ArgumentParser:
    """The arguments every experiment script shares: ``--profile --out --data-dir --seed --force``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--profile", default="ci", choices=sorted(profiles))
    ap.add_argument("--out", type=Path, default=Path(default_out))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    return ap


def experiment_context(profile: str, out_dir: Path, data=None, seed: int = 0, force: bool = False,
                       progress: bool = True, **extra) -> dict:
    """The ``ctx`` an experiment's ``run`` takes when run outside the bench runner (output folder created)."""
    from faceveil.bench.runner import BENCH_PROFILES
    from faceveil.data.datasets import LFW

    ensure_dir(Path(out_dir))
    return dict(profile=profile, bench_profile=BENCH_PROFILES[profile], data=data, seed=seed, out_dir=out_dir,
                lfw=LFW(data), force=force, progress=progress, **extra)

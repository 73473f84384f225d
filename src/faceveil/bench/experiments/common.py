"""Shared pieces of the paper experiments: utility / privacy measurements and markdown tables."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path

from faceveil.attacks.base import ThreatModel, attack_class
from faceveil.bench.build import bench_system, lfw_utility
from faceveil.bench.plan import ExperimentContext  # noqa: F401  (experiments' context, re-exported)
from faceveil.defenses import Defense
from faceveil.storage import ensure_dir


def utility(defense: Defense, server: str, ctx: ExperimentContext) -> dict:
    """LFW 10-fold utility through the protected path (per the bench profile's pair budget)."""
    bp = ctx.bench_profile
    system = bench_system(defense, server, bp.attack_profile, ctx.seed, ctx.data,
                          **(ctx.student_overrides() if server == "adapted" else {}))
    out = lfw_utility(system, ctx.lfw, per_fold=bp.utility_per_fold, seed=ctx.seed)
    if server == "adapted":
        out["train_log"] = getattr(system.model, "train_log", None)
    return out


def student_steps(u: dict | None, profile: str) -> str:
    """How many steps an adapted server's student trained (``u``: :func:`utility`'s result), and of how many its
    profile plans when its wall-time cap stopped it first (a busy machine): rows compared as same-budget say so."""
    from faceveil.train.distill import distill_config

    log = (u or {}).get("train_log") or {}
    if not log.get("steps") or not log.get("images"):
        return "—"
    cfg = distill_config(profile)
    planned = cfg.epochs * max(1, log["images"] // cfg.batch_size)
    return str(log["steps"]) if log["steps"] >= planned else f"{log['steps']} of {planned} (time cap)"


def privacy(defense: Defense, attack: str, ctx: ExperimentContext, view: str | None = None, leakage: str = "channel") -> dict:
    """One attack run (cached attacker) -> the result dict of :func:`faceveil.bench.privacy.run_attack`."""
    from faceveil.bench.privacy import run_attack

    threat = ThreatModel(leakage=leakage, knowledge=attack_class(attack).knowledge(),
                         adaptive=view is not None, view=view)
    return run_attack(defense, attack, threat, ctx.attack_ctx(ctx.cells()))


def md_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; a ``|`` inside a cell is escaped (it would start a new column)."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v).replace("|", "\\|")

    out = ["| " + " | ".join(str(h).replace("|", "\\|") for h in headers) + " |", "|" + "---|" * len(headers)]
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


def _positive_seconds(text: str) -> float:
    """``--student-seconds``: a positive, finite number of seconds (argparse reports the bad value)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the cap must be a positive, finite number of seconds")
    return v


def experiment_parser(description: str, profiles: Iterable[str], default_out: str,
                      students: bool = False) -> argparse.ArgumentParser:
    """The arguments every experiment script shares: ``--profile --out --data-dir --seed --force``, and
    ``--student-seconds`` for those that distil adapted servers (``students``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--profile", default="ci", choices=sorted(profiles))
    ap.add_argument("--out", type=Path, default=Path(default_out))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    if students:
        ap.add_argument("--student-seconds", type=_positive_seconds, default=None,
                        help="wall-time cap of each adapted server's student (default: the profile's; e.g. quick "
                             "300 s, which stops 4-10 s/step students before their planned steps on a 2-core CPU)")
    return ap


def experiment_context(profile: str, out_dir: Path, data=None, seed: int = 0, force: bool = False,
                       progress: bool = True, device: str = "cpu", **options) -> ExperimentContext:
    """The context an experiment's ``run`` takes (output folder created)."""
    from faceveil.bench.plan import BENCH_PROFILES
    from faceveil.data.datasets import LFW

    ensure_dir(Path(out_dir))
    return ExperimentContext(profile=profile, seed=seed, data=data, device=device, force=force, progress=progress,
                             out_dir=Path(out_dir), bench_profile=BENCH_PROFILES[profile], lfw=LFW(data), options=options)

"""The benchmark: defenses x attacks on LFW -> utility and privacy tables, grids, a scatter plot.

A *setting* is a defense with parameters (e.g. ``blur k=16``). For every setting the runner
measures utility (LFW 10-fold accuracy with the frozen recogniser, and with an adapted student
where the defense transmits images or needs one) and privacy (every attack, under channel leakage
and — where the server stores something else — database leakage). Every cell records its config,
seed, threat model, data subset, versions and wall time; a failing cell is recorded with its error
and the run continues. Trained students and attackers come from the cache on re-runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from faceveil.attacks.base import ThreatModel, attack_class
from faceveil.bench.build import bench_system, lfw_utility
from faceveil.bench.plan import (  # noqa: F401  (re-exported: the bench's plan lives in faceveil.bench.plan)
    BENCH_PROFILES,
    DEFAULT_ATTACKS,
    EXPERIMENTS,
    SETTINGS,
    BenchProfile,
    ExperimentContext,
    Setting,
    Sizes,
    attack_suite,
    setting_sizes,
    settings_for,
)
from faceveil.context import RunContext
from faceveil.data.datasets import LFW
from faceveil.defenses import DEFENSES, Defense
from faceveil.devices import device_record, use_device
from faceveil.storage import ensure_dir, save_torch, write_bytes_atomic, write_json_atomic

#: where a bench's cells run: this process (``--jobs`` worker processes for several defenses) or Ray tasks
EXECUTORS = ("local", "ray")


def _stores_differently(d: Defense) -> bool:
    return type(d).protect_stored is not Defense.protect_stored


def _supports_whitebox(d: Defense) -> bool:
    return d.differentiable and not d.stochastic or type(d).whitebox_forward is not Defense.whitebox_forward


def utility_servers(d: Defense, setting: Setting, profile: BenchProfile) -> tuple[str, ...]:
    if setting.utility_servers is not None:
        return setting.utility_servers
    servers = () if d.needs_adapted_server else ("frozen",)
    if profile.adapted and (d.needs_adapted_server
                            or d.domain == "image" and (clean_reference(d) or not profile.adapted_only_needed)):
        servers += ("adapted",)
    return servers


def clean_reference(d: Defense) -> bool:
    """The unprotected images: where a profile trains students, they get one too — the same-budget clean student
    every adapted server is read against (its system stays the deployed recogniser)."""
    return d.name == "none" and d.domain == "image"


@dataclass
class Cell:
    kind: str  # "utility" or "privacy"
    setting: str
    defense: str
    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
    attack: str | None = None  # privacy cells: what ran (kept when the cell failed and has no result)
    leakage: str | None = None
    view: str | None = None


def _capped(n: int | None, cap: int | None) -> int | None:
    """``n`` (None = all) limited to ``cap`` (None = no cap)."""
    return n if cap is None else cap if n is None else min(n, cap)


def _versions() -> dict:
    import faceveil

    return {"faceveil": faceveil.__version__, "torch": torch.__version__, "python": platform.python_version()}


#: one planned cell: (kind, setting, attack, leakage, adaptive view)
PlanItem = tuple[str, Setting, str | None, str | None, str | None]


def plan_cells(names: list[str], attack_names: tuple[str, ...], data=None,
               settings: list[str] | None = None, profile: str | None = None) -> list[PlanItem]:
    """The bench's cells in run order at bench profile ``profile`` (only the settings named in ``settings``, when
    given)."""
    plan: list[PlanItem] = []
    for n in names:
        for st in settings_for(n, profile):
            if settings is not None and st.label not in settings:
                continue
            d = st.build(data)
            plan.append(("utility", st, None, None, None))
            for a in (attack_names if st.attacks is None else st.attacks):
                if not attack_class(a).applies_to(d.name):  # written for other defenses
                    continue
                optimises = "forward_map" in attack_class(a).needs
                if optimises and not _supports_whitebox(d):
                    continue
                for view in st.views:
                    if optimises and view is not None:
                        # the white-box attacker knows the pipeline: Defense.whitebox_forward is already
                        # invariant to the unknown randomness (FaceObfuscator: |d|, and its recovery is
                        # idempotent), so an "adaptive" white-box cell would repeat it exactly
                        continue
                    plan.append(("privacy", st, a, "channel", view))
                    if _stores_differently(d):
                        plan.append(("privacy", st, a, "database", view))
    return plan


def run_bench(ctx: RunContext | None = None, defenses: list[str] | None = None, attacks: list[str] | None = None,
              experiments: bool = True, jobs: int = 1, settings: list[str] | None = None, executor: str = "local",
              address: str | None = None, ray_cpus: int | None = None) -> dict:
    """Run every (setting, utility/attack) cell, then (``experiments``) the paper experiments of the
    defenses named in ``defenses``; write results.json/csv, images.pt, report.md/html into ``ctx.out_dir``
    (default ``results/bench``); ``ctx.profile`` is a bench profile (ci | quick | full).

    ``settings``: only these settings of the named defenses (names as in the report, e.g.
    ``none (embedding)``). ``jobs > 1`` runs the defenses in that many worker processes (one defense per process, longest
    first, ``OMP_NUM_THREADS`` = cores // jobs) and merges their results into one report. ``executor="ray"`` runs
    every cell as a Ray task instead (:mod:`faceveil.bench.cluster`; ``address``: a cluster to join, default a
    local instance with ``ray_cpus`` CPUs), with the same caches and the same results."""
    EXPERIMENTS.load()  # experiment modules register settings too

    ctx = ctx or RunContext()
    if ctx.out_dir is None:
        ctx = ctx.replace(out_dir=Path("results/bench"))
    profile, seed, data, progress = ctx.profile, ctx.seed, ctx.data, ctx.progress
    if profile not in BENCH_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {sorted(BENCH_PROFILES)}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {EXECUTORS}")
    bp = BENCH_PROFILES[profile]
    use_device(ctx.device)  # this process's models, and the --jobs workers' (FACEVEIL_DEVICE)
    names = defenses or DEFENSES.names()
    for n in names:
        DEFENSES.get(n)  # clear error for unknown names
    attack_names = tuple(attacks or attack_suite(profile))
    if settings is not None:
        known = {st.label for n in names for st in settings_for(n, profile)}
        if unknown := [s for s in settings if s not in known]:
            raise ValueError(f"unknown setting(s) {unknown} of {', '.join(names)}; known: {sorted(known)}")
    out_dir = Path(ctx.out_dir)
    ensure_dir(out_dir)
    if executor == "local" and jobs > 1 and len(names) > 1 and settings is None:
        return _run_parallel(ctx, names, attack_names, experiments and defenses is not None, jobs)
    lfw = LFW(data)
    t_start = time.perf_counter()

    plan = plan_cells(names, attack_names, data, settings, profile)
    cells: list[Cell] = []
    images: dict = {}
    bar = tqdm(plan, desc=f"bench ({profile})", disable=not progress, unit="cell")
    interrupted = False
    with _interruptible():
        try:
            if executor == "ray":
                from faceveil.bench.cluster import run_cells_ray

                def done(n: int, total: int) -> None:
                    bar.n = n
                    bar.refresh()

                for cell, imgs in run_cells_ray(run_cell, plan, bp, ctx, address, num_cpus=ray_cpus, on_done=done):
                    cells.append(cell)
                    images |= imgs
            else:
                _run_cells(bar, cells, images, bp, ctx, lfw)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: report what finished
            interrupted = True
    bar.close()

    run_experiments, experiments = experiments and not interrupted, {}
    for n in (defenses or []) if run_experiments else []:
        if n in EXPERIMENTS:
            t0 = time.perf_counter()
            try:
                ectx = ExperimentContext(bp.experiment_profile or profile, seed, data, ctx.device, ctx.force, progress,
                                         out_dir, bench_profile=bp, lfw=lfw)
                experiments[n] = EXPERIMENTS.get(n)(ectx)
                experiments[n]["status"] = "ok"
            except Exception as e:
                experiments[n] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=8)}
            experiments[n]["seconds"] = time.perf_counter() - t0

    results = {
        "profile": profile, "seed": seed, **device_record(ctx.device), "defenses": names, "attacks": list(attack_names),
        "versions": _versions(), "wall_seconds": time.perf_counter() - t_start,
        "cells": [asdict(c) for c in cells], "experiments": experiments,
        "failed": sum(c.status == "failed" for c in cells) + sum(e.get("status") == "failed" for e in experiments.values()),
        "interrupted": interrupted, "planned_cells": len(plan), "executor": executor,
    }
    write_outputs(results, images, out_dir)
    return results


def write_outputs(results: dict, images: dict, out_dir: Path) -> None:
    """A run's results.json, images.pt and report (md, html, csv, figures) in ``out_dir``."""
    from faceveil.bench.report import write_report

    write_json_atomic(out_dir / "results.json", results, indent=2, default=str)
    save_images(images, out_dir / "images.pt")
    write_report(results, images, out_dir)


def save_images(images: dict, path: Path) -> None:
    """The grid images of a run ({(setting, attack, leakage): {"original"|"held"|"reconstruction": N×3×H×W
    in [0, 1]}}) as uint8, so that runs can be merged into one report later."""
    save_torch(path, {k: {r: (t.clamp(0, 1) * 255).round().to(torch.uint8) for r, t in v.items()} for k, v in images.items()},
               checksum=False)


def load_images(path: Path) -> dict:
    """Inverse of :func:`save_images` (float images in [0, 1]); ``{}`` if the run saved none."""
    if not Path(path).is_file():
        return {}
    raw = torch.load(path, weights_only=True)
    return {k: {r: t.float() / 255 for r, t in v.items()} for k, v in raw.items()}


def merge_runs(run_dirs: list[Path], out_dir: Path, wall_seconds: float | None = None, interrupted: bool = False) -> dict:
    """One results.json / report from several bench output folders (e.g. the per-defense parts of a
    ``--jobs`` run): cells, experiments and images concatenated in the given order. A folder without
    results.json (its process died) becomes one failed cell naming its log."""

    out_dir = Path(out_dir)
    merged: dict = {"cells": [], "experiments": {}, "defenses": [], "attacks": [], "failed": 0,
                    "interrupted": interrupted, "planned_cells": 0, "parts": []}
    images: dict = {}
    for d in map(Path, run_dirs):
        f = d / "results.json"
        if not f.is_file():
            merged["cells"].append(asdict(Cell("run", d.name, d.name, status="failed",
                                               error=f"the worker wrote no results; see {d / 'log.txt'}")))
            merged["failed"] += 1
            merged["parts"].append({"dir": str(d), "status": "failed"})
            continue
        r = json.loads(f.read_text())
        for k in ("profile", "seed", "versions"):
            merged.setdefault(k, r[k])
        for k in ("device", "device_name", "precision"):  # where the parts ran (runs before devices were recorded have none)
            if k in r:
                merged.setdefault(k, r[k])
        if r.get("precision", "fp32") != merged.get("precision", "fp32"):
            raise ValueError(f"cannot merge {d}: precision {r.get('precision', 'fp32')} differs from "
                             f"{merged.get('precision', 'fp32')}")
        if r["profile"] != merged["profile"] or r["seed"] != merged["seed"]:
            raise ValueError(f"cannot merge {d}: profile/seed {r['profile']}/{r['seed']} differ from "
                             f"{merged['profile']}/{merged['seed']}")
        merged["cells"] += r["cells"]
        merged["experiments"] |= {n: _with_figures_in(e, d, out_dir) for n, e in r.get("experiments", {}).items()}
        merged["defenses"] += [n for n in r["defenses"] if n not in merged["defenses"]]
        merged["attacks"] += [a for a in r["attacks"] if a not in merged["attacks"]]
        merged["failed"] += r["failed"]
        merged["interrupted"] |= bool(r.get("interrupted"))
        merged["planned_cells"] += r.get("planned_cells", len(r["cells"]))
        merged["parts"].append({"dir": str(d), "wall_seconds": r["wall_seconds"], "failed": r["failed"]})
        images |= load_images(d / "images.pt")
    if "profile" not in merged:
        raise ValueError(f"none of {[str(d) for d in run_dirs]} holds a results.json")
    merged["wall_seconds"] = wall_seconds if wall_seconds is not None else sum(p.get("wall_seconds", 0) for p in merged["parts"])
    ensure_dir(out_dir)
    write_outputs(merged, images, out_dir)
    return merged


def _with_figures_in(exp: dict, part: Path, out_dir: Path) -> dict:
    """A worker's experiment record with its figures copied from its part folder into the merged folder (the
    experiment's markdown links them by file name, relative to the report beside them; part folders are not
    committed). Missing figures are left out of the list, not invented."""
    figures = []
    for f in exp.get("figures", []):
        src = part / Path(f).name  # the worker wrote it into its own out_dir (the part folder)
        if not src.is_file():
            continue
        dst = Path(out_dir) / src.name
        if src.resolve() != dst.resolve():
            ensure_dir(dst.parent)
            write_bytes_atomic(dst, src.read_bytes())
        figures.append(str(dst))
    return exp | ({"figures": figures} if "figures" in exp else {})


def _part_cost(plan: list[PlanItem], part: Path, data) -> float:
    """Scheduling weight of one defense: its last wall time if it ran before, else its planned cells
    weighted by how slow its client is."""
    f = part / "results.json"
    if f.is_file():
        try:
            return float(json.loads(f.read_text())["wall_seconds"])
        except (ValueError, KeyError):
            pass
    return 60.0 * len(plan) * (1 + max((st.build(data).protect_ms_hint for _, st, *_ in plan), default=0) / 100)


def _run_parallel(ctx: RunContext, names: list[str], attack_names: tuple[str, ...], experiments: bool, jobs: int) -> dict:
    """Run each defense as ``faceveil bench --defenses NAME`` in its own process, at most ``jobs`` at
    a time, longest first (LPT), then merge. Workers write into ``out_dir/parts/NAME`` (log.txt there);
    they share the on-disk caches, whose writes are atomic."""
    t_start = time.perf_counter()
    profile, data, out_dir = ctx.profile, ctx.data, Path(ctx.out_dir)
    parts = {n: out_dir / "parts" / n for n in names}
    plans = {n: plan_cells([n], attack_names, data, profile=profile) for n in names}  # built once: cost and progress
    order = sorted(names, key=lambda n: -_part_cost(plans[n], parts[n], data))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))
    if data is not None:
        env["FACEVEIL_DATA"] = str(data)

    def command(n: str) -> list[str]:
        return [sys.executable, "-c", "from faceveil.cli import main; main()", "bench", "--profile", profile,
                "--defenses", n, "--attacks", ",".join(attack_names), "--out", str(parts[n]), "--seed", str(ctx.seed),
                *(["--force"] if ctx.force else []), *([] if experiments else ["--no-experiments"])]

    if not all((parts[n] / "results.json").is_file() for n in names):  # a re-run of a finished run: caches are warm
        _warm_up_apart(ctx, names, attack_names)
    running: dict[str, subprocess.Popen] = {}
    pending = list(order)
    # the whole run's cells (done / planned, rate and ETA) from the workers' progress files
    planned = {n: len(plans[n]) for n in names}
    bar = tqdm(total=sum(planned.values()), desc=f"bench ({profile}, {jobs} jobs)", disable=not ctx.progress,
               unit="cell")
    finished: set[str] = set()
    interrupted = False
    with _interruptible():
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    n = pending.pop(0)
                    ensure_dir(parts[n])
                    (parts[n] / "results.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
                    (parts[n] / PROGRESS_FILE).unlink(missing_ok=True)
                    with (parts[n] / "log.txt").open("w") as log:
                        running[n] = subprocess.Popen(command(n), stdout=log, stderr=subprocess.STDOUT, env=env)
                for n, p in list(running.items()):
                    if p.poll() is not None:
                        del running[n]
                        finished.add(n)
                done = sum(planned[n] if n in finished else (read_progress(parts[n]) or (0, 0))[0] for n in names
                           if n in finished or n in running)
                if done != bar.n:
                    bar.update(done - bar.n)
                bar.set_postfix_str(f"{len(finished)}/{len(names)} defenses; running " + ",".join(running))
                time.sleep(0.5)
        except KeyboardInterrupt:  # stop the workers; each writes the report of what it finished
            interrupted = True
            for p in running.values():
                p.terminate()
            for p in running.values():
                p.wait()
    bar.close()
    ran = [n for n in names if n not in pending]
    return merge_runs([parts[n] for n in ran], out_dir, time.perf_counter() - t_start, interrupted)


def _warm_up_apart(ctx: RunContext, names: list[str], attack_names: tuple[str, ...]) -> None:
    """:func:`_warm_shared_caches` in a process of its own (spawned: a fresh interpreter), so the models and data it
    loads are freed before the workers start instead of staying resident in this parent for the whole run."""
    import multiprocessing

    # not a daemon: the warm-up's face alignment starts a process pool of its own
    proc = multiprocessing.get_context("spawn").Process(target=_warm_shared_caches, args=(ctx, names, attack_names))
    proc.start()
    try:
        proc.join()
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join()


def _warm_shared_caches(ctx: RunContext, names: list[str], attack_names: tuple[str, ...]) -> None:
    """Before the workers start: run one cheap setting's utility cell and its first attack cell here, on every core.
    They fill the caches every cell reads (LFW alignment of the utility and evaluation pairs, the attackers' public
    faces, the deployed recogniser's operating point and SAR thresholds, the judge's thresholds and centre), which
    workers starting together from empty caches would otherwise each compute at once. The results are cached, so
    the worker that owns the setting re-reads them in seconds; nothing of this warm-up is reported."""
    bp = BENCH_PROFILES[ctx.profile]
    first = "none" if "none" in names else names[0]
    plan = plan_cells([first], attack_names, ctx.data, profile=ctx.profile)
    warm = [it for it in plan if it[0] == "utility"][:1] + [it for it in plan if it[0] == "privacy"][:1]
    wctx = ctx.replace(out_dir=Path(ctx.out_dir) / "parts" / "warm-up", progress=False)
    ensure_dir(wctx.out_dir)
    lfw = LFW(ctx.data)
    for item in warm:
        cell, _ = run_cell(item, bp, wctx, lfw)
        if cell.status != "ok":  # the owning worker runs (and reports) it again
            print(f"warm-up cell {cell.setting} {cell.kind} {cell.attack or ''}: {cell.error}", file=sys.stderr)


@contextmanager
def _interruptible():
    """SIGTERM behaves like Ctrl-C inside the cell loop (so a killed run still writes its report)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _protection(system, lfw: LFW, seed: int, bp: BenchProfile, sz: Sizes) -> dict:
    """Template-protection measures of a setting's system (:mod:`faceveil.bench.protection`), on fewer
    images for slow clients (each image is protected three times); a failure is recorded, not raised."""
    from faceveil.bench.protection import IMAGES, template_protection

    n = IMAGES.get(bp.name, 600)
    if sz.attack_images is not None:
        n = max(bp.min_protection_images, min(n or sz.attack_images, sz.attack_images // 3))
    try:
        return template_protection(system, lfw, seed, n)
    except Exception as e:  # recorded in the report; the utility cell stands
        return {"error": f"{type(e).__name__}: {e}"}


def run_cell(item: PlanItem, bp: BenchProfile, ctx: RunContext, lfw: LFW | None = None) -> tuple[Cell, dict]:
    """One planned cell: ``(cell, images)`` (``images``: the grid entry of an attack cell, else empty). A failing
    cell is recorded with its error and traceback, never raised. Everything it reads or trains comes from the
    on-disk caches (``FACEVEIL_HOME``), so a cell runs the same in this process, a ``--jobs`` worker or a Ray task."""
    from faceveil.attacks.base import profile_budget
    from faceveil.bench.privacy import run_attack

    kind, st, a, leakage, view = item
    use_device(ctx.device)  # a Ray task is a process of its own
    data, seed, force, progress, out_dir = ctx.data, ctx.seed, ctx.force, ctx.progress, Path(ctx.out_dir)
    lfw = lfw or LFW(data)
    images: dict = {}
    t0 = time.perf_counter()
    cell = Cell(kind, st.label + (f" [adaptive: {view}]" if view else ""), st.defense, attack=a, leakage=leakage,
                view=view)
    try:
        d = st.build(data)
        sz = setting_sizes(d, bp)
        if kind == "utility":
            cell.result = {"config": d.describe(), "servers": {}, "sizes": asdict(sz)}
            servers = utility_servers(d, st, bp)
            if not servers:  # e.g. a feature-domain defense at a profile that trains no students
                cell.result["skipped"] = (f"needs an adapted server; the {bp.name} profile trains none "
                                          "(its experiment, if any, measures accuracy)")
            measured = None  # the system the template-protection measures use
            for server in servers:
                sysm = bench_system(d, server, bp.attack_profile, seed, data,
                                    **({"train_images": sz.student_images} if sz.student_images else {}))
                cell.result["servers"][server] = lfw_utility(sysm, lfw, per_fold=sz.utility_per_fold, seed=seed)
                if server == "adapted":
                    cell.result["servers"][server]["train_log"] = getattr(sysm.model, "train_log", None)
                if measured is None or not clean_reference(d):  # the last server is the best (adapted where trained)
                    measured = sysm
            if measured is not None:
                cell.result["protection"] = _protection(measured, lfw, seed, bp, sz)
        else:
            optimises = attack_class(a).per_target  # seconds per face: the white-box number of targets
            threat = ThreatModel(leakage=leakage, knowledge=attack_class(a).knowledge(), adaptive=view is not None, view=view)
            budget = profile_budget(bp.attack_profile, **({"train_images": sz.attack_images} if sz.attack_images else {}))
            r = run_attack(d, a, threat, RunContext(bp.attack_profile, seed, data, ctx.device, force=force, progress=progress,
                                                    out_dir=out_dir / "cells"), return_images=True, budget=budget,
                           eval_pairs_n=bp.whitebox_pairs if optimises else _capped(budget.eval_pairs, sz.eval_pairs))
            images[(cell.setting, a, leakage)] = r.pop("images")
            cell.result = r
    except Exception as e:  # a failing cell is recorded and the run continues
        cell.status, cell.error = "failed", f"{type(e).__name__}: {e}"
        cell.result["traceback"] = traceback.format_exc(limit=8)
    cell.seconds = time.perf_counter() - t0
    return cell, images


#: a run's count of finished and planned cells, rewritten after every cell (the parent of ``--jobs`` workers sums them)
PROGRESS_FILE = "progress.json"


def _write_progress(out_dir: Path, done: int, total: int) -> None:
    write_json_atomic(Path(out_dir) / PROGRESS_FILE, {"done": done, "total": total})


def read_progress(out_dir: Path) -> tuple[int, int] | None:
    """``(done, planned)`` cells of the run writing into ``out_dir``, or None before its first report."""
    try:
        p = json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
        return int(p["done"]), int(p["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_cells(bar, cells: list, images: dict, bp: BenchProfile, ctx: RunContext, lfw: LFW) -> None:
    """Run the planned cells (``bar`` iterates over them) in this process, appending to ``cells`` and ``images``."""
    _write_progress(ctx.out_dir, 0, len(bar))
    for item in bar:
        kind, st, a, leakage, view = item
        bar.set_postfix_str(f"{st.label} {kind} {a or ''} {leakage or ''} {view or ''}".strip())
        cell, imgs = run_cell(item, bp, ctx, lfw)
        cells.append(cell)
        images |= imgs
        _write_progress(ctx.out_dir, len(cells), len(bar))

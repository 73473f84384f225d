"""Time the main job (``faceveil bench``) from empty caches and again warm, with the peak resident memory of its
whole process tree (the bench's ``--jobs`` workers included), and where the time went (per defense part and
per cell kind, from the run's results.json).

    PYTHONPATH=src python bench/main_job.py --profile fast --jobs 2 --home /tmp/fv-empty

``--home`` is the FACEVEIL_HOME used (emptied first, except the installed ``models/``, which `make setup`
installs: "empty caches" means no aligned faces, embeddings, students, attackers or judged results). Linux only
(reads /proc). Target (issue 34): <= 15 min cold, <= 1 min warm, <= 4 GB peak on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _worker_name(pid: int) -> str:
    """The defense a bench worker runs (its ``--defenses NAME``), "warm-up" / "parent" / "other" otherwise."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    args = [a.decode(errors="replace") for a in argv]
    if "--defenses" in args:
        return args[args.index("--defenses") + 1]
    if any("multiprocessing" in a for a in args):
        return "warm-up / pools"
    return "parent" if "bench" in args else "other"


PEAKS: dict[str, int] = defaultdict(int)


def tree_rss(root: int) -> int:
    """Summed resident bytes of ``root`` and all its descendants (from /proc); the peak of each bench worker (by
    the defense it runs) is kept in :data:`PEAKS`."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(d)] = int(Path(f"/proc/{d}/statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(d))
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        if p != root and p in rss:
            name = _worker_name(p)
            PEAKS[name] = max(PEAKS[name], rss[p])
        todo += children.get(p, [])
    return total


def run(cmd: list[str], env: dict, log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak tree RSS in bytes, exit code) of ``cmd``."""
    t0, peak = time.perf_counter(), 0
    with log.open("w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        while p.poll() is None:
            peak = max(peak, tree_rss(p.pid))
            time.sleep(0.5)
    return time.perf_counter() - t0, peak, p.returncode


def seconds_by(results: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Summed cell seconds of a run per cell kind (utility / attack name / experiment) and per defense."""
    r = results
    by_kind: dict[str, float] = defaultdict(float)
    by_defense: dict[str, float] = defaultdict(float)
    for c in r["cells"]:
        by_kind[c["kind"] if c["kind"] != "privacy" else f"attack {c['attack']}"] += c["seconds"]
        by_defense[c["defense"]] += c["seconds"]
    for name, e in r.get("experiments", {}).items():
        by_kind[f"experiment {name}"] += e.get("seconds", 0.0)
    return dict(by_kind), dict(by_defense)


def breakdown(results: Path) -> str:
    """Seconds per defense part and per cell kind (utility / attack name) of a run."""
    r = json.loads(results.read_text())
    by_kind, by_defense = seconds_by(r)
    total = sum(by_kind.values())
    lines = [f"cell seconds (summed over workers): {total:.0f}; wall {r['wall_seconds']:.0f} s"]
    lines += [f"  {k:<28}{v:>8.0f} s {100 * v / max(total, 1e-9):>5.1f} %" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["per defense:"]
    lines += [f"  {k:<28}{v:>8.0f} s" for k, v in sorted(by_defense.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--home", type=Path, required=True, help="FACEVEIL_HOME to empty and use")
    ap.add_argument("--out", type=Path, default=Path("/tmp/faceveil-main-job"))
    ap.add_argument("--models-from", type=Path, default=None,
                    help="copy installed models from this FACEVEIL_HOME (default: keep --home's models/)")
    ap.add_argument("--warm-only", action="store_true", help="skip emptying the caches and the cold run")
    ap.add_argument("--record", type=Path, default=None,
                    help="write the timings as JSON here (README's main-job block is generated from it)")
    args = ap.parse_args()

    home = args.home
    if not args.warm_only:
        models = home / "models"
        keep = Path(str(home) + ".models")
        if args.models_from is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(args.models_from / "models", keep)
        elif models.is_dir():
            shutil.rmtree(keep, ignore_errors=True)
            shutil.move(str(models), keep)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        if keep.is_dir():
            shutil.move(str(keep), models)
        shutil.rmtree(args.out, ignore_errors=True)
    env = dict(os.environ, FACEVEIL_HOME=str(home))
    cmd = [sys.executable, "-c", "from faceveil.cli import main; main()", "bench", "--profile", args.profile,
           "--jobs", str(args.jobs), "--out", str(args.out)]
    record: dict = {"profile": args.profile, "jobs": args.jobs, "cores": os.cpu_count(), "command": " ".join(cmd[3:])}
    for label in (["warm"] if args.warm_only else ["cold", "warm"]):
        wall, peak, rc = run(cmd, env, args.out.parent / f"{args.out.name}-{label}.log")
        print(f"{label}: {wall / 60:.1f} min, peak RSS of the process tree {peak / 2**30:.2f} GiB, exit {rc}")
        record[label] = {"minutes": round(wall / 60, 2), "peak_gib": round(peak / 2**30, 2), "exit": rc,
                         "peak_gib_per_process": {k: round(v / 2**30, 2) for k, v in sorted(PEAKS.items(), key=lambda kv: -kv[1])}}
        print("peak RSS per process:", record[label]["peak_gib_per_process"])
        PEAKS.clear()
        if (args.out / "results.json").is_file():
            print(breakdown(args.out / "results.json"))
            kinds, _ = seconds_by(json.loads((args.out / "results.json").read_text()))
            record[label]["cell_seconds"] = {k: round(v) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    if args.record is not None:
        from faceveil.storage import write_json_atomic

        write_json_atomic(args.record, record, indent=2)


if __name__ == "__main__":
    main()

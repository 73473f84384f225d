"""Compare two benchmark runs cell by cell (``faceveil report diff A B``): which cells exist in only one,
which failed in one, and every number that differs beyond a tolerance.

Cells are matched by (kind, setting, attack, leakage, adaptive view). Learned attackers bounded by wall
time (the ci profile's 60 s) may train a different number of steps on another machine; such cells are
reported as not comparable rather than as differences (their step counts are shown).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

#: default absolute tolerance on every compared number (accuracies and rates are fractions)
TOLERANCE = 1e-3


def cell_key(c: dict) -> tuple:
    r = c.get("result") or {}
    t = r.get("threat") or {}
    if c["kind"] != "privacy":
        return c["kind"], c["setting"], None, None, None
    return (c["kind"], c["setting"], c.get("attack") or (r.get("attack") or {}).get("name"),
            c.get("leakage") or t.get("leakage"), c.get("view") or t.get("view"))


def numbers(c: dict) -> dict[str, float]:
    """The compared numbers of an ok cell: utility accuracies/TPRs per server, privacy metrics per row."""
    r = c.get("result") or {}
    out: dict[str, float] = {}
    if c["kind"] == "utility":
        for server, u in (r.get("servers") or {}).items():
            for k in ("acc_mean", "acc_std", "tpr_at_fpr_1e2", "tpr_at_fpr_1e3"):
                if isinstance(u.get(k), int | float):
                    out[f"{server}.{k}"] = float(u[k])
        for k, v in (r.get("protection") or {}).items():  # template-protection measures (FNMR, D<->sys, renewal)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"protection.{k}"] = float(v)
    else:
        for who, m in (r.get("metrics") or {}).items():
            for k, v in m.items():
                if isinstance(v, int | float):
                    out[f"{who}.{k}"] = float(v)
    return out


def _steps(c: dict) -> int | None:
    return ((c.get("result") or {}).get("train_log") or {}).get("steps")


@dataclass
class RunDiff:
    only_a: list[tuple] = field(default_factory=list)
    only_b: list[tuple] = field(default_factory=list)
    status: list[tuple[tuple, str, str]] = field(default_factory=list)  # key, status in A, status in B
    not_comparable: list[tuple[tuple, int | None, int | None]] = field(default_factory=list)  # different steps
    differences: list[tuple[tuple, str, float, float]] = field(default_factory=list)  # key, number, A, B
    #: utility cells whose server weights differ (trained apart): key, server, digest in A, digest in B
    retrained: list[tuple[tuple, str, str, str]] = field(default_factory=list)
    compared: int = 0

    @property
    def same(self) -> bool:
        return not (self.only_a or self.only_b or self.status or self.differences)

    def text(self, tol: float) -> str:
        def name(k: tuple) -> str:
            return " / ".join(str(x) for x in k if x is not None)

        lines = [f"{self.compared} cell(s) compared; {len(self.differences)} number(s) differ by more than {tol:g}"]
        lines += [f"only in A: {name(k)}" for k in self.only_a] + [f"only in B: {name(k)}" for k in self.only_b]
        lines += [f"status differs: {name(k)}: {a} vs {b}" for k, a, b in self.status]
        lines += [f"not comparable (attacker trained {a} vs {b} steps): {name(k)}" for k, a, b in self.not_comparable]
        lines += [f"{name(k)}: {n}: {a:.6g} vs {b:.6g} (diff {b - a:+.3g})" for k, n, a, b in self.differences]
        lines += [f"server weights differ (trained apart; digests {a} vs {b}): {name(k)} / {s}"
                  for k, s, a, b in self.retrained]
        return "\n".join(lines)


def diff_results(a: dict, b: dict, tol: float = TOLERANCE) -> RunDiff:
    """Cell-by-cell differences between two results.json contents (module docstring)."""
    if not tol >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tol!r}")
    ca = {cell_key(c): c for c in a["cells"]}
    cb = {cell_key(c): c for c in b["cells"]}
    d = RunDiff(only_a=[k for k in ca if k not in cb], only_b=[k for k in cb if k not in ca])
    for k in ca.keys() & cb.keys():
        x, y = ca[k], cb[k]
        if x["status"] != y["status"]:
            d.status.append((k, x["status"], y["status"]))
            continue
        if x["status"] != "ok":
            continue
        if _steps(x) != _steps(y):
            d.not_comparable.append((k, _steps(x), _steps(y)))
            continue
        d.compared += 1
        if x["kind"] == "utility":
            for server, u in ((x.get("result") or {}).get("servers") or {}).items():
                v = (((y.get("result") or {}).get("servers") or {}).get(server) or {}).get("model_digest")
                if u.get("model_digest") and v and u["model_digest"] != v:
                    d.retrained.append((k, server, u["model_digest"], v))
        nx, ny = numbers(x), numbers(y)
        for n in sorted(nx.keys() | ny.keys()):
            va, vb = nx.get(n, math.nan), ny.get(n, math.nan)
            if not (abs(va - vb) <= tol or (math.isnan(va) and math.isnan(vb))):
                d.differences.append((k, n, va, vb))
    for lst in (d.only_a, d.only_b):
        lst.sort(key=str)
    d.status.sort(key=str)
    d.not_comparable.sort(key=str)
    d.differences.sort(key=str)
    d.retrained.sort(key=str)
    return d


def load_results(path: Path) -> dict:
    """A run's results.json (``path`` is the file or its folder)."""
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no results.json at {path}")
    return json.loads(p.read_text())

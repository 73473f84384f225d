"""Per-defense verdicts: the worst case over every attack the benchmark ran on a setting (its weakest
point), the attack that achieved it, and a verdict word from a stated rule.

A protection is only as strong as the strongest attack against it, so the verdict of a defense setting is
judged on the reconstruction, over all attacks and leakages run for it, that re-identifies the most people
from *another* image of them: type-II SAR at the deployed recogniser's FMR 1e-3 threshold (the figure of
merit of the template-inversion literature; ties broken by type-I SAR, then pair SRRA, then the independent
judge's type-II SAR). Results judged before SAR existed fall back to pair SRRA.

Rule (:func:`verdict`), with ``n`` the number of judged LFW pairs and ``floor = max(2 x random person, 2 / n)``
(two successes in ``n`` are within the noise of a random-person baseline that scores 0 or 1):

- **holds**: the worst case's type-II success is within ``floor`` for the deployed recogniser *and* for the
  independent judge;
- **broken**: it re-identifies at least half of the people from another image (type-II success >= 50 %);
- **leaks**: anything in between.
"""

from __future__ import annotations

from collections.abc import Iterable

from faceveil.bench.paper import paper_accuracy, paper_value

#: the worst case is the reconstruction with the largest value of the first of these present (ties: the next)
RISK_KEYS = ("SAR_II@1e-3", "SAR_I@1e-3", "SRRA_pair", "judge_SAR_II@1e-3")
#: type-II success at or above this fraction: "broken"
BROKEN_AT = 0.5
VERDICT_RULE = (
    "Verdict rule: the worst case is the attack whose reconstructions are most often accepted as the person "
    "against **another** image of them (type-II SAR at the deployed recogniser's FMR 1e-3 threshold; pair SRRA for "
    "results judged before SAR). **holds**: within max(2x the random-person baseline, 2/n) for the deployed "
    "recogniser and for the independent judge; **broken**: >= 50 %; **leaks**: in between."
)


def _risk(r: dict) -> tuple[float, ...]:
    return tuple(float(r.get(k) if r.get(k) is not None else -1.0) for k in RISK_KEYS)


def type_two(r: dict, prefix: str = "") -> float | None:
    """Type-II success of a row: SAR at FMR 1e-3 (``prefix`` "judge_" for the judge's), else pair SRRA
    (deployed only)."""
    v = r.get(f"{prefix}SAR_II@1e-3")
    if v is None and not prefix:
        v = r.get("SRRA_pair")
    return None if v is None else float(v)


def verdict(worst: dict, random_person: dict | None, n: int) -> str:
    """``holds`` / ``leaks`` / ``broken`` for a worst-case reconstruction row (module docstring's rule)."""
    dep = type_two(worst)
    if dep is None:
        return "unjudged"
    if dep >= BROKEN_AT:
        return "broken"
    rp = random_person or {}
    ok = dep <= max(2 * (type_two(rp) or 0.0), 2 / max(n, 1))
    judge = type_two(worst, "judge_")
    if judge is not None:
        ok = ok and judge <= max(2 * (type_two(rp, "judge_") or 0.0), 2 / max(n, 1))
    return "holds" if ok else "leaks"


def worst_cases(prows: Iterable[dict]) -> list[dict]:
    """One row per defense setting that has judged privacy cells (in first-seen order): the worst-case
    reconstruction row (``worst``), the setting's random-person and mean-face rows, the attacks and cells
    considered, failed cells, and the :func:`verdict`."""
    groups: dict[str, dict] = {}
    for r in prows:
        g = groups.setdefault(r["setting"], {"setting": r["setting"], "defense": r["defense"], "rows": [],
                                             "baselines": {}, "failed": 0})
        if r["status"] != "ok":
            g["failed"] += 1
        elif r.get("who") == "reconstruction":
            g["rows"].append(r)
        elif r.get("who") in ("random person", "mean face"):
            g["baselines"].setdefault(r["who"], r)
    out = []
    for g in groups.values():
        if not g["rows"]:
            out.append({**g, "worst": None, "verdict": "unjudged", "attacks": []})
            continue
        worst = max(g["rows"], key=_risk)
        rp = g["baselines"].get("random person")
        out.append({**g, "worst": worst, "attacks": sorted({r["attack"] for r in g["rows"]}),
                    "verdict": verdict(worst, rp, int(worst.get("n") or 0))})
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def best_servers(urows: Iterable[dict]) -> dict[str, tuple[float, str]]:
    """Per setting, the best LFW accuracy over the servers measured and the server that reached it."""
    best: dict[str, tuple[float, str]] = {}
    for r in urows:
        if "acc" in r and r["acc"] > best.get(r["setting"], (-1.0, ""))[0]:
            best[r["setting"]] = (r["acc"], r["server"])
    return best


#: the utility rows a reader compares protected accuracy with (setting label, server) -> what the row is
SCALE_ROWS = {
    ("none (image)", "frozen"): "unprotected images, deployed recogniser (for scale)",
    ("none (image)", "adapted"): "clean student: distilled on unprotected images with the adapted servers' budget "
                                 "(for scale)",
}


def scale_rows(urows: Iterable[dict]) -> list[tuple[str, float]]:
    """(label, accuracy) of the unprotected system and of the same-budget clean student (:data:`SCALE_ROWS`), where
    the run measured them: an adapted server's accuracy is read against the clean student's, not the deployed
    recogniser's (the student's budget, not the protection, may cost the difference)."""
    got = {(r["setting"], r.get("server")): r["acc"] for r in urows if "acc" in r}
    return [(label, got[key]) for key, label in SCALE_ROWS.items() if key in got]


def verdict_table(prows: list[dict], urows: list[dict] | None = None) -> str:
    """Markdown: a row per defense setting with its best utility (and the server that reached it), the worst case
    over the attack suite (attack, leakage, SAR type I / II, pair SRRA, judge COS and type-II SAR) beside the
    random-person and mean-face baselines, the paper's own claim where it makes one (:func:`paper_claim`), and the
    verdict; the unprotected and same-budget clean-student utility rows (:func:`scale_rows`) open it for scale and
    :data:`VERDICT_RULE` closes it."""
    best = best_servers(urows or [])
    head = ("| defense setting | LFW acc % (best server) | worst-case attack (of those run) | SAR I / II @1e-3 % | "
            "pair SRRA % | judge COS | judge SAR II @1e-3 % | random person / mean face: SAR II % | the paper's claim | "
            "verdict |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    out += [f"| *{label}* | {100 * acc:.1f} | | | | | | | | |" for label, acc in scale_rows(urows or [])]
    for w in worst_cases(prows):
        acc, server = best.get(w["setting"], (None, ""))
        acc_s = "—" if acc is None else f"{100 * acc:.1f} ({server})"
        r = w["worst"]
        if r is None:
            out.append(f"| {w['setting']} | {acc_s} | (no judged attack; {w['failed']} failed) | | | | | | | unjudged |")
            continue
        rp = w["baselines"].get("random person") or {}
        mf = w["baselines"].get("mean face") or {}
        failed = f"; {w['failed']} failed" if w["failed"] else ""
        out.append(
            f"| {w['setting']} | {acc_s} | {r['attack']} ({r['leakage']}; of {', '.join(w['attacks'])}{failed}) | "
            f"{_pct(r.get('SAR_I@1e-3'))} / {_pct(r.get('SAR_II@1e-3'))} | {_pct(r.get('SRRA_pair'))} | "
            f"{r['COS']:.3f} | {_pct(r.get('judge_SAR_II@1e-3'))} | "
            f"{_pct(rp.get('SAR_II@1e-3'))} / {_pct(mf.get('SAR_II@1e-3'))} | "
            f"{paper_claim(w['defense'], w['setting'])} | **{w['verdict']}** |")
    return "\n".join(out + ["", VERDICT_RULE])


def rejudged_table(prows: list[dict], added: Iterable[str], urows: list[dict] | None = None) -> str:
    """Markdown: every defense setting judged twice from one run, before and after the ``added`` attacks joined the
    suite (issue 32's re-judging: the old verdict is the worst case over the other attacks, the new one over all),
    with the added attacks' own best type-II SAR, so a verdict that moved shows which attack moved it."""
    added = tuple(added)
    best = best_servers(urows or [])
    before = {w["setting"]: w for w in worst_cases(r for r in prows if r["attack"] not in added)}
    only = {w["setting"]: w for w in worst_cases(r for r in prows if r["attack"] in added)}
    head = ("| defense setting | LFW acc % (best server) | before: worst case | SAR II % | verdict before | "
            f"best of {' / '.join(added)}: SAR I / II % | judge SAR II % | after: worst case | verdict after |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]

    def worst_s(w: dict | None) -> str:
        r = w and w["worst"]
        return "(none judged)" if not r else f"{r['attack']} ({r['leakage']})"

    for w in worst_cases(prows):
        acc, server = best.get(w["setting"], (None, ""))
        b, a = before.get(w["setting"]), only.get(w["setting"])
        rb, ra = b and b["worst"], a and a["worst"]
        new = f"{ra['attack']} ({ra['leakage']}): {_pct(ra.get('SAR_I@1e-3'))} / {_pct(ra.get('SAR_II@1e-3'))}" if ra else "not run"
        vb, va = (b or {}).get("verdict", "unjudged"), w["verdict"]
        out.append(
            f"| {w['setting']} | {'—' if acc is None else f'{100 * acc:.1f} ({server})'} | {worst_s(b)} | "
            f"{_pct(type_two(rb)) if rb else '—'} | {vb} | {new} | {_pct(ra.get('judge_SAR_II@1e-3')) if ra else '—'} | "
            f"{worst_s(w)}: {_pct(type_two(w['worst'])) if w['worst'] else '—'} | "
            f"**{va}**{'' if va == vb else f' (was {vb})'} |")
    return "\n".join(out + ["", VERDICT_RULE])


#: the bar faceveil set for its own protection in threat model (a) (README, "faceveil's own protection")
TARGET = {"SAR_II": 0.01, "judge_COS_over_random": 0.02, "acc_drop": 0.02, "d_sys": 0.05}


def cos_over_random(prows: Iterable[dict], setting: str) -> tuple[float, str] | None:
    """The largest (judge COS of the reconstruction − judge COS of the random-person baseline of the same cell)
    over a setting's attacks and leakages, and the attack that reached it; ``None`` if no cell has both."""
    cells: dict[tuple, dict] = {}
    for r in prows:
        if r["setting"] == setting and r["status"] == "ok" and r.get("COS") is not None:
            cells.setdefault((r["attack"], r.get("leakage"), r.get("view")), {})[r.get("who")] = r["COS"]
    gaps = [(c["reconstruction"] - c["random person"], k[0]) for k, c in cells.items()
            if "reconstruction" in c and "random person" in c]
    return max(gaps) if gaps else None


def target_table(prows: list[dict], urows: list[dict], defense: str, reference_acc: float,
                 d_sys: dict[str, float]) -> str:
    """Markdown: each setting of ``defense`` against :data:`TARGET` — the worst-case type-II SAR over the suite,
    the judge's COS above the random-person level (worst cell), the LFW accuracy lost against ``reference_acc``
    (the unprotected system), and D↔sys across keys (``d_sys``: setting -> value) — with met / not met."""
    best = best_servers(urows)
    ws = [w for w in worst_cases(prows) if w["defense"] == defense and w["worst"] is not None]
    if not ws:
        return ""
    head = "| criterion (bar) | " + " | ".join(w["setting"] for w in ws) + " |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]

    def cell(value: float | None, bar: float, text: str) -> str:
        return "—" if value is None else f"{text}: **{'met' if value <= bar + 1e-12 else 'not met'}**"

    rows = [("irreversibility: worst type-II SAR @FMR 1e-3 over the suite (≤ 1 %)",
             [(type_two(w["worst"]), TARGET["SAR_II"], f"{_pct(type_two(w['worst']))} % ({w['worst']['attack']})")
              for w in ws])]
    gaps = [cos_over_random(prows, w["setting"]) for w in ws]
    rows.append(("judge COS above the random-person level, worst cell (≤ 0.02)",
                 [(None, 0, "") if g is None else (g[0], TARGET["judge_COS_over_random"], f"{g[0]:+.3f} ({g[1]})")
                  for g in gaps]))
    drops = [None if w["setting"] not in best else reference_acc - best[w["setting"]][0] for w in ws]
    rows.append((f"LFW accuracy lost vs the unprotected system's {100 * reference_acc:.1f} % (≤ 2 points)",
                 [(d, TARGET["acc_drop"], f"{100 * d:.1f} points") if d is not None else (None, 0, "") for d in drops]))
    rows.append(("unlinkability: D↔sys across keys (≤ 0.05)",
                 [(d_sys.get(w["setting"]), TARGET["d_sys"], f"{d_sys[w['setting']]:.3f}")
                  if w["setting"] in d_sys else (None, 0, "") for w in ws]))
    for name, vals in rows:
        out.append(f"| {name} | " + " | ".join(cell(v, bar, t) for v, bar, t in vals) + " |")
    return "\n".join(out)


def paper_claim(defense: str, setting: str) -> str:
    """What the defense's paper claims for the verdict table's quantities (LFW accuracy, its attack's SRRA), with
    the table it comes from; "—" where it claims neither (its recogniser and attack, not ours)."""
    if defense == "none":
        return "—"
    acc = paper_accuracy(defense, setting)
    srra = paper_value(defense, setting, "SRRA", "dn")
    return "; ".join(x for x in (acc and f"acc {acc}", srra and f"SRRA {srra}") if x) or "—"


def sentence(w: dict, acc: float | None = None) -> str:
    """One generated sentence of what a setting's numbers say (a :func:`worst_cases` row; ``acc``: its best LFW
    accuracy), e.g. "the adaptive dn recovers identity: 42 % type-II SAR vs 1 % for a random person"."""
    util = "" if acc is None else f"LFW accuracy {100 * acc:.1f} %; "
    r = w.get("worst")
    if r is None:
        return f"{util}no attack was judged ({w.get('failed', 0)} failed)."
    rp = w["baselines"].get("random person") or {}
    dep, base = type_two(r), type_two(rp)
    judge, jbase = type_two(r, "judge_"), type_two(rp, "judge_")
    who = f"{r['attack']}" + (" (adaptive)" if "[adaptive" in w["setting"] else "") + f" on the {r['leakage']}"
    metric = "type-II SAR at FMR 1e-3" if r.get("SAR_II@1e-3") is not None else "pair SRRA"
    judged = "" if judge is None else (f"; the independent judge accepts {100 * judge:.1f} %"
                                       + ("" if jbase is None else f" (random person {100 * jbase:.1f} %)"))
    verb = {"holds": "recovers no identity beyond chance", "leaks": "recovers some identity",
            "broken": "recovers identity"}.get(w["verdict"], "was judged")
    return (f"{util}the strongest attack, {who}, {verb}: {100 * dep:.1f} % {metric} from another image of the person "
            f"vs {100 * (base or 0.0):.1f} % for a random person{judged} — **{w['verdict']}**.")

"""Benchmark report: utility and privacy tables (FaceObfuscator Table 3/4 layouts), image grids per
attack, a privacy-utility scatter plot, paper numbers beside ours; report.md, report.html (one
self-contained file), results.csv."""

from __future__ import annotations

import base64
import csv
import html
import re
from pathlib import Path

import torch

from faceveil.bench.paper import paper_point, paper_value
from faceveil.bench.plan import profile_coverage
from faceveil.bench.protection import protection_table
from faceveil.bench.verdicts import best_servers, sentence, verdict_table, worst_cases
from faceveil.storage import save_figure_atomic, write_atomically, write_text_atomic

BASELINES = ("mean face", "random person")

#: the closed-form attack every learned attack must beat on the same setting and leakage
FLOOR_ATTACK = "ridge"
#: what "beat" is measured by: type-II SAR at the deployed recogniser's FMR 1e-3, and closer-to-own
FLOOR_METRICS = ("SAR_II@1e-3", "closer_to_own")
FLOOR_MARK = "▼ below ridge"


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def utility_rows(results: dict) -> list[dict]:
    rows = []
    for c in results["cells"]:
        if c["kind"] != "utility":
            continue
        base = {"setting": c["setting"], "defense": c["defense"], "status": c["status"], "error": c["error"]}
        servers = c["result"].get("servers", {}) if c["status"] == "ok" else {}
        if not servers:
            rows.append({**base, "skipped": c["result"].get("skipped") if c["status"] == "ok" else None})
        for server, u in servers.items():
            rows.append({**base, "server": server, "acc": u["acc_mean"], "std": u["acc_std"], "tpr2": u["tpr_at_fpr_1e2"],
                         "tpr3": u["tpr_at_fpr_1e3"], "storage_kb": u["storage_bytes"] / 1024, "client_ms": u["client_ms"],
                         "server_ms": u["server_ms"], "pairs": u["n_pairs"], "metric": u["metric"],
                         "paper": paper_value(c["defense"], c["setting"], "acc", server)})
    return rows


def privacy_rows(results: dict) -> list[dict]:
    rows = []
    for c in results["cells"]:
        if c["kind"] != "privacy":
            continue
        r = c.get("result") or {}
        base = {"setting": c["setting"], "defense": c["defense"], "status": c["status"], "error": c["error"],
                "attack": c.get("attack") or (r.get("attack") or {}).get("name"),
                "leakage": c.get("leakage") or (r.get("threat") or {}).get("leakage")}
        if c["status"] != "ok":
            rows.append(base)
            continue
        learned = r.get("train_log") is not None and base["attack"] != FLOOR_ATTACK
        for who, m in r["metrics"].items():
            rec = who == "reconstruction"
            rows.append({**base, "who": who, **m, "n": r["eval"]["n"], "judge": r["judge"]["cos"],
                         "learned": learned if rec else None,
                         "paper_ssim": paper_value(c["defense"], c["setting"], "SSIM", base["attack"]) if rec else None,
                         "paper_srra": paper_value(c["defense"], c["setting"], "SRRA", base["attack"]) if rec else None})
    mark_ridge_floor(rows)
    return rows


def _not_beaten(x: float, floor: float) -> bool:
    """``x`` does not beat ``floor``: lower, or equal to a floor strictly between 0 and 1 (two attacks that both
    fail completely, SAR 0 %, or both succeed on every pair, 100 %, tie at a bound neither can pass and neither
    is flagged for it)."""
    return x < floor or (x == floor and 0 < floor < 1)


def mark_ridge_floor(rows: list[dict]) -> None:
    """Set ``below_ridge_floor`` on every reconstruction row of a learned attack: the metrics of
    :data:`FLOOR_METRICS` on which it does not beat the ``ridge`` reconstruction of the same setting and
    leakage (``""``: it beats it on all; None: no ridge cell to compare with, or not a learned attack)."""
    floors = {(r["setting"], r["leakage"]): r for r in rows
              if r["status"] == "ok" and r.get("who") == "reconstruction" and r["attack"] == FLOOR_ATTACK}
    for r in rows:
        if r["status"] != "ok" or r.get("who") != "reconstruction":
            continue
        r["below_ridge_floor"] = None
        floor = floors.get((r["setting"], r["leakage"]))
        if not r.get("learned") or floor is None:
            continue
        r["below_ridge_floor"] = ", ".join(k for k in FLOOR_METRICS if k in r and k in floor and _not_beaten(r[k], floor[k]))


def below_floor(rows: list[dict]) -> list[dict]:
    """The reconstruction rows of learned attacks that do not beat the ridge floor (:func:`mark_ridge_floor`)."""
    return [r for r in rows if r.get("below_ridge_floor")]


def best_utility(urows: list[dict]) -> dict[str, float]:
    """The best LFW accuracy over the servers measured for each setting."""
    return {s: acc for s, (acc, _) in best_servers(urows).items()}


def utility_table(rows: list[dict]) -> str:
    out = ["| defense setting | server | LFW acc % (± std) | paper | TPR@1e-2 | TPR@1e-3 | storage KB/face | client ms/face "
           "| server ms/face | pairs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            out.append(f"| {r['setting']} | — | not measured: {html.escape(r['skipped'])} | | | | | | | |")
            continue
        if r["status"] != "ok" or "acc" not in r:
            out.append(f"| {r['setting']} | — | FAILED: {html.escape(str(r['error']))[:120]} | | | | | | | |")
            continue
        out.append(f"| {r['setting']} | {r['server']} | {_pct(r['acc'])} ± {_pct(r['std'])} | {r['paper'] or ''} | "
                   f"{_pct(r['tpr2'], 1)} | {_pct(r['tpr3'], 1)} | {r['storage_kb']:.1f} | {r['client_ms']:.1f} | "
                   f"{r['server_ms']:.1f} | {r['pairs']} |")
    return "\n".join(out)


def _sar_pair(r: dict, lab: str, prefix: str = "") -> str:
    """``"I / II"`` SAR percentages of a row at FMR ``lab`` (— for results judged before SAR)."""
    i, ii = r.get(f"{prefix}SAR_I@{lab}"), r.get(f"{prefix}SAR_II@{lab}")
    return "—" if i is None or ii is None else f"{_pct(i, 1)} / {_pct(ii, 1)}"


def _identity_cells(r: dict) -> str:
    """The identity columns shared by attack and baseline rows (COS through the judge's SAR)."""
    return (f"{r['COS']:.3f} | {_pct(r['SRRA_same_image'], 1)} | {_pct(r['SRRA_pair'], 1)} | "
            f"{_pct(r.get('closer_to_own'), 1)} | {_sar_pair(r, '1e-3')} | {_sar_pair(r, '1e-4')} | "
            f"{_sar_pair(r, '1e-3', 'judge_')}")


PRIVACY_HEADER = ("| defense setting | attack | leakage | MSE↑ | PSNR↓ | SSIM↓ | COS↓ | SRRA same-image↓ | SRRA pair↓ | "
                  "closer-to-own↓ | SAR I / II @FMR 1e-3↓ | SAR I / II @FMR 1e-4↓ | judge SAR I / II @FMR 1e-3↓ | "
                  "ridge floor | paper |")


def privacy_table(rows: list[dict]) -> str:
    out = [PRIVACY_HEADER, "|" + "---|" * (PRIVACY_HEADER.count("|") - 1)]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['setting']} | {r['attack']} | {r['leakage']} | FAILED: {html.escape(str(r['error']))[:120]} "
                       + "| " * (PRIVACY_HEADER.count("|") - 5) + "|")
            continue
        if r["who"] in BASELINES:  # printed once, below the table
            continue
        paper = " ".join(x for x in (r.get("paper_ssim"), r.get("paper_srra")) if x)
        below = r.get("below_ridge_floor")
        floor = "floor" if r["attack"] == FLOOR_ATTACK else f"{FLOOR_MARK} ({below})" if below else \
            "above" if below == "" else ""
        out.append(f"| {r['setting']} | {r['attack']} | {r['leakage']} | {r['MSE']:.4f} | {r['PSNR']:.2f} | {r['SSIM']:.3f} | "
                   f"{_identity_cells(r)} | {floor} | {paper} |")
    return "\n".join(out)


def _baseline_rows(rows: list[dict]) -> str:
    seen = {}
    for r in rows:
        if r["status"] == "ok" and r.get("who") in BASELINES and r["who"] not in seen:
            seen[r["who"]] = r
    lines = []
    for who, r in seen.items():
        lines.append(f"| *{who}* (no information) | — | — | {r['MSE']:.4f} | {r['PSNR']:.2f} | {r['SSIM']:.3f} | "
                     f"{_identity_cells(r)} | | |")
    return "\n".join(lines)


def floor_note(rows: list[dict]) -> str:
    """The report's sentence on the ridge floor (empty when no setting ran ``ridge``)."""
    if not any(r.get("attack") == FLOOR_ATTACK and r.get("who") == "reconstruction" for r in rows):
        return ""
    text = (f"**Ridge floor.** `{FLOOR_ATTACK}` is a closed-form linear decoder (leaked data -> pixels, ridge regression "
            "with its penalty chosen on held-out public faces): every learned attack must beat it on the same setting and "
            "leakage, in type-II SAR at FMR 1e-3 and in closer-to-own. ")
    below = below_floor(rows)
    if not below:
        return text + "Every learned attack that has a ridge cell to compare with beats it."
    return text + f"{len(below)} learned attack cell(s) do not (marked {FLOOR_MARK}): its training did not use what it " \
        "was given, and its numbers understate what the leak allows: " + "; ".join(
            f"{r['attack']} on {r['setting']} ({r['leakage']}): {r['below_ridge_floor']}" for r in below) + "."


def grids(images: dict, out_dir: Path) -> list[tuple[str, Path]]:
    """One grid per (attack, leakage): originals on top, then per setting what the attacker holds
    and the reconstruction (same LFW faces everywhere)."""
    from faceveil.bench.privacy import image_grid

    by_attack: dict[tuple[str, str], list] = {}
    for (label, attack, leakage), im in images.items():
        by_attack.setdefault((attack, leakage), []).append((label, im))
    out = []
    for (attack, leakage), items in sorted(by_attack.items()):
        size = max(im["original"].shape[-1] for _, im in items)
        top = items[0][1]["original"]
        rows, own, names = [top], [], ["originals (LFW targets)"]
        for label, im in items:
            if im["original"].shape != top.shape or not torch.allclose(im["original"], top, atol=1 / 255):
                rows.append(im["original"])  # judged on other faces (a capped evaluation set): its own originals
                own.append(label)
                names.append(f"{label}: its own originals")
            rows += [im["held"], im["reconstruction"]]
            names += [f"{label}: what the attacker holds ({leakage})", f"{label}: {attack} reconstruction"]
        rows = [torch.nn.functional.interpolate(r, size=(size, size), mode="bilinear") if r.shape[-1] != size else r
                for r in rows]
        path = image_grid(rows, out_dir / f"grid-{attack}-{leakage}.png", labels=names)
        out.append((f"{attack} ({leakage} leakage): rows = the originals, then for each setting what the attacker "
                    "holds and its reconstruction: " + "; ".join(label for label, _ in items)
                    + (f" (with their own originals above them: {'; '.join(own)})" if own else ""), path))
    return out


def _place_labels(ax, pts: list[tuple[float, float, str]], fontsize: int = 7) -> list:
    """Annotate points so that labels neither overlap each other nor leave the axes: each label tries offsets
    around its point, nearest first, and keeps the first whose box (measured by the renderer) overlaps no label
    placed before it and lies inside the axes; when none does, the offset with the least overlap. Far labels get a
    leader line. Returns the placed boxes (display coordinates)."""
    fig = ax.figure
    ax.margins(0.08)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list = []
    # rings of offsets (points) around the point: right/left, above/below, then further out
    offsets = [(dx, dy) for k in range(10) for dy in (4 + 11 * k, -11 - 11 * k)
               for dx in (5, -5, 5 + 30 * (k // 3), -5 - 30 * (k // 3))]
    offsets = list(dict.fromkeys(offsets))

    def cost(box) -> float:
        inter = sum(max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0)) * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0))
                    for b in placed)
        outside = box.width * box.height - max(0.0, min(box.x1, frame.x1) - max(box.x0, frame.x0)) * \
            max(0.0, min(box.y1, frame.y1) - max(box.y0, frame.y0))
        return inter + outside

    for x, y, text in sorted(pts, key=lambda p: (-p[1], p[0])):
        best = None
        for dx, dy in offsets:
            a = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                            ha="left" if dx > 0 else "right")
            box = a.get_window_extent(renderer).expanded(1.02, 1.1)  # no leader line yet: the text alone
            c = cost(box)
            a.remove()
            if best is None or c < best[0]:
                best = (c, dx, dy, box)
            if c == 0:
                break
        _, dx, dy, box = best
        far = abs(dy) > 11 or abs(dx) > 5
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                    ha="left" if dx > 0 else "right",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if far else None)
        placed.append(box)
    return placed


def scatter(urows: list[dict], prows: list[dict], out_dir: Path, results: dict | None = None) -> Path | None:
    """Privacy-utility plot, one point per defense setting: x = LFW accuracy (best server), y = the worst case over
    the attack suite (left: type-II SAR at FMR 1e-3, pair SRRA for results judged before SAR; right: the
    independent judge's COS), the unprotected settings starred, the random-person level dashed, and — when the run
    has faceveil's keyed-projection experiment — its curve along the template length (ridge attacker; threat
    models (a) and (b)). Labels are placed without overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from faceveil.bench.verdicts import type_two, worst_cases

    acc = best_utility(urows)
    worst = {w["setting"]: w for w in worst_cases(prows) if w["worst"] is not None}
    pts = [s for s in acc if s in worst]
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
    rp_sar = [type_two(w["baselines"]["random person"]) for w in worst.values() if w["baselines"].get("random person")]
    rp_cos = [w["baselines"]["random person"].get("COS") for w in worst.values() if w["baselines"].get("random person")]
    for ax, pick, name, rp in (
            (axes[0], lambda w: 100 * (type_two(w["worst"]) or 0.0), "worst-case type-II SAR @ FMR 1e-3 % (pair SRRA "
             "where no SAR)", [100 * v for v in rp_sar if v is not None]),
            (axes[1], lambda w: w["worst"]["COS"], "independent judge's COS of the worst case", [v for v in rp_cos if v is not None])):
        labels = []
        for i, s in enumerate(pts):
            x, y = 100 * acc[s], pick(worst[s])
            unprotected = worst[s]["defense"] == "none"
            ax.scatter(x, y, marker="*" if unprotected else "o", s=120 if unprotected else 30,
                       color="black" if unprotected else plt.get_cmap("tab20")(i % 20), zorder=3)
            labels.append((x, y, s))
        if rp:
            ax.axhline(max(rp), color="grey", ls="--", lw=0.8, label="random person (worst over settings)")
        if ax is axes[0]:
            _keyed_curve(ax, results or {}, labels)
            _paper_points(ax, pts, acc, worst, pick, labels)
        _place_labels(ax, labels)
        ax.set_xlabel("LFW accuracy % (best server)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    axes[0].set_title("privacy–utility: lower right is better (★ = unprotected)")
    fig.tight_layout()
    path = out_dir / "privacy_utility.png"
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def _paper_points(ax, pts: list[str], acc: dict, worst: dict, pick, labels: list) -> None:
    """The paper's own claim (accuracy, attack success as it reports it) beside our point, joined by a dotted line."""
    shown = False
    for s in pts:
        claim = paper_point(worst[s]["defense"], s)
        if claim is None:
            continue
        ax.scatter(*claim, marker="D", s=50, facecolors="none", edgecolors="crimson", zorder=4,
                   label=None if shown else "the paper's claim (its recogniser, its attack, SRRA)")
        ax.plot([100 * acc[s], claim[0]], [pick(worst[s]), claim[1]], ":", color="crimson", lw=0.8)
        labels.append((claim[0], claim[1], f"{worst[s]['defense']}: paper"))
        shown = True


def _keyed_curve(ax, results: dict, labels: list) -> None:
    """The keyed-projection experiment's accuracy vs ridge type-II SAR along the template length, if it ran."""
    data = (results.get("experiments", {}).get("keyed-projection") or {}).get("data") or {}
    rec, att = data.get("recognition") or {}, data.get("attack") or {}
    for tm, style, lab in (("a", "o-", "keyed-projection along m, (a) key secret (ridge)"),
                           ("b", "s--", "keyed-projection along m, (b) key known (ridge)")):
        xy = [(100 * r["acc_mean"], 100 * att[f"{m} ({tm})"]["SAR_II@1e-3"], m) for m, r in rec.items()
              if att.get(f"{m} ({tm})", {}).get("SAR_II@1e-3") is not None]
        if xy:
            xy.sort()
            ax.plot([p[0] for p in xy], [p[1] for p in xy], style, lw=1, ms=4, alpha=0.8, label=lab)
            labels += [(x, y, f"{m} ({tm})") for x, y, m in xy]


def write_csv(urows: list[dict], prows: list[dict], path: Path) -> None:
    keys: list[str] = []
    rows = [{"table": "utility", **r} for r in urows] + [{"table": "privacy", **r} for r in prows]
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    write_atomically(path, write)


def write_report(results: dict, images: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    urows, prows = utility_rows(results), privacy_rows(results)
    acc, worst = best_utility(urows), worst_cases(prows)
    write_csv(urows, prows, out_dir / "results.csv")
    md = [f"# faceveil benchmark ({results['profile']} profile)", "",
          f"Seed {results['seed']}; wall time {results['wall_seconds'] / 60:.1f} min; failed cells: {results['failed']}; "
          f"versions: {results['versions']}; ran on {results.get('device', 'cpu')}"
          + (f" ({results['device_name']})" if results.get("device_name") else "")
          + (f", precision {p}" if (p := results.get("precision", "fp32")) != "fp32" else "") + ".", "",
          *([f"**What this run covers.** {cov}", ""] if (cov := profile_coverage(results['profile'])) else []),
          *([f"Merged from {len(results['parts'])} runs (`--jobs` workers or separate runs): " + "; ".join(
              f"{Path(p['dir']).name} {p['wall_seconds'] / 60:.1f} min" if "wall_seconds" in p else f"{Path(p['dir']).name} FAILED"
              for p in results["parts"]) + ".", ""] if results.get("parts") else []),
          *([f"**Interrupted** after {len(results['cells'])} of {results['planned_cells']} cells: the tables hold the "
             "cells that finished; re-running the same command continues from the caches.", ""]
            if results.get("interrupted") else []),
          *(["## Verdicts: each defense at its weakest point", "",
             "The worst case over every attack run on the setting (the protection is as strong as the strongest attack "
             "against it), beside the random-person and mean-face baselines and what the paper claims.", "",
             verdict_table(prows, urows), ""]
            if any(r.get("who") == "reconstruction" for r in prows) else []),
          *(["## What the numbers say, per defense setting", "",
             *[f"- **{w['setting']}**: {sentence(w, acc.get(w['setting']))}" for w in worst], ""] if worst else []),
          *(["## Template protection (ISO/IEC 24745)", "", table, ""]
            if (table := protection_table(results, prows)) else []),
          "## How to read the tables", "",
          "Utility: LFW 10-fold verification through the full protected path. Frozen = the deployed dlib ResNet as is; "
          "adapted = a student distilled on protected inputs (see README: a CPU stand-in for the papers' retrained "
          "servers).", "",
          "Privacy (attacks trained as a real attacker would, judged on LFW pair images): "
          "COS: cosine of an independent recogniser's mean-centred embeddings (reconstruction vs original; its mean "
          "embedding of 1,000 public faces subtracted, so an unrelated face scores about 0); SRRA: replay to the deployed "
          "recogniser at its operating threshold, against the same image's template and against the other image of a "
          "same-pair; closer-to-own: the reconstruction is closer (deployed recogniser) to its source than to a random "
          "other target (50 % = no identity); SAR (successful attack rate, as the template-inversion literature reports "
          "it): accepted by the deployed recogniser at its FMR 1e-3 / 1e-4 thresholds (fitted on LFW impostor pairs), "
          "type I against the source image's template, type II against another image of the same person; judge SAR: the "
          "same at the independent judge's own FMR 1e-3 threshold (an attack that only fools the recogniser it was "
          "trained against scores there no better than the baselines). The baselines (mean face, random person) close "
          "every privacy table.", "", *([note, ""] if (note := floor_note(prows)) else [])]
    sc = scatter(urows, prows, out_dir, results)
    if sc is not None:
        md += ["## Privacy–utility", "", f"![privacy-utility scatter]({sc.name})", ""]
    figs = grids(images, out_dir)
    md += _defense_sections(results, urows, prows, figs)
    if figs:
        md += ["## Reconstructions", ""]
        for caption, path in figs:
            md += [f"**{caption}**", "", f"![{caption}]({path.name})", ""]
    no_cells = [n for n in results.get("defenses", []) if not any(c["defense"] == n for c in results["cells"])]
    if no_cells:
        md += [f"No generic cells for: {', '.join(no_cells)} — protecting thousands of faces at seconds each; their paper "
               "experiments (in their sections) measure them: `faceveil bench --defenses NAME`.", ""]
    failed = [c for c in results["cells"] if c["status"] != "ok"]
    if failed:
        md += ["## Failed cells", ""] + [f"- {c['setting']} / {c['kind']}: `{c['error']}`" for c in failed] + [""]
    text = "\n".join(md)
    write_text_atomic(out_dir / "report.md", text)
    write_text_atomic(out_dir / "report.html", markdown_to_html(text, out_dir))
    return out_dir / "report.md"


def _defense_sections(results: dict, urows: list[dict], prows: list[dict], figs: list[tuple[str, Path]]) -> list[str]:
    """One section per defense: the generated sentence of each of its settings, its utility and privacy rows (the
    baselines below them), which reconstruction grids show it, and its paper experiment."""
    names = list(dict.fromkeys([c["defense"] for c in results["cells"]] + list(results.get("experiments", {}))))
    if not names:
        return []
    acc = best_utility(urows)
    worst = {w["setting"]: w for w in worst_cases(prows)}
    md = ["## Utility and privacy per defense", ""]
    for name in names:
        u = [r for r in urows if r["defense"] == name]
        p = [r for r in prows if r["defense"] == name]
        settings = list(dict.fromkeys([r["setting"] for r in u] + [r["setting"] for r in p]))
        md += [f"### {name}", ""]
        md += [f"- **{s}**: {sentence(worst[s], acc.get(s))}" for s in settings if s in worst] + [""]
        if u:
            md += ["Utility:", "", utility_table(u), ""]
        if p:
            md += ["Privacy:", "", privacy_table(p), _baseline_rows(p), ""]
            shown = [path.name for caption, path in figs if any(s in caption for s in settings)]
            if shown:
                md += ["Reconstruction grids with its rows (labelled in the image; section Reconstructions): "
                       + ", ".join(f"`{f}`" for f in shown) + ".", ""]
        exp = results.get("experiments", {}).get(name)
        if exp is not None:
            md += [f"#### Experiments: {name}", ""]
            md += [f"FAILED: {exp.get('error')}", ""] if exp.get("status") != "ok" else [exp.get("markdown", ""), ""]
    return md


def markdown_to_html(md: str, base: Path) -> str:
    """A small converter for the report's markdown (headings, tables, images, bold, code), with
    images embedded as data URIs so the HTML is one self-contained file."""

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out = ["<!doctype html><html><head><meta charset='utf-8'><title>faceveil report</title><style>",
           "body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;font-size:13px}"
           "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}img{max-width:100%}",
           "</style></head><body>"]
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{inline(ln[level:].strip())}</h{level}>")
        elif ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, r in enumerate(rows):
                if k == 1 and all(set(c) <= set("-:") for c in r):
                    continue
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        elif m := re.match(r"!\[(.*?)\]\((.+?)\)", ln):
            p = base / m.group(2)
            if p.is_file():
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(m.group(1))}' src='data:image/png;base64,{data}'></p>")
            else:  # said, not dropped: a reader (and the browser test) must see a missing figure
                out.append(f"<p class='missing'>[missing figure: {html.escape(m.group(2))}]</p>")
        elif ln.startswith("- "):
            out.append(f"<li>{inline(ln[2:])}</li>")
        elif ln.strip():
            out.append(f"<p>{inline(ln)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out)

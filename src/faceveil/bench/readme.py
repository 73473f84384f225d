"""README tables generated from committed result files (``results/``), never pasted.

README.md marks each generated block::

    <!-- results:NAME -->
    ...generated markdown...
    <!-- /results:NAME -->

and :data:`BLOCKS` maps ``NAME`` to a renderer that reads ``results/<folder>/results.json``.
``faceveil report readme`` rewrites the blocks; ``--check`` (and ``tests/bench/test_readme.py``) fails when
README differs from what the committed results generate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from faceveil.bench.report import BASELINES, FLOOR_ATTACK, privacy_rows
from faceveil.bench.verdicts import rejudged_table, verdict_table
from faceveil.storage import write_text_atomic

BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _load(results_dir: Path, folder: str) -> dict:
    path = results_dir / folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: README's block {folder!r} is generated from it "
                                f"(see the command in {results_dir / folder / 'COMMAND'})")
    return json.loads(path.read_text())


def _command(results_dir: Path, folder: str) -> str:
    p = results_dir / folder / "COMMAND"
    return p.read_text().strip() if p.is_file() else ""


def inversion_table(results: dict, setting: str = "none (embedding)") -> str:
    """Every attack on one setting (default: unprotected 128-D dlib templates), both SAR types at FMR 1e-3 and
    1e-4, the judge's SAR and COS, SRRA, closer-to-own, the ridge floor, training time and run time per face;
    the baselines below."""
    rows = [r for r in privacy_rows(results) if r["setting"] == setting]
    head = ("| attack | pairs | SAR I / II @1e-3 % | SAR I / II @1e-4 % | judge SAR I / II @1e-3 % | judge COS | "
            "SRRA same / pair % | closer-to-own % | SSIM | vs ridge floor | train s | ms/face |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    cells = {c["result"].get("attack", {}).get("name"): c for c in results["cells"]
             if c["kind"] == "privacy" and c["setting"] == setting and c["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['attack']} | FAILED: {str(r['error'])[:100]} |" + " |" * (head.count("|") - 3))
            continue
        if r["who"] in BASELINES:
            continue
        res = cells.get(r["attack"], {}).get("result", {})
        log = res.get("train_log") or {}
        floor = "floor" if r["attack"] == FLOOR_ATTACK else ("below: " + r["below_ridge_floor"]) \
            if r.get("below_ridge_floor") else "above" if r.get("below_ridge_floor") == "" else "—"
        train = f"{log['seconds']:.0f}" if log.get("seconds") is not None else "—"
        ms = res.get("attack_ms_per_face")
        out.append(f"| {r['attack']} | {r['n']} | {_pct(r.get('SAR_I@1e-3'))} / {_pct(r.get('SAR_II@1e-3'))} | "
                   f"{_pct(r.get('SAR_I@1e-4'))} / {_pct(r.get('SAR_II@1e-4'))} | "
                   f"{_pct(r.get('judge_SAR_I@1e-3'))} / {_pct(r.get('judge_SAR_II@1e-3'))} | {r['COS']:.3f} | "
                   f"{_pct(r['SRRA_same_image'])} / {_pct(r['SRRA_pair'])} | {_pct(r.get('closer_to_own'))} | "
                   f"{r['SSIM']:.3f} | {floor} | {train} | {'—' if ms is None else f'{ms:.1f}'} |")
    seen = set()
    for r in rows:
        if r["status"] == "ok" and r["who"] in BASELINES and r["who"] not in seen:
            seen.add(r["who"])
            out.append(f"| *{r['who']}* | {r['n']} | {_pct(r.get('SAR_I@1e-3'))} / {_pct(r.get('SAR_II@1e-3'))} | "
                       f"{_pct(r.get('SAR_I@1e-4'))} / {_pct(r.get('SAR_II@1e-4'))} | "
                       f"{_pct(r.get('judge_SAR_I@1e-3'))} / {_pct(r.get('judge_SAR_II@1e-3'))} | {r['COS']:.3f} | "
                       f"{_pct(r['SRRA_same_image'])} / {_pct(r['SRRA_pair'])} | {_pct(r.get('closer_to_own'))} | "
                       f"{r['SSIM']:.3f} | | | |")
    return "\n".join(out) + (f"\n\n{results['profile']} profile, seed {results['seed']}; pairs: LFW same-pairs judged "
                              "(per-target attacks are judged on fewer: seconds per face).")


def _inversion_block(results_dir: Path) -> str:
    folder = "template-inversion"
    r = _load(results_dir, folder)
    cmd = _command(results_dir, folder)
    return inversion_table(r) + (f" Command: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/`."


def _per_setting_block(folder: str) -> Callable[[Path], str]:
    """Every attack on every privacy setting of ``results/<folder>`` (one :func:`inversion_table` each)."""
    def render(results_dir: Path) -> str:
        r = _load(results_dir, folder)
        cmd = _command(results_dir, folder)
        settings = list(dict.fromkeys(c["setting"] for c in r["cells"] if c["kind"] == "privacy"))
        parts = [f"**{s}**\n\n{inversion_table(r, s)}" for s in settings]
        return "\n\n".join(parts) + (f" Command: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/`."
    return render


def _verdicts_block(folder: str) -> Callable[[Path], str]:
    """The verdict table of a committed bench run (worst case over its attacks, utility beside it)."""
    def render(results_dir: Path) -> str:
        from faceveil.bench.plan import profile_coverage
        from faceveil.bench.report import utility_rows

        r = _load(results_dir, folder)
        cmd = _command(results_dir, folder)
        cov = profile_coverage(r["profile"])
        return (verdict_table(privacy_rows(r), utility_rows(r)) + (f"\n\n{cov}" if cov else "")
                + f"\n\n{r['profile']} profile, seed "
                f"{r['seed']}; attacks: {', '.join(r.get('attacks', []))}; {len(r['cells'])} cells, {r['failed']} failed."
                + (f" Command: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/` (report: `results/{folder}/report.md`).")
    return render


def _rejudged_block(folder: str) -> Callable[[Path], str]:
    """Every defense re-judged: a bench run whose attack list extends its profile's suite (``--attacks``), each
    setting's verdict before and after the attacks it added (:func:`rejudged_table`)."""
    def render(results_dir: Path) -> str:
        from faceveil.bench.plan import attack_suite
        from faceveil.bench.report import utility_rows

        r = _load(results_dir, folder)
        suite = attack_suite(r["profile"])
        added = [a for a in r.get("attacks", []) if a not in suite]
        if not added:
            raise ValueError(f"results/{folder} ran only its profile's suite ({', '.join(suite)}): nothing was re-judged")
        cmd = _command(results_dir, folder)
        return (rejudged_table(privacy_rows(r), added, utility_rows(r))
                + f"\n\n{r['profile']} profile, seed {r['seed']}; the profile's suite: {', '.join(suite)}; added: "
                f"{', '.join(added)}; {len(r['cells'])} cells, {r['failed']} failed." + (f" Command: `{cmd}`." if cmd else "")
                + f" Data: `results/{folder}/` (report: `results/{folder}/report.md`).")
    return render


def _verdicts_and_measures(r: dict) -> list[str]:
    """A run's verdict table and, where its utility cells measured them, its ISO/IEC 24745 table."""
    from faceveil.bench.protection import protection_table
    from faceveil.bench.report import utility_rows

    prows = privacy_rows(r)
    return [verdict_table(prows, utility_rows(r))] + [t for t in (protection_table(r, prows),) if t]


def _protection_block(folder: str) -> Callable[[Path], str]:
    """faceveil's protection beside the seed defenses from one run: the verdict table (worst case over the suite),
    the ISO/IEC 24745 table and the privacy-utility plot (accuracy vs worst-case type-II SAR, the protection's
    curve along its strength parameter overlaid)."""
    def render(results_dir: Path) -> str:
        r = _load(results_dir, folder)
        parts = _verdicts_and_measures(r)
        if (results_dir / folder / "privacy_utility.png").is_file():
            parts.append(f"![privacy-utility: accuracy vs worst-case type-II SAR](results/{folder}/privacy_utility.png)")
        cmd = _command(results_dir, folder)
        return "\n\n".join(parts) + (f"\n\n{r['profile']} profile, seed {r['seed']}; attacks: {', '.join(r.get('attacks', []))}; "
                                      f"{len(r['cells'])} cells, {r['failed']} failed." + (f" Command: `{cmd}`." if cmd else "")
                                      + f" Data: `results/{folder}/` (report: `results/{folder}/report.md`).")
    return render


def _advface_table2_block(results_dir: Path) -> str:
    """AdvFace's Table 2 rows on all 6,000 LFW pairs (``bench/advface.py --table2``), one column per reading of ε
    measured (``results/advface-table2/table2-<bound>-<profile>.json``)."""
    runs = [json.loads(p.read_text()) for p in sorted((results_dir / "advface-table2").glob("table2-*.json"))]
    if not runs:
        raise FileNotFoundError(f"{results_dir / 'advface-table2'} has no table2-*.json: run "
                                "`OMP_NUM_THREADS=1 python bench/advface.py --table2 --profile quick --bound step`")
    reading = {"step": "ε per PGD iteration (the paper's)", "total": "ε as a total ball"}
    labels = list(dict.fromkeys(label for r in runs for label in r["rows"]))
    head = "| system | " + " | ".join(f"{reading[r['bound']]}, {r['profile']} shadow" for r in runs) + " | paper |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for label in labels:
        cells = [r["rows"].get(label) for r in runs]
        paper = next((c["paper"] for c in cells if c and c.get("paper")), "")
        out.append(f"| {label} | " + " | ".join("—" if c is None else f"{100 * c['acc_mean']:.2f} ± {100 * c['acc_std']:.2f} "
                                              f"({c['n_pairs']} pairs, {c['metric']})" for c in cells) + f" | {paper} |")
    return "\n".join(out) + "\n\nCommands: " + "; ".join(f"`{r['command']}`" for r in runs) + ". Data: `results/advface-table2/`."


def _main_job_block(results_dir: Path) -> str:
    """How long the main job takes from empty caches and re-run, and its peak memory (``bench/main_job.py
    --record results/bench/timing.json``), with where the cold run's cell time went."""
    path = results_dir / "bench" / "timing.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `PYTHONPATH=src python bench/main_job.py --record {path} ...`")
    t = json.loads(path.read_text())
    cold, warm = t["cold"], t["warm"]
    top = sorted(cold.get("cell_seconds", {}).items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in top) or 1
    where = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in top[:5])
    return (f"Measured on {t['cores']} cores, `{t['command']}`: **{cold['minutes']:.1f} min** from empty caches "
            f"(installed models kept), **{warm['minutes']:.1f} min** re-run; peak resident memory of the whole process "
            f"tree {max(cold['peak_gib'], warm['peak_gib']):.1f} GiB. Cell time from empty caches: {where} (summed over "
            f"the workers). Command: `PYTHONPATH=src python bench/main_job.py --profile {t['profile']} --jobs {t['jobs']} "
            f"--home /tmp/fv-empty --record results/bench/timing.json`.")


def _keyed_block(results_dir: Path) -> str:
    """faceveil's own protection: the verdicts of its bench settings (worst case over the suite run), its
    template-protection measures, and its experiment along the template length."""
    from faceveil.bench.experiments.keyed_projection import markdown as keyed_markdown

    folder = "keyed-projection"
    r = _load(results_dir, folder)
    cmd = _command(results_dir, folder)
    parts = _verdicts_and_measures(r)
    es = [(lab, json.loads((results_dir / folder / "ganinv-es" / f"{f}.json").read_text()))
          for lab, f in (("(a) key secret", "a-key-secret"), ("(b) key known", "b-key-known"))
          if (results_dir / folder / "ganinv-es" / f"{f}.json").is_file()]
    if es:
        rows = ["| query-only ganinv-es | pairs | SAR I / II @1e-3 % | judge SAR II @1e-3 % | judge COS | random person COS "
                "| queries/face |", "|---|---|---|---|---|---|---|"]
        for lab, x in es:
            m, rp = x["metrics"]["reconstruction"], x["metrics"]["random person"]
            rows.append(f"| {lab} | {x['eval']['n']} | {_pct(m.get('SAR_I@1e-3'))} / {_pct(m.get('SAR_II@1e-3'))} | "
                        f"{_pct(m.get('judge_SAR_II@1e-3'))} | {m['COS']:.3f} | {rp['COS']:.3f} | "
                        f"{x.get('attack_per_face', {}).get('queries', float('nan')):.0f} |")
        parts.append("\n".join(rows) + f"\n\nCommands: `results/{folder}/ganinv-es/COMMAND` (seconds per face: run apart, on few pairs).")
    exp = r.get("experiments", {}).get(folder, {})
    if exp.get("status") == "ok" and exp["data"].get("dlib_acc"):
        parts.append(_target_block(r, exp["data"]))
    if exp.get("status") == "ok":
        fig = "keyed-projection-curve.png" if (results_dir / folder / "keyed-projection-curve.png").is_file() else None
        parts.append(keyed_markdown(exp["data"], fig and Path(fig), prefix=f"results/{folder}/", heading=False))
    return "\n\n".join(parts) + (f"\n\n{r['profile']} profile, seed {r['seed']}; attacks: {', '.join(r.get('attacks', []))}."
                                  + (f" Command: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/`.")


def _target_block(r: dict, data: dict) -> str:
    """The keyed projection against the bar faceveil set for it (:data:`faceveil.bench.verdicts.TARGET`): the bench
    cells' worst cases, the accuracy lost against the unprotected embedding (the experiment's, all 6,000 pairs) and
    D↔sys across two keys from the experiment's large sample (threat model (a) only: with the keys known an attacker
    inverts both templates and links them through the faces, the irreversibility row)."""
    from faceveil.bench.report import utility_rows
    from faceveil.bench.verdicts import target_table

    prows = privacy_rows(r)
    two = (data.get("unlinkability") or {}).get("two keys") or {}
    d_sys = {s: two["d_sys"] for s in {p["setting"] for p in prows} if "(a:" in s and "d_sys" in two}  # threat model (a) settings
    table = target_table(prows, utility_rows(r), "keyed-projection", data["dlib_acc"], d_sys)
    return ("**Against the bar** (threat model (a) is the one it is set for; (b) shown for contrast):\n\n" + table
            + (f"\n\nD↔sys from {two['mated']:,} mated / {two['nonmated']:,} non-mated template pairs under two keys "
               "(the experiment below; the 24745 table's value comes from the bench's smaller sample, at its "
               "estimator's floor)." if two else ""))


def _experiment_block(folder: str, name: str) -> Callable[[Path], str]:
    """A paper experiment's own markdown from ``results/<folder>`` (its tables, one heading level down so they sit
    under README's section; image links pointed at the committed folder), with its command and wall time."""
    def render(results_dir: Path) -> str:
        r = _load(results_dir, folder)
        exp = r.get("experiments", {}).get(name)
        if not exp or exp.get("status", "ok") != "ok" or not exp.get("markdown"):
            raise ValueError(f"results/{folder}/results.json has no finished {name!r} experiment "
                             f"({(exp or {}).get('status', 'missing')})")
        cmd = _command(results_dir, folder)
        return (_nested(exp["markdown"], folder) + f"\n\n{r['profile']} profile, seed {r['seed']}."
                + (f" Command: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/`.")
    return render


def _nested(md: str, folder: str) -> str:
    """Markdown written for its own report, placed under a README section: its own title (a leading ``# ``
    heading: README's section has one) dropped, headings one level down, image links pointed at the committed
    folder."""
    md = re.sub(r"\A# [^\n]*\n+", "", md.strip())
    md = re.sub(r"^(#{2,5}) ", lambda m: "#" + m.group(1) + " ", md.strip(), flags=re.M)
    return re.sub(r"\]\((?!https?:|/|results/)([^)]+\.png)\)", rf"](results/{folder}/\1)", md)


def _markdown_file_block(folder: str, name: str) -> Callable[[Path], str]:
    """A committed markdown file of ``results/<folder>`` (a paper script's own tables, e.g. bench/deepblur.py's)."""
    def render(results_dir: Path) -> str:
        path = results_dir / folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: README's block is generated from it "
                                    f"(see the command in {results_dir / folder / 'COMMAND'})")
        cmd = _command(results_dir, folder)
        return _nested(path.read_text(), folder) + (f"\n\nCommand: `{cmd}`." if cmd else "") + f" Data: `results/{folder}/`."
    return render


#: README block name -> renderer(results_dir) -> markdown
BLOCKS: dict[str, Callable[[Path], str]] = {
    "template-inversion": _inversion_block,
    "verdicts": _verdicts_block("bench"),
    "rejudged": _rejudged_block("rejudged-fast"),
    "main-job": _main_job_block,
    "mixing": _per_setting_block("mixing-ci"),
    "keyed-projection": _keyed_block,
    "advface": _experiment_block("protection-quick", "advface"),
    "pmt": _experiment_block("protection-quick", "pmt"),
    "faceobfuscator": _markdown_file_block("faceobfuscator-quick", "faceobfuscator_table2_table3.md"),
    "protection": _protection_block("protection-quick"),
    "facemix": _experiment_block("facemix-ci", "facemix"),
    "facemix-quick": _markdown_file_block("facemix-quick", "facemix.md"),
    "unprotected": _per_setting_block("unprotected-quick"),
    "advface-table2": _advface_table2_block,
    "deepblur": _markdown_file_block("deepblur-quick", "deepblur_experiment_50x10.md"),
}


def render_readme(text: str, results_dir: Path) -> str:
    """``text`` with every known results block regenerated (unknown names raise ``KeyError``)."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise KeyError(f"README block results:{name} has no renderer; known: {', '.join(BLOCKS)}")
        return f"{m.group(1)}{BLOCKS[name](results_dir).rstrip()}\n{m.group(4)}"
    return BLOCK.sub(sub, text)


def update_readme(readme: Path, results_dir: Path, check: bool = False) -> bool:
    """Regenerate ``readme``'s results blocks; with ``check`` only compare. Returns whether it was (or would
    be) changed."""
    old = readme.read_text()
    new = render_readme(old, results_dir)
    if new != old and not check:
        write_text_atomic(readme, new)
    return new != old

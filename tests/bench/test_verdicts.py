"""Per-defense verdicts: the worst case over the attack suite and the stated rule (constructed results)."""

from __future__ import annotations

from faceveil.bench.report import privacy_rows, write_report
from faceveil.bench.verdicts import sentence, verdict, worst_cases


def metrics(sar1: float, sar2: float, jsar2: float = 0.0, srra: float = 0.1, cos: float = 0.1) -> dict:
    return {"MSE": 0.05, "PSNR": 13.0, "SSIM": 0.3, "COS": cos, "SRRA_same_image": srra, "SRRA_pair": srra,
            "closer_to_own": 0.6, "SAR_I@1e-3": sar1, "SAR_II@1e-3": sar2, "SAR_I@1e-4": sar1 / 2,
            "SAR_II@1e-4": sar2 / 2, "judge_SAR_I@1e-3": jsar2, "judge_SAR_II@1e-3": jsar2}


def cell(setting: str, attack: str, rec: dict, leakage: str = "channel", status: str = "ok") -> dict:
    if status != "ok":
        return {"kind": "privacy", "setting": setting, "defense": setting, "status": status, "error": "boom",
                "result": {"attack": {"name": attack}, "threat": {"leakage": leakage}}}
    return {"kind": "privacy", "setting": setting, "defense": setting, "status": "ok", "error": None,
            "result": {"attack": {"name": attack}, "threat": {"leakage": leakage}, "eval": {"n": 100},
                       "judge": {"cos": "faceres-bgr"}, "train_log": {"steps": 10},
                       "metrics": {"reconstruction": rec, "mean face": metrics(0, 0, 0, 0, 0),
                                   "random person": metrics(0.01, 0.0, 0.01, 0.0, 0.0)}}}


def results() -> dict:
    return {"profile": "quick", "seed": 0, "wall_seconds": 60.0, "failed": 1, "versions": {}, "cells": [
        {"kind": "utility", "setting": "blur", "defense": "blur", "status": "ok", "error": None,
         "result": {"servers": {s: {"acc_mean": a, "acc_std": 0.01, "tpr_at_fpr_1e2": 0.5, "tpr_at_fpr_1e3": 0.2,
                                    "storage_bytes": 1024, "client_ms": 1.0, "server_ms": 2.0, "n_pairs": 100,
                                    "metric": "euclidean"} for s, a in (("frozen", 0.80), ("adapted", 0.91))}}},
        {"kind": "utility", "setting": "none (image)", "defense": "none", "status": "ok", "error": None,
         "result": {"servers": {s: {"acc_mean": a, "acc_std": 0.01, "tpr_at_fpr_1e2": 0.9, "tpr_at_fpr_1e3": 0.8,
                                    "storage_bytes": 1024, "client_ms": 1.0, "server_ms": 2.0, "n_pairs": 100,
                                    "metric": "euclidean"} for s, a in (("frozen", 0.99), ("adapted", 0.93))}}},
        cell("blur", "ridge", metrics(0.10, 0.05)),
        cell("blur", "nbnet", metrics(0.90, 0.62, 0.3)),  # the weakest point: broken
        cell("blur", "dn", metrics(0.95, 0.40), leakage="database"),  # more type-I, less type-II
        cell("laplace", "dn", metrics(0.02, 0.01, 0.0)),  # within 2/n of the baseline: holds
        cell("laplace", "cgan", metrics(0.03, 0.02, 0.01)),
        cell("mask", "dn", metrics(0.4, 0.2, 0.05)),  # leaks
        cell("mask", "cgan", {}, status="failed"),
        cell("pmt", "dn", {}, status="failed"),
    ]}


def test_worst_case_is_the_most_type_two_success_over_attacks_and_leakages():
    w = {x["setting"]: x for x in worst_cases(privacy_rows(results()))}
    assert w["blur"]["worst"]["attack"] == "nbnet" and w["blur"]["verdict"] == "broken"
    assert w["blur"]["attacks"] == ["dn", "nbnet", "ridge"]
    assert w["laplace"]["worst"]["attack"] == "cgan" and w["laplace"]["verdict"] == "holds"
    assert w["mask"]["verdict"] == "leaks" and w["mask"]["failed"] == 1
    assert w["pmt"]["worst"] is None and w["pmt"]["verdict"] == "unjudged"


def test_rule():
    rp = metrics(0.0, 0.01, 0.0)
    assert verdict(metrics(0, 0.02, 0.02), rp, 100) == "holds"  # 2 in 100: noise
    assert verdict(metrics(0, 0.03, 0.0), rp, 100) == "leaks"  # above 2x random person and 2/n
    assert verdict(metrics(0, 0.0, 0.05), rp, 100) == "leaks"  # the independent judge recognises them
    assert verdict(metrics(0, 0.5, 0.0), rp, 100) == "broken"
    old = {k: v for k, v in metrics(0, 0.6, srra=0.3).items() if "SAR" not in k}  # judged before SAR: pair SRRA
    assert verdict(old, {"SRRA_pair": 0.0}, 100) == "leaks"
    assert verdict({"COS": 0.0}, None, 100) == "unjudged"


def test_report_opens_with_the_verdict_table(tmp_path):
    md = write_report(results(), {}, tmp_path).read_text()
    first = md.index("## ")
    assert md[first:].startswith("## Verdicts")
    table = [line for line in md.splitlines() if line.startswith("| blur |")][0]
    assert "| 91.0 (adapted) |" in table and "nbnet (channel; of dn, nbnet, ridge)" in table and "**broken**" in table
    # the adapted server is read against the unprotected system and the same-budget clean student, both above it
    rows = md[first:].split("| defense setting |", 1)[1].splitlines()[2:4]
    assert rows[0].startswith("| *unprotected images, deployed recogniser (for scale)* | 99.0 |")
    assert rows[1].startswith("| *clean student: distilled on unprotected images") and "| 93.0 |" in rows[1]
    assert "90.0 / 62.0" in table
    assert "Verdict rule" in md and "| pmt | — | (no judged attack; 1 failed)" in md


def test_bench_runs_only_the_named_settings():
    from faceveil.bench.runner import plan_cells, run_bench
    from faceveil.context import RunContext

    plan = plan_cells(["none"], ("ridge", "dn"), settings=["none (embedding)"])
    assert {st.label for _, st, *_ in plan} == {"none (embedding)"}
    assert [(k, a) for k, _, a, *_ in plan] == [("utility", None), ("privacy", "ridge"), ("privacy", "dn")]
    import pytest

    with pytest.raises(ValueError, match="unknown setting"):
        run_bench(RunContext("ci"), ["none"], ["dn"], settings=["none (typo)"])


def test_each_profile_has_a_suite_of_registered_attacks():
    from faceveil.attacks import ATTACKS
    from faceveil.bench.plan import BENCH_PROFILES, attack_suite

    for p in BENCH_PROFILES:
        suite = attack_suite(p)
        assert {"ridge", "dn", "whitebox"} <= set(suite)
        for a in suite:
            ATTACKS.get(a)  # registered (raises otherwise)
    assert {"nbnet", "ganinv", "ganinv-es"} <= set(attack_suite("full"))


def test_each_setting_gets_a_generated_sentence(tmp_path):
    w = {x["setting"]: x for x in worst_cases(privacy_rows(results()))}
    s = sentence(w["blur"], 0.91)
    assert s.startswith("LFW accuracy 91.0 %; the strongest attack, nbnet on the channel, recovers identity: 62.0 %")
    assert "vs 0.0 % for a random person" in s and "judge accepts 30.0 %" in s and s.endswith("**broken**.")
    assert "recovers no identity beyond chance" in sentence(w["laplace"]) and "**holds**" in sentence(w["laplace"])
    assert sentence(w["pmt"]) == "no attack was judged (1 failed)."
    md = write_report(results(), {}, tmp_path).read_text()
    assert md.index("## What the numbers say") > md.index("## Verdicts")
    assert f"- **blur**: {s}" in md


def test_each_defense_has_its_own_section_with_its_rows_and_experiment(tmp_path):
    r = results()
    r["experiments"] = {"laplace": {"status": "ok", "markdown": "LAPLACE TABLE 1"}}
    md = write_report(r, {}, tmp_path).read_text()
    part = md[md.index("## Utility and privacy per defense"):]
    blur = part[part.index("### blur"):part.index("### laplace")]
    assert "- **blur**: LFW accuracy 91.0 %" in blur and "Utility:" in blur and "Privacy:" in blur
    assert "| blur | adapted | 91.00" in blur and "| blur | nbnet | channel |" in blur and "*random person*" in blur
    laplace = part[part.index("### laplace"):part.index("### mask")]
    assert "Utility:" not in laplace and "| laplace | dn |" in laplace
    assert "#### Experiments: laplace" in laplace and "LAPLACE TABLE 1" in laplace
    assert "| laplace | dn |" not in blur


def test_rejudged_table_puts_the_old_verdict_beside_the_new():
    from faceveil.bench.report import utility_rows
    from faceveil.bench.verdicts import rejudged_table

    r = results()
    md = rejudged_table(privacy_rows(r), ("nbnet",), utility_rows(r))
    row = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    # blur: dn (database) was the worst case without nbnet (40 % type II: leaks); nbnet breaks it
    assert "| dn (database) | 40.0 | leaks | nbnet (channel): 90.0 / 62.0 | 30.0 |" in row["blur"]
    assert row["blur"].endswith("| nbnet (channel): 62.0 | **broken** (was leaks) |")
    # laplace: nbnet never ran there; the verdict stands
    assert "| not run | — |" in row["laplace"] and row["laplace"].endswith("**holds** |")
    assert "| (none judged) | — | unjudged | not run |" in row["pmt"]


def test_target_table_checks_each_bar():
    """The bar of faceveil's protection on constructed cells: laplace's worst type-II SAR 2 % misses the 1 % bar,
    its judge COS gap (dn 0.10 over a random person at 0.0, the worst cell; cgan 0.04) misses 0.02; its accuracy is
    not measured ('—')."""
    from faceveil.bench.report import utility_rows
    from faceveil.bench.verdicts import cos_over_random, target_table

    r = results()
    r["cells"].append(cell("laplace", "ridge", metrics(0.0, 0.0, 0.0, cos=0.015)))
    for c in r["cells"]:
        if c["setting"] == "laplace" and c["result"]["attack"]["name"] == "cgan":
            c["result"]["metrics"]["reconstruction"]["COS"] = 0.04
    prows = privacy_rows(r)
    assert cos_over_random(prows, "laplace") == (0.1, "dn")
    t = target_table(prows, utility_rows(r), "laplace", 0.99, {"laplace": 0.03})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in t.splitlines()[2:]}
    assert "2.0 % (cgan): **not met**" in rows["irreversibility: worst type-II SAR @FMR 1e-3 over the suite (≤ 1 %)"]
    assert "+0.100 (dn): **not met**" in t and "0.030: **met**" in t
    assert rows["LFW accuracy lost vs the unprotected system's 99.0 % (≤ 2 points)"].endswith("| — |")
    # blur: 0.99 - 0.91 (its best server) = 8 points lost
    assert "8.0 points: **not met**" in target_table(prows, utility_rows(r), "blur", 0.99, {})
    assert target_table(prows, utility_rows(r), "pmt", 0.99, {}) == ""  # no judged cell

"""`faceveil bench --profile ci`: report structure, and the unprotected cell is really attacked."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from faceveil.cli import app


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, data_root):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    # two defenses in two worker processes: also exercises --jobs and the merge of their parts
    res = CliRunner().invoke(app, ["bench", "--profile", "ci", "--defenses", "none,pixelate", "--attacks", "urec",
                                   "--out", str(out), "--data-dir", str(data_root), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_report_files_and_structure(bench_out):
    for f in ("report.md", "report.html", "results.json", "results.csv", "grid-urec-channel.png", "privacy_utility.png"):
        assert (bench_out / f).is_file(), f
    md = (bench_out / "report.md").read_text()
    assert "## Utility" in md and "## Privacy" in md and "mean face" in md and "random person" in md
    html = (bench_out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    r = json.loads((bench_out / "results.json").read_text())
    assert r["failed"] == 0 and r["profile"] == "ci"
    kinds = {(c["kind"], c["setting"]) for c in r["cells"]}
    assert ("utility", "none (embedding)") in kinds and ("privacy", "none (res1 map)") in kinds
    for c in r["cells"]:
        if c["kind"] == "privacy":
            assert c["result"]["threat"]["leakage"] == "channel" and c["result"]["seed"] == 0
            assert "wall_seconds" in c["result"] and "versions" in c["result"]
    rows = list(csv.DictReader((bench_out / "results.csv").open()))
    assert {r["table"] for r in rows} == {"utility", "privacy"}


def test_jobs_merge_the_parts(bench_out, tmp_path):
    from faceveil.bench.runner import load_images, merge_runs

    r = json.loads((bench_out / "results.json").read_text())
    parts = {n: json.loads((bench_out / "parts" / n / "results.json").read_text()) for n in ("none", "pixelate")}
    assert r["cells"] == parts["none"]["cells"] + parts["pixelate"]["cells"]  # in --defenses order
    assert r["planned_cells"] == len(r["cells"]) and r["defenses"] == ["none", "pixelate"]
    # each worker reported its progress cell by cell (the parent's bar sums them)
    from faceveil.bench.runner import read_progress

    for n, part in parts.items():
        assert read_progress(bench_out / "parts" / n) == (len(part["cells"]), part["planned_cells"])
    assert r["device"] == "cpu" and r["device_name"]
    # before the workers, a spawned warm-up process ran one setting's first attack cell (filling the shared caches)
    assert list((bench_out / "parts" / "warm-up" / "cells").glob("none-*-urec-channel.json"))
    images = load_images(bench_out / "images.pt")
    assert {k[0] for k in images} == {"none (embedding)", "none (res1 map)", "pixelate"}
    im = images[("pixelate", "urec", "channel")]
    assert im["original"].shape == im["reconstruction"].shape and 0 <= im["held"].min() <= im["held"].max() <= 1
    # a worker that died without results is a failed cell naming its log, not a silent gap
    m = merge_runs([bench_out / "parts" / "none", tmp_path / "dead"], tmp_path / "merged")
    assert m["failed"] == 1 and m["cells"][-1]["status"] == "failed" and "log.txt" in m["cells"][-1]["error"]
    assert "## Failed cells" in (tmp_path / "merged" / "report.md").read_text()


def test_merge_copies_the_experiments_figures(bench_out, tmp_path):
    """A worker's experiment figures live in its part folder (not committed); the merged folder gets them, so the
    merged report's links (by file name) resolve."""
    import shutil

    from faceveil.bench.runner import merge_runs

    part = tmp_path / "parts" / "none"
    shutil.copytree(bench_out / "parts" / "none", part)
    r = json.loads((part / "results.json").read_text())
    (part / "exp_fig.png").write_bytes(b"\x89PNG fake figure")
    r["experiments"] = {"none": {"status": "ok", "markdown": "![fig](exp_fig.png)",
                                 "figures": [str(part / "exp_fig.png"), str(part / "gone.png")]}}
    (part / "results.json").write_text(json.dumps(r))
    m = merge_runs([part], tmp_path / "merged")
    assert (tmp_path / "merged" / "exp_fig.png").read_bytes() == b"\x89PNG fake figure"
    assert m["experiments"]["none"]["figures"] == [str(tmp_path / "merged" / "exp_fig.png")]  # the missing one dropped


def test_unprotected_cell_is_attacked(bench_out):
    r = json.loads((bench_out / "results.json").read_text())
    cell = next(c for c in r["cells"] if c["kind"] == "privacy" and c["setting"] == "none (res1 map)")
    m = cell["result"]["metrics"]
    assert m["reconstruction"]["COS"] > m["random person"]["COS"] + 0.05
    assert m["reconstruction"]["closer_to_own"] > m["random person"]["closer_to_own"]
    util = next(c for c in r["cells"] if c["kind"] == "utility" and c["setting"] == "none (image)")
    assert util["result"]["servers"]["frozen"]["acc_mean"] > 0.9


def test_plan_has_no_adaptive_whitebox_cell(data_root):
    """FaceObfuscator: dn non-adaptive and adaptive (|d|), white-box once (it already inverts |d|)."""
    from faceveil.bench.runner import plan_cells

    plan = [(k, a, v) for k, st, a, _, v in plan_cells(["faceobfuscator"], ("dn", "whitebox"), data_root)
            if st.label.startswith("FaceObfuscator (AC01,AC10; b=2; [-60,60])")]
    assert plan == [("utility", None, None), ("privacy", "dn", None), ("privacy", "dn", "abs"),
                    ("privacy", "whitebox", None)]


def test_slow_clients_get_capped_data_sets():
    """Sizes follow the declared client cost: cheap defenses keep the profile's sizes; a slow client
    (AdvNoise, DeepBlur) gets fewer utility pairs and training images, deterministically."""
    from faceveil.attacks.base import profile_budget
    from faceveil.bench.runner import BENCH_PROFILES, setting_sizes
    from faceveil.defenses import get_defense

    quick = BENCH_PROFILES["quick"]
    cheap = setting_sizes(get_defense("blur"), quick)
    assert (cheap.utility_per_fold, cheap.student_images, cheap.attack_images) == (quick.utility_per_fold, None, None)
    adv, deep = setting_sizes(get_defense("advnoise"), quick), setting_sizes(get_defense("deepblur"), quick)
    assert deep.utility_per_fold <= adv.utility_per_fold < quick.utility_per_fold
    assert deep.attack_images < adv.attack_images and deep.eval_pairs < 300 == profile_budget("quick").eval_pairs
    # protecting each capped set costs about the profile's protect_seconds at the declared rate
    assert adv.attack_images * get_defense("advnoise").protect_ms_hint / 1000 <= quick.protect_seconds
    assert setting_sizes(get_defense("advnoise"), BENCH_PROFILES["full"]).attack_images is None


def test_interrupted_run_still_writes_its_report(tmp_path, data_root, monkeypatch):
    """Ctrl-C/SIGTERM during a cell: the finished cells are reported, the run says it was interrupted."""
    import faceveil.bench.privacy as privacy
    from faceveil.bench.runner import run_bench
    from faceveil.context import RunContext

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(privacy, "run_attack", interrupt)  # the first privacy cell is "interrupted"
    r = run_bench(RunContext("ci", data=data_root, progress=False, out_dir=tmp_path), ["none"], ["dn"])
    assert r["interrupted"] and r["planned_cells"] > len(r["cells"]) == 1
    assert r["cells"][0]["kind"] == "utility" and r["cells"][0]["status"] == "ok"
    assert "Interrupted" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["interrupted"] is True


def test_utility_cell_without_servers_says_why_not_failed():
    """A feature-domain defense at a profile that trains no students has no utility server: the report
    says it was not measured and why, and keeps FAILED for cells that really failed."""
    from faceveil.bench.report import utility_rows, utility_table
    from faceveil.bench.runner import BENCH_PROFILES, Setting, utility_servers
    from faceveil.defenses import get_defense

    fo = get_defense("faceobfuscator")
    assert utility_servers(fo, Setting("fo", "faceobfuscator"), BENCH_PROFILES["ci"]) == ()
    cells = [{"kind": "utility", "setting": "fo", "defense": "faceobfuscator", "status": "ok", "error": None,
              "result": {"servers": {}, "skipped": "needs an adapted server; the ci profile trains none"}},
             {"kind": "utility", "setting": "broken", "defense": "blur", "status": "failed", "error": "boom",
              "result": {}}]
    table = utility_table(utility_rows({"cells": cells}))
    assert "| fo | — | not measured: needs an adapted server" in table and "FAILED: None" not in table
    assert "| broken | — | FAILED: boom" in table


def test_fast_profile_covers_every_defense_with_bounded_budgets():
    """The first report (`make run`) plans cells for every registered defense, AdvFace and PMT included (their
    generic settings exist only at fast), but the megabytes-per-face frequency-domain baselines, one attack of each
    kind, and step-bounded training."""
    from faceveil.attacks.base import profile_budget
    from faceveil.bench.plan import default_attacks, profile_coverage, settings_for
    from faceveil.bench.runner import BENCH_PROFILES, plan_cells, utility_servers
    from faceveil.defenses import DEFENSES
    from faceveil.train.distill import distill_config

    bp = BENCH_PROFILES["fast"]
    suite = default_attacks(bp)
    assert {"ridge", "dn", "whitebox"} <= set(suite) and "cgan" not in suite
    plan = plan_cells(DEFENSES.names(), suite, profile="fast")
    planned = {st.defense for _, st, *_ in plan}
    assert planned == set(DEFENSES.names()) - {"duetface", "ppfr-fd"}
    assert all(settings_for(n, p) for n in ("duetface", "ppfr-fd") for p in ("ci", "quick", "full"))
    for n in DEFENSES.names():
        for st in settings_for(n, "fast"):
            d = st.build()
            # every setting's utility is measured: a student only where the recogniser cannot read the data
            servers = utility_servers(d, st, bp)
            # (and the unprotected images: the same-budget clean student the adapted servers are read against)
            want = (("adapted",) if d.needs_adapted_server else ("frozen", "adapted") if st.label == "none (image)"
                    else ("frozen",))
            assert servers == want, st.label
    # AdvFace and PMT: generic cells at fast and quick (the seed defenses on a combined run's axes); at full the
    # experiments alone measure them
    assert settings_for("advface", "quick") and settings_for("pmt", "quick")
    assert not settings_for("advface", "full") and not settings_for("pmt", "full")
    b = profile_budget(bp.attack_profile)
    assert b.max_steps == 80 and b.max_seconds >= 4 * 60  # steps define the run; seconds only guard
    assert distill_config(bp.attack_profile).epochs == 1
    cov = profile_coverage("fast")
    assert "make full" in cov and "Not covered" in cov

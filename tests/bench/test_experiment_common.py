"""Shared pieces of the paper experiments."""

from __future__ import annotations

import pytest

from faceveil.bench.experiments.common import md_table


def test_md_table_escapes_pipes_in_cells():
    """A ``|`` in a label (FaceObfuscator's "|d|", a bound "|δ| ≤ ε") would start a new column: it is escaped, so
    every row keeps the header's column count."""
    md = md_table(["attacker on |d|", "SSIM"], [["ADAPTIVE dn on |d|", 0.5], ["plain", 12.25]])
    lines = md.splitlines()
    assert lines[0] == "| attacker on \\|d\\| | SSIM |"
    assert lines[2] == "| ADAPTIVE dn on \\|d\\| | 0.500 |" and lines[3] == "| plain | 12.2 |"
    assert {line.replace("\\|", "").count("|") for line in lines} == {3}


def test_student_steps_flags_a_student_stopped_by_its_time_cap():
    """A quick-profile student plans one epoch of 3,000 faces in batches of 32 (93 steps); one stopped at 5 steps
    by the wall-time cap is marked, a complete one is not, a frozen server has none."""
    from faceveil.bench.experiments.common import student_steps

    assert student_steps({"train_log": {"steps": 93, "images": 3000}}, "quick") == "93"
    assert student_steps({"train_log": {"steps": 5, "images": 3000}}, "quick") == "5 of 93 (time cap)"
    assert student_steps({"train_log": None}, "quick") == student_steps(None, "quick") == "—"


def test_student_seconds_caps_the_adapted_servers_student(tmp_path):
    """``--student-seconds`` reaches the student an experiment's adapted server distils: a cap of a millisecond
    stops it after its first step, and its steps column says so (the profile's own cap lets it run on)."""
    from faceveil.bench.build import server_model
    from faceveil.bench.experiments.common import experiment_context, experiment_parser, student_steps
    from faceveil.defenses import get_defense

    args = experiment_parser("test", ["ci"], str(tmp_path), students=True).parse_args(["--student-seconds", "0.001"])
    ctx = experiment_context("ci", tmp_path, student_seconds=args.student_seconds, progress=False)
    assert ctx.student_overrides() == {"max_seconds": 0.001}
    assert experiment_context("ci", tmp_path).student_overrides() == {}
    for bad in ("0", "-5", "nan", "soon"):
        with pytest.raises(SystemExit):  # argparse names the bad value and exits 2
            experiment_parser("test", ["ci"], str(tmp_path), students=True).parse_args(["--student-seconds", bad])
    with pytest.raises(SystemExit):  # offered only where an experiment distils students
        experiment_parser("test", ["ci"], str(tmp_path)).parse_args(["--student-seconds", "60"])
    profile = ctx.bench_profile.attack_profile
    model = server_model(get_defense("none", transmit="image"), "adapted", profile, 0, None, False,
                         **ctx.student_overrides())
    assert model.train_log["steps"] == 1
    assert student_steps({"train_log": model.train_log}, profile).endswith("(time cap)")

"""Shared pieces of the paper experiments."""

from __future__ import annotations

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

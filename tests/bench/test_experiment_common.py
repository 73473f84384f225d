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

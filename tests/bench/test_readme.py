"""README's measured tables are generated from the committed results (``faceveil report readme``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faceveil.bench.readme import render_readme, update_readme

ROOT = Path(__file__).resolve().parents[2]


def test_readme_matches_the_committed_results():
    """Fails when a README table was edited by hand or a result file changed without regenerating README."""
    text = (ROOT / "README.md").read_text()
    assert "<!-- results:template-inversion -->" in text
    assert render_readme(text, ROOT / "results") == text, "run `faceveil report readme`"


def _results(tmp_path: Path) -> Path:
    from tests.bench.test_verdicts import results

    r = results()
    for c in r["cells"]:
        if c["kind"] == "privacy" and c["status"] == "ok":
            c["setting"] = "none (embedding)"
            c["result"]["attack_ms_per_face"] = 1.5
    (tmp_path / "template-inversion").mkdir()
    (tmp_path / "template-inversion" / "results.json").write_text(json.dumps(r))
    (tmp_path / "template-inversion" / "COMMAND").write_text("faceveil bench --defenses none\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(results()))
    return tmp_path


def test_blocks_are_regenerated_and_checked(tmp_path):
    res = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:template-inversion -->\nSTALE-TEXT\n<!-- /results:template-inversion -->\n"
                      "text\n<!-- results:verdicts -->\n<!-- /results:verdicts -->\n")
    assert update_readme(readme, res, check=True) and "STALE-TEXT" in readme.read_text()  # check does not write
    assert update_readme(readme, res)
    text = readme.read_text()
    assert "STALE-TEXT" not in text and "| nbnet | 100 | 90.0 / 62.0 |" in text and "*random person*" in text
    assert "Command: `faceveil bench --defenses none`" in text and "**broken**" in text
    assert not update_readme(readme, res, check=True)  # idempotent


def test_missing_results_or_unknown_block_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json is missing"):
        render_readme("<!-- results:verdicts -->\n<!-- /results:verdicts -->", tmp_path)
    with pytest.raises(KeyError, match="no renderer"):
        render_readme("<!-- results:nope -->\n<!-- /results:nope -->", tmp_path)


def test_an_experiment_block_is_its_markdown_under_the_readme_section(tmp_path):
    folder = tmp_path / "protection-quick"
    folder.mkdir()
    md = "### Table 1 analogue\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![Fig. 3/4 analogue](advface_fig3_eps.png)\n"
    r = {"profile": "quick", "seed": 0, "cells": [],
         "experiments": {"advface": {"markdown": md, "status": "ok", "seconds": 1800.0, "data": {}, "figures": []}}}
    (folder / "results.json").write_text(json.dumps(r))
    (folder / "COMMAND").write_text("faceveil bench --profile quick --defenses advface --out results/protection-quick\n")
    text = render_readme("<!-- results:advface -->\n<!-- /results:advface -->", tmp_path)
    assert "#### Table 1 analogue" in text and "| 1 | 2 |" in text  # one heading level down
    assert "![Fig. 3/4 analogue](results/protection-quick/advface_fig3_eps.png)" in text  # links into the folder
    assert "Command: `faceveil bench --profile quick --defenses advface --out results/protection-quick`." in text
    r["experiments"]["advface"]["status"] = "failed"
    (folder / "results.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="no finished 'advface' experiment"):
        render_readme("<!-- results:advface -->\n<!-- /results:advface -->", tmp_path)


def test_a_markdown_file_block_embeds_the_committed_file(tmp_path):
    folder = tmp_path / "deepblur-quick"
    with pytest.raises(FileNotFoundError, match="deepblur_experiment_50x10.md is missing"):
        render_readme("<!-- results:deepblur -->\n<!-- /results:deepblur -->", tmp_path)
    folder.mkdir()
    (folder / "deepblur_experiment_50x10.md").write_text("# DeepBlur experiment (quick)\n\n### Table 1 analogue\n\n| m | SSIM |"
                                                         "\n|---|---|\n| blur | 0.6 |\n")
    (folder / "COMMAND").write_text("python bench/deepblur.py tables --profile quick --out results/deepblur-quick\n")
    text = render_readme("<!-- results:deepblur -->\n<!-- /results:deepblur -->", tmp_path)
    assert "#### Table 1 analogue" in text and "| blur | 0.6 |" in text
    assert "DeepBlur experiment (quick)" not in text  # the file's own title: README's section has one
    assert "Command: `python bench/deepblur.py tables --profile quick --out results/deepblur-quick`." in text


def test_advface_table2_block_puts_the_readings_side_by_side(tmp_path):
    d = tmp_path / "advface-table2"
    d.mkdir()
    for bound, acc in (("step", 0.61), ("total", 0.97)):
        row = {"paper": "96.43", "acc_mean": acc, "acc_std": 0.01, "n_pairs": 6000, "metric": "cosine"}
        (d / f"table2-{bound}-quick.json").write_text(json.dumps(
            {"profile": "quick", "bound": bound, "command": f"python bench/advface.py --table2 --bound {bound}",
             "rows": {"AdvFace online (deployed Ψ)": row}}))
    md = render_readme("<!-- results:advface-table2 -->\n<!-- /results:advface-table2 -->", tmp_path)
    assert ("| AdvFace online (deployed Ψ) | 61.00 ± 1.00 (6000 pairs, cosine) | 97.00 ± 1.00 (6000 pairs, cosine) | 96.43 |"
            in md)
    assert "ε per PGD iteration (the paper's), quick shadow | ε as a total ball, quick shadow" in md

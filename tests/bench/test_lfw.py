"""The LFW evaluation path end to end on real pairs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from faceveil.bench.lfw import evaluate_lfw
from faceveil.cli import app


def test_lfw_subset_end_to_end(dlib_model, lfw, tmp_path):
    report = evaluate_lfw(dlib_model, lfw, per_fold=8, progress=False)  # 160 real pairs
    assert report["pairs"] == 160
    euc = next(r for r in report["results"] if r["metric"] == "euclidean")
    assert euc["acc_mean"] >= 0.95  # dlib is ~99.4% on LFW; a broken pipeline is ~50%
    assert report["operating_point"]["fit_on"].startswith("lfw pairsDevTrain")
    assert 0.4 < report["operating_point"]["threshold"] < 0.7  # dlib's documented 0.6


def test_cli_eval_lfw(tmp_path, data_root):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", "lfw", "--per-fold", "5", "--data-dir", str(data_root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "euclidean" in res.output and json.loads(out.read_text())["pairs"] == 100


def test_cli_bad_data_dir(tmp_path):
    res = CliRunner().invoke(app, ["eval", "lfw", "--data-dir", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.slow
def test_full_lfw_accuracy(dlib_model, lfw):
    report = evaluate_lfw(dlib_model, lfw, progress=False)
    euc = next(r for r in report["results"] if r["metric"] == "euclidean")
    # dlib reports 99.38 % on LFW; on the deep-funneled images with our detect-then-align path we
    # measure 98.90 +- 0.28 % (README, "LFW accuracy"): the gap is the image set, not the model
    # (the torch port matches dlib's own descriptors to ~2e-7 in test_dlib_resnet.py).
    assert report["pairs"] == 6000 and euc["acc_mean"] >= 0.985


def test_cli_eval_utility_through_a_defense(tmp_path, data_root):
    """Pixelation with 30-pixel blocks (5x5 blocks per 150-px chip) costs accuracy on real pairs."""
    accs = {}
    for k in ("1", "30"):
        out = tmp_path / f"u{k}.json"
        res = CliRunner().invoke(app, ["eval", "utility", "--defense", "pixelate", "-p", f"k={k}", "--per-fold", "5",
                                       "--data-dir", str(data_root), "--out", str(out)])
        assert res.exit_code == 0, res.output
        r = json.loads(out.read_text())
        assert r["n_pairs"] == 100 and r["server"] == "frozen" and r["config"]["name"] == "pixelate"
        accs[k] = r["acc_mean"]
    assert accs["1"] > 0.95 and accs["30"] < accs["1"] - 0.1
    res = CliRunner().invoke(app, ["eval", "utility", "--defense", "pixelate", "-p", "k=0", "--data-dir", str(data_root)])
    assert res.exit_code != 0 and "k" in res.output

"""PMT experiment: the shallow-model depth ablation (cuts valid and ordered; a tiny real run)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from faceveil.bench.experiments.pmt import DEPTH_CUTS, PMT_BUDGETS, Evaluator, cut_depth, cut_depth_md
from faceveil.bench.plan import ExperimentContext
from faceveil.data.datasets import LFW
from faceveil.defenses.pmt import DEFAULT_CUTS, _shared_recognizer


@pytest.mark.parametrize("model", sorted(DEPTH_CUTS))
def test_depth_cuts_start_at_the_default_and_go_deeper(model):
    order = _shared_recognizer(model).layer_names()
    cuts = DEPTH_CUTS[model]
    assert cuts[0] == DEFAULT_CUTS[model]
    pos = [order.index(c) for c in cuts]
    assert pos == sorted(pos) and len(set(pos)) == len(pos)


def test_cut_depth_rows(data_root, tmp_path):
    """Real PMT at both dlib cuts on 2 LFW probes (3 iterations; cached apart from real runs by its
    config): one row per cut, the deeper map smaller."""
    torch.set_num_threads(1)
    lfw = LFW(data_root)
    budget = dataclasses.replace(PMT_BUDGETS["ci"], ablation_probes=2, iterations=3)
    ctx = ExperimentContext(progress=False, out_dir=tmp_path, lfw=lfw)
    evals = {"dlib": Evaluator(_shared_recognizer("dlib"), lfw, data_root)}
    res = cut_depth(ctx, budget, ["dlib"], evals)
    assert [r["cut"] for r in res["rows"]] == list(DEPTH_CUTS["dlib"]) and res["rows"][0]["default"]
    a, b = (r["shape"] for r in res["rows"])
    assert a == (32, 35, 35) and b[1] < a[1]
    assert all(0 <= r["strict"]["dlib"] <= 1 and -1 <= r["ssim"] <= 1 for r in res["rows"])
    assert "res4" in "\n".join(cut_depth_md(res, ["dlib"]))

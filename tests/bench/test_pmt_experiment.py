"""PMT experiment: the shallow-model depth ablation (cuts valid and ordered; a tiny real run)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from faceveil.bench.experiments.pmt import (
    ABLATIONS,
    DEPTH_CUTS,
    PMT_BUDGETS,
    Evaluator,
    cut_depth,
    cut_depth_md,
    pmt,
    strict_accuracy,
)
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


def test_strict_accuracy_of_eq_10_on_a_constructed_case():
    """Eq. 10 on five probes with a known answer: only a probe whose upload stays its own (cos > κ), is accepted
    against its genuine reference and rejected against its impostor counts — 1 of 5 here, 3 of 5 without the
    own-cosine term (the pair decisions alone)."""
    cos_own = torch.tensor([0.9, 0.1, 0.9, 0.9, 0.19])
    genuine = torch.tensor([True, True, True, False, True])
    impostor = torch.tensor([False, False, True, False, False])
    assert strict_accuracy(cos_own, genuine, impostor, kappa=0.2) == pytest.approx(1 / 5)
    assert strict_accuracy(None, genuine, impostor) == pytest.approx(3 / 5)
    assert strict_accuracy(cos_own, genuine, impostor, kappa=0.05) == pytest.approx(3 / 5)


def test_table_10_is_every_combination_of_algorithm_2s_enhancements():
    """Table 10: augmentation, layer aggregation and the TI kernel on and off, 2^3 distinct PMT configurations, the
    default among them; Table 5 is the TI kernel's."""
    title = next(t for t in ABLATIONS if t.startswith("Table 10"))
    budget = PMT_BUDGETS["ci"]
    cfgs = [pmt(budget, **kw).config() for _, kw in ABLATIONS[title]]
    keys = {(c["augment"] != "none", c["aggregate"] != "", c["kernel"] != "none") for c in cfgs}
    assert len(cfgs) == 8 and len(keys) == 8
    assert pmt(budget).config() in cfgs
    assert any(t.startswith("Table 5") and "TI kernel" in t for t in ABLATIONS)

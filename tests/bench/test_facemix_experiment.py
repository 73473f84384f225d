"""FaceMix's paper experiment on real data (ci profile): the CelebA hold-out, the reconstruction cells and the
attribute probe. The attackers, judged cells and features are cached, so a second run takes seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.bench.experiments import facemix as fm
from faceveil.bench.experiments.common import experiment_context


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, data_root):
    torch.set_num_threads(1)
    return experiment_context("ci", tmp_path_factory.mktemp("facemix"), data=data_root, progress=False)


def test_registered_as_the_facemix_experiment():
    from faceveil.bench.plan import EXPERIMENTS

    EXPERIMENTS.load()
    assert EXPERIMENTS.get("facemix") is fm.run


def test_protections_are_the_papers_baselines():
    """noise: σ = 8 grey levels (8/255 on [0, 1] images); blur: an 8×8 (CelebA) / 16×16 (LFW) box filter."""
    for ds, k in (("celeba", 8), ("lfw", 16)):
        p = dict(fm.protections(ds))
        assert p["noise σ=8"].sigma == 8.0
        blur = p[f"blur {k}×{k} box"]
        assert blur.kind == "box" and blur.k == k
        assert p["FaceMix k=3"].k == 3 and p["unprotected"].transmit == "image"
    x = torch.full((1, 3, 150, 150), 0.5)
    n = dict(fm.protections("lfw"))["noise σ=8"].protect(x, torch.Generator().manual_seed(0))
    assert abs(float((n - x).std()) - 8 / 255) < 0.002


def test_pool_files_are_the_facemix_pool(data_root):
    """The experiment's replica of the public pool's choice gives exactly the chips FaceMix mixes with."""
    from faceveil.data.align import to_tensor

    files = fm.pool_files(data_root)
    d = dict(fm.protections("celeba", data_root))["FaceMix k=3"]
    chips = fm._files_chips(data_root, files, d.recognizer.crop)
    assert len(files) == d.pool_size == 256
    assert torch.equal(to_tensor(chips), d.pool_images())


def test_heldout_identities_are_never_seen_by_the_celeba_attacker(data_root):
    """Held-out CelebA identities: none in FaceMix's pool or in CelebA wild, no image of theirs among the
    attacker's public faces (all of them, and the ci subset), and the evaluation pairs are two different images
    of one held-out person."""
    from faceveil.data.datasets import celeba, public_training_faces

    held = fm.heldout_identities(data_root)
    assert len(held) >= 30
    assert not set(held) & {f.split("/")[0] for f in fm.pool_files(data_root)}
    assert not set(held) & set(celeba(data_root, "wild").identities)
    full = sum(len(ds) for ds in public_training_faces(data_root))
    for limit in (None, 512):
        parts = fm.public_faces_excluding(data_root, limit, 0, set(held))
        seen = {f.split("/")[0] for p in parts if p.name.startswith("celeba") for f in p.files}
        assert not seen & set(held)
        assert sum(len(p) for p in parts) == (full - 30 * len(held) if limit is None else limit)
    ev = fm.celeba_eval(data_root, held, 8, 4, seed=0)
    assert len(ev.a) == 32 and len(set(ev.identity)) == 8 and set(ev.identity) <= set(held)
    for a, b, who in zip(ev.a, ev.b, ev.identity, strict=True):
        assert a != b and a.split("/")[0] == b.split("/")[0] == who
    assert list(fm.grid_positions(ev.identity)) == [0, 4, 8, 12, 16, 20, 24, 28]


def test_unprotected_celeba_attacker_reconstructs_its_own_target(ctx):
    """The reference cell: a cgan trained on unprotected public faces (held-out identities excluded) reconstructs
    held-out CelebA faces closer (dlib) to their own target than to another target far more often than chance
    (50 %), beats the attacker's mean face on SSIM and the judge's COS of another person. A wrong pairing of
    reconstructions and targets, or an attacker that did not learn, fails."""
    held = fm.heldout_identities(ctx.data)
    mb = fm.mix_budget(ctx)
    ev = fm.celeba_eval(ctx.data, held, mb.celeba_ids, mb.celeba_per_id, ctx.seed)
    d = dict(fm.protections("celeba"))["unprotected"]
    budget = fm.attack_budget(ctx)
    attack, path = fm.celeba_attacker(d, budget, ctx, held)
    assert attack.log.steps == budget.max_steps == 40
    r = fm.judge_celeba(attack, path, d, budget, ev, ctx)
    m = r["metrics"]
    assert r["n"] == 32 and [x.shape[0] for x in r["rows"]] == [8, 8, 8]
    assert m["reconstruction"]["closer_to_own"] >= 0.75
    assert m["reconstruction"]["SSIM"] > m["mean face"]["SSIM"] + 0.1
    assert m["reconstruction"]["COS"] > m["random person"]["COS"] + 0.2


def test_attribute_probe_reads_male_from_unprotected_faces(ctx):
    """The probe on frozen dlib features of unprotected CelebA faces, identity-disjoint folds: Male (29 % of the
    labelled images) far above the majority class; every protection measured on the same images and folds."""
    a = fm.attribute_utility(ctx)
    assert a["images"] == 548 and a["identities"] == 149 and a["folds"] == 5
    assert "Male" in a["attributes"] and "Eyeglasses" not in a["attributes"]
    assert set(a["protections"]) == {"unprotected", "FaceMix k=3", "noise σ=8", "blur 8×8 box"}
    male = a["protections"]["unprotected"]["Male"]
    assert male["n"] == 548 and male["accuracy"] > male["majority"] + 0.15 and male["balanced_accuracy"] > 0.85


def test_markdown_reports_a_failed_cell():
    data = {"attack_budget": {"train_images": 512, "max_steps": 40, "epochs": 100, "batch_size": 32, "target_size": 64},
            "budget": {"cgan_lr": 2e-3}, "profile": "ci", "bench_profile": "ci", "seed": 0,
            "lfw": {"cells": {"FaceMix k=3": {"error": "RuntimeError: boom"}}, "baselines": {}},
            "attributes": None, "errors": {"attributes": "ValueError: no labels"}}
    md = fm.markdown(data)
    assert "FAILED: RuntimeError: boom" in md and "Errors: attributes: ValueError: no labels" in md
    assert "U[0.6, 0.8)" in md and "--defenses facemix" in md


@pytest.mark.slow
def test_experiment_runs_end_to_end_at_ci(ctx):
    """The whole experiment at ci (≈4 min on a shared 2-core machine from empty caches): both data sets' tables
    and labelled grids, the attribute table; unprotected reconstructions carry identity on both data sets."""
    r = fm.run(ctx)
    data, md = r["data"], r["markdown"]
    assert data["errors"] == {}
    assert len(r["figures"]) == 2 and all(p.endswith(".png") for p in r["figures"])
    for ds in fm.DATASETS:
        cells = data[ds]["cells"]
        assert set(cells) == {label for label, _ in fm.protections(ds)}
        ref = cells["unprotected"]["reconstruction"]
        assert ref["closer_to_own"] >= 0.75
        assert ref["SAR_II@1e-3"] > data[ds]["baselines"]["random person"]["SAR_II@1e-3"]
        assert all(c["n"] == 32 for c in cells.values())
        assert f"facemix-grid-{ds}.png" in md
    assert "CelebA targets" in md and "LFW targets" in md and "Attribute utility" in md
    male = data["attributes"]["protections"]["unprotected"]["Male"]
    assert male["accuracy"] > male["majority"] + 0.15
    assert np.isfinite([c["reconstruction"]["SSIM"] for ds in fm.DATASETS for c in data[ds]["cells"].values()]).all()

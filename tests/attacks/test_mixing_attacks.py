"""Defense-specific attacks on the mixing defenses, on real LFW chips protected by the real InstaHide and
FaceMix with their real public pool (CelebA): ``instahide-unmix`` and ``facemix-dominant`` recover the
private face, directly and through the bench harness (``run_attack`` at the ci profile).

Thresholds are set with margin below what was measured (seed 0): directly on 32 LFW pair chips,
instahide-unmix finds the public face of every encoding and mean SSIM (64 px) ~0.98, facemix-dominant
~0.99; through the harness at ci (100 LFW same-pairs, 64 px): instahide-unmix SSIM 0.968, COS 0.942,
SRRA pair 100 %, closer-to-own 99 %, dlib SAR I/II @1e-3 100 / 94 %; facemix-dominant SSIM 0.990,
COS 0.964, SRRA pair 100 %, closer-to-own 99 %, SAR I/II 100 / 93 %.
"""

from __future__ import annotations

import pytest
import torch

from faceveil.attacks import get_attack
from faceveil.attacks.base import ThreatModel
from faceveil.bench.privacy import run_attack
from faceveil.context import RunContext
from faceveil.data.align import to_tensor
from faceveil.data.chips import resize
from faceveil.defenses import get_defense
from faceveil.errors import FaceveilDataError
from faceveil.keys import research_generator
from faceveil.metrics.image import ssim


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return to_tensor(lfw_sample[1])  # 24 real LFW chips, 150 px


@pytest.fixture(scope="module")
def instahide(data_root, dlib_model):
    return get_defense("instahide", data=data_root, recognizer=dlib_model)


@pytest.fixture(scope="module")
def facemix(data_root, dlib_model):
    return get_defense("facemix", data=data_root, recognizer=dlib_model)


def test_instahide_unmix_finds_the_public_face_and_lambda(faces, instahide):
    t, lam = instahide.protect_with_coefficients(faces, research_generator(0, 0, 1))
    a = get_attack("instahide-unmix", defense=instahide, target_size=64)
    rec = a.attack(t)
    f = a.found
    # the found public face and coefficient explain every value of |t| with the true face: the pool face is
    # the one mixed in (the coefficient is exact unless the face has no saturated value to pin it)
    b = 2 * instahide.pool_images(150)[f["pool_index"]] - 1
    lam0 = lam[:, :1, None, None].float()
    err = (t.abs() - (lam0 * (2 * faces - 1) + (1 - lam0) * b).abs()).flatten(1).abs().amax(1)
    assert (err < 1e-4).all(), f"wrong public face for encodings {torch.nonzero(err >= 1e-4).flatten().tolist()}"
    assert bool(f["consistent"].all())
    assert (f["lam"] <= lam[:, 0].float() + 1e-4).all()  # the smallest consistent coefficient: a lower bound
    assert float((f["lam"] - lam[:, 0].float()).abs().median()) < 1e-4
    s = ssim(rec, resize(faces, 64), 1.0)
    assert float(s.mean()) > 0.93 and float(s.min()) > 0.7, s
    # the encoding itself, read as an image, is nothing like the face
    assert float(ssim(resize((t + 1) / 2, 64), resize(faces, 64), 1.0).mean()) < 0.2


def test_facemix_dominant_finds_the_public_faces(faces, facemix):
    m, w = facemix.protect_with_weights(faces, research_generator(0, 0, 2))
    a = get_attack("facemix-dominant", defense=facemix, target_size=64)
    rec = a.attack(m)
    assert float((a.found["w"] - w[:, 0].float()).abs().mean()) < 0.02
    s = ssim(rec, resize(faces, 64), 1.0)
    mix = ssim(resize(m, 64), resize(faces, 64), 1.0)
    assert float(s.mean()) > 0.97 and float(s.min()) > 0.9 and float(s.mean()) > float(mix.mean()) + 0.05


def test_defense_specific_attacks_refuse_what_they_cannot_attack(instahide, facemix, data_root, dlib_model):
    with pytest.raises(ValueError, match="written for instahide"):
        get_attack("instahide-unmix", defense=facemix)
    with pytest.raises(ValueError, match="k = 2"):
        get_attack("instahide-unmix", defense=get_defense("instahide", k=3, data=data_root, recognizer=dlib_model))
    a = get_attack("instahide-unmix", defense=instahide, target_size=32)
    with pytest.raises(FaceveilDataError, match="outside the defense's output range"):
        a.attack(torch.full((2, 3, 32, 32), 2.0))
    with pytest.raises(FaceveilDataError, match=r"\[B,3,S,S\]"):
        get_attack("facemix-dominant", defense=facemix).attack(torch.rand(2, 3, 32, 30))
    with pytest.raises(RuntimeError, match="defense="):
        get_attack("facemix-dominant").attack(torch.rand(2, 3, 32, 32))


def test_bench_plan_runs_them_on_their_defense_only(data_root):
    from faceveil.bench.plan import DEFAULT_ATTACKS
    from faceveil.bench.runner import plan_cells

    plan = plan_cells(["instahide", "facemix", "none"], DEFAULT_ATTACKS, data_root)
    by = {}
    for kind, st, a, _, _ in plan:
        if kind == "privacy":
            by.setdefault(st.defense, set()).add(a)
    assert "instahide-unmix" in by["instahide"] and "facemix-dominant" not in by["instahide"]
    assert "facemix-dominant" in by["facemix"] and "instahide-unmix" not in by["facemix"]
    assert not by["none"] & {"instahide-unmix", "facemix-dominant"}
    assert {"ridge", "dn", "cgan"} <= by["instahide"] and {"ridge", "dn", "cgan"} <= by["facemix"]


def _through_harness(defense: str, attack: str, n: int) -> dict:
    ctx = RunContext("ci", seed=0, force=True, progress=False)
    r = run_attack(get_defense(defense), attack, ThreatModel(knowledge="white-box"), ctx, eval_pairs_n=n)
    assert r["attack"]["name"] == attack and r["train_log"] is None and r["threat"]["knowledge"] == "white-box"
    return r["metrics"]


def test_instahide_unmix_through_the_harness():
    """The ci profile's harness on 20 LFW same-pairs (100 in the slow test below)."""
    m = _through_harness("instahide", "instahide-unmix", 20)
    rec, base = m["reconstruction"], m["random person"]
    assert rec["SSIM"] > 0.9 and rec["COS"] > 0.8 and rec["SRRA_pair"] > 0.9 and rec["closer_to_own"] > 0.9
    assert rec["SAR_I@1e-3"] > 0.9 and rec["SAR_II@1e-3"] > 0.75 and base["SAR_I@1e-3"] < 0.1


def test_facemix_dominant_through_the_harness():
    m = _through_harness("facemix", "facemix-dominant", 20)
    rec = m["reconstruction"]
    assert rec["SSIM"] > 0.95 and rec["COS"] > 0.85 and rec["SRRA_pair"] > 0.9 and rec["closer_to_own"] > 0.9
    assert rec["SAR_I@1e-3"] > 0.9 and rec["SAR_II@1e-3"] > 0.75


@pytest.mark.slow
@pytest.mark.parametrize(("defense", "attack"), [("instahide", "instahide-unmix"), ("facemix", "facemix-dominant")])
def test_through_the_harness_on_the_ci_evaluation_set(defense, attack):
    """The ci profile's full evaluation set (100 same-pairs): measured SSIM 0.968 / 0.990, COS 0.94 / 0.96."""
    rec = _through_harness(defense, attack, 100)["reconstruction"]
    assert rec["SSIM"] > 0.93 and rec["COS"] > 0.85 and rec["SRRA_pair"] > 0.95 and rec["closer_to_own"] > 0.95
    assert rec["SAR_I@1e-3"] > 0.95 and rec["SAR_II@1e-3"] > 0.8

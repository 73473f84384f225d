"""AdvFace: the cut, the PGD bound (eqs. 5-6), test-batch BN statistics (Section 4.2), what leaks
where, online / offline paths, the cached shadow model, and (slow) offline vs online accuracy."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from faceveil.attacks import get_attack
from faceveil.data.align import to_tensor
from faceveil.defenses import get_defense
from faceveil.defenses.advface import RES1_FEATURE_STD, AdvFace, batch_statistics
from faceveil.system import ProtectedSystem

SHAPE = (32, 35, 35)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return to_tensor(lfw_sample[1][:8])


def tiny_shadow(seed: int = 0) -> torch.nn.Module:
    """An untrained small resrec S (32x32 output) with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = get_attack("resrec", target_size=32, width=4, n_blocks=1).build(SHAPE)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def make(dlib_model, shadow=None, **kw) -> AdvFace:
    d = get_defense("advface", shadow_model=shadow if shadow is not None else tiny_shadow(), recognizer=dlib_model, **kw)
    assert isinstance(d, AdvFace)
    return d


def test_cut_feature_shape_and_parts(faces, dlib_model):
    d = make(dlib_model, iterations=2)
    assert d.feature_shape == SHAPE and d.stored_shape() == SHAPE
    assert d.storage_bytes() == 4 * 32 * 35 * 35
    E, P = dlib_model.split("res1")
    assert [type(m).__name__ for m in E].count("Conv2d") == 1 and sum(
        isinstance(m, torch.nn.Conv2d) for m in E.modules()) == 3  # conv1 + res1's two convs
    with torch.no_grad():
        z = d.protect(faces)
        torch.testing.assert_close(z, E(faces), rtol=0, atol=0)
        torch.testing.assert_close(d.frozen_server()(z), dlib_model(faces), rtol=1e-5, atol=1e-5)
    assert d.client_network() is d._parts[0]
    assert {p.name for p in AdvFace.params()} >= {"at", "shadow", "alpha", "eps", "iterations", "eps_relative", "mode"}
    desc = d.describe()
    assert desc["feature_shape"] == list(SHAPE) and desc["eps_abs"] == pytest.approx(0.2)
    assert "shadow_model" in d.config()  # an injected shadow is fingerprinted into the cache keys


def test_channel_leak_is_plain_z_database_is_not(faces, dlib_model):
    d = make(dlib_model, iterations=3)
    plain = get_defense("none", transmit="res1", recognizer=dlib_model)
    sysm = ProtectedSystem.frozen(d)
    with torch.no_grad():
        ch = sysm.channel(faces)
    torch.testing.assert_close(ch, plain.protect(faces), rtol=0, atol=0)
    db = sysm.enroll(faces)  # aligned chips through the client and the server's protect_stored
    assert db.shape == ch.shape and not db.requires_grad
    assert (db - ch).abs().mean() > 0.1


def test_pgd_respects_the_bound_and_moves_away_from_the_reconstruction(faces, dlib_model):
    S = tiny_shadow()
    d = make(dlib_model, S, iterations=8, bound="total")
    z = d.protect(faces)
    x_rec, z0 = d.reconstruct_and_reencode(z)
    adv = d.protect_stored(z)
    delta = (adv - z0).abs()
    assert delta.max() <= 0.2 + 1e-6  # eq. 6: within ε of the starting point z̃
    assert (delta > 0.2 - 1e-5).float().mean() > 0.5  # α = ε: most coordinates sit on the boundary
    with torch.no_grad(), batch_statistics(S):
        assert (S(adv) - x_rec).abs().mean() > (S(z0) - x_rec).abs().mean() + 0.01  # ascent of ‖S(z) − x̃‖₁
    # ε = 0 stores z̃ = E(S(z)) itself; relative ε scales by the res1 feature std
    torch.testing.assert_close(make(dlib_model, S, eps=0.0).protect_stored(z), z0, rtol=0, atol=0)
    rel = make(dlib_model, S, iterations=3, eps=0.1, alpha=0.05, eps_relative=True, bound="total")
    assert rel.eps_abs == pytest.approx(0.1 * RES1_FEATURE_STD) and rel.step_abs == pytest.approx(0.05 * RES1_FEATURE_STD)
    assert (rel.protect_stored(z) - z0).abs().max() <= 0.1 * RES1_FEATURE_STD + 1e-6


def test_per_iteration_pgd_bounds_each_step_not_the_total(faces, dlib_model, monkeypatch):
    """``bound="step"`` (the paper's eqs. 5-6): every iteration moves each coordinate by at most ε (with α = ε by
    exactly ε where the gradient is non-zero), and the total is not clipped: after 8 iterations features lie far
    outside the ε-ball the total reading keeps them in, still ascending ‖S(z) − x̃‖₁."""
    S = tiny_shadow()
    step, total = make(dlib_model, S, iterations=8), make(dlib_model, S, iterations=8, bound="total")
    z = step.protect(faces)
    x_rec, z0 = step.reconstruct_and_reencode(z)
    iterates = []
    real_minimum = torch.minimum

    def record(a, b):  # the clip's last call of each iteration: the new iterate
        out = real_minimum(a, b)
        iterates.append(out.detach().clone())
        return out

    monkeypatch.setattr(torch, "minimum", record)
    a_step = step.adversarial_features(z)
    monkeypatch.setattr(torch, "minimum", real_minimum)
    assert len(iterates) == 8 and torch.equal(iterates[-1], a_step)
    moves = [(b - a).abs() for a, b in zip([z0, *iterates[:-1]], iterates, strict=True)]
    assert max(float(m.max()) for m in moves) <= 0.2 + 1e-6  # ‖z_{t+1} − z_t‖∞ ≤ ε at every step
    assert all((m > 0.2 - 1e-5).float().mean() > 0.5 for m in moves)  # most coordinates take the full step α = ε
    assert (a_step - z0).abs().max() > 0.2 * 3  # the total is not clipped to ε ...
    a_total = total.protect_stored(z)
    assert (a_total - z0).abs().max() <= 0.2 + 1e-6  # ... as the total reading's is
    with torch.no_grad(), batch_statistics(S):
        assert (S(a_step) - x_rec).abs().mean() > (S(z0) - x_rec).abs().mean() + 0.01  # still an ascent
    assert step.config()["bound"] == "step" and "bound" not in total.config()  # the default; total keys unchanged


def test_bf16_pgd_respects_the_bound_and_matches_fp32_objective(faces, dlib_model):
    S = tiny_shadow()
    d32, d16 = (make(dlib_model, S, iterations=8, bound="total"),
                make(dlib_model, S, iterations=8, precision="bf16", bound="total"))
    z = d32.protect(faces)
    x_rec, z0 = d32.reconstruct_and_reencode(z)
    a32, a16 = d32.protect_stored(z), d16.protect_stored(z)
    assert a16.dtype == torch.float32 and (a16 - z0).abs().max() <= 0.2 + 1e-6  # step and clip stay in fp32
    with torch.no_grad(), batch_statistics(S):
        obj = {k: (S(a) - x_rec).abs().mean().item() for k, a in (("fp32", a32), ("bf16", a16), ("start", z0))}
    assert obj["bf16"] > obj["start"] + 0.01  # bf16 gradients still ascend ‖S(z) − x̃‖₁ ...
    assert obj["bf16"] == pytest.approx(obj["fp32"], rel=0.05)  # ... as far as fp32 does
    assert "precision" not in d32.config() and d16.config()["precision"] == "bf16"  # fp32 keys unchanged


def test_bn_uses_test_batch_statistics_and_keeps_running_stats(faces, dlib_model):
    S = tiny_shadow()
    d = make(dlib_model, S, iterations=3)
    z = d.protect(faces)
    before = {k: v.clone() for k, v in S.state_dict().items()}
    seen = {}
    h = S[0].register_forward_hook(lambda m, a, out: seen.__setitem__("norm", out.detach()))  # InputNorm (BN, no affine)
    with torch.no_grad():
        eval_out = S(z)
        eval_norm = seen["norm"]
        with batch_statistics(S):
            batch_out = S(z)
    h.remove()
    # inside the context the input BN standardises with this batch's mean/var, not the running ones
    torch.testing.assert_close(seen["norm"].mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-4, rtol=0)
    assert eval_norm.mean(dim=(0, 2, 3)).abs().max() > 0.1
    assert (batch_out - eval_out).abs().mean() > 1e-3
    d.protect_stored(z)
    after = S.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert not any(m.training for m in S.modules())  # eval mode restored
    # consequence: a face's stored features depend on its batch-mates; not with running stats
    a = d.protect_stored(z[:4])[0]
    b = d.protect_stored(z[[0, 5, 6, 7]])[0]
    assert (a - b).abs().max() > 1e-3
    r = make(dlib_model, S, iterations=3, bn_batch_stats=False)
    torch.testing.assert_close(r.protect_stored(z[:4])[0], r.protect_stored(z[[0, 5, 6, 7]])[0], atol=1e-4, rtol=0)


def test_online_and_offline_paths(faces, dlib_model):
    on = make(dlib_model, iterations=2)
    off = on.with_mode("offline")
    assert off.mode == "offline" and on.mode == "online" and off.shadow_network() is on.shadow_network()
    assert not on.needs_adapted_server and off.needs_adapted_server
    z = on.protect(faces)
    assert torch.equal(on.probe_transform(z), z)
    stored = on.protect_stored(z)
    torch.testing.assert_close(off.probe_transform(z), stored, rtol=0, atol=0)
    torch.testing.assert_close(off.server_training_input(faces), stored, rtol=0, atol=0)
    # the ProtectedSystem path: enrolment embeds stored features, probes embed plain z (online)
    sysm = ProtectedSystem.frozen(on)
    e_probe = sysm.embed_protected(z, stored=False)
    torch.testing.assert_close(e_probe, dlib_model(faces), rtol=1e-5, atol=1e-5)
    assert ProtectedSystem.frozen(off).embed_protected(z, stored=False).shape == (8, 128)  # runs PGD under no_grad


def test_memo_returns_exactly_the_recomputed_features(faces, dlib_model):
    d = make(dlib_model, iterations=2)
    z = d.protect(faces[:4])
    ref = d.protect_stored(z)
    d.enable_memo(10)
    a, b = d.protect_stored(z), d.protect_stored(z)
    assert torch.equal(a, ref) and torch.equal(b, ref) and len(d._memo) == 1


def test_offline_student_starts_as_psi(faces, dlib_model):
    from faceveil.train.advface_student import ServerPartStudent

    st = make(dlib_model).make_student(torch.zeros(*SHAPE), None)
    assert isinstance(st, ServerPartStudent)
    with torch.no_grad():
        torch.testing.assert_close(st(dlib_model.split("res1")[0](faces)), dlib_model(faces), rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in st.parameters())
    assert not any(p.requires_grad for p in dlib_model.parameters())  # the teacher is untouched


def test_whitebox_forward(faces, dlib_model):
    d = make(dlib_model, iterations=2)
    assert d.whitebox_forward(faces[:2], "channel").shape == (2, *SHAPE)
    x = faces[:2].clone().requires_grad_(True)
    d.whitebox_forward(x, "database").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,msg", [
    ({"shadow": "dn"}, "shadow"), ({"mode": "both"}, "mode"), ({"eps": -0.1}, "eps"), ({"alpha": float("nan")}, "alpha"),
    ({"iterations": -1}, "iterations"), ({"profile": "huge"}, "profile"), ({"at": "embedding"}, "layer name"),
    ({"at": "res99"}, "unknown layer"), ({"shadow_images": 10}, "shadow_images"), ({"precision": "fp16"}, "precision"),
    ({"bound": "ball"}, "bound"),
])
def test_parameter_validation(kw, msg, dlib_model):
    with pytest.raises(ValueError, match=msg):
        get_defense("advface", recognizer=dlib_model, **kw)


def test_shadow_is_trained_once_and_cached(faces, dlib_model):
    """S trained by the server on public faces with L1 (eq. 3), ci profile with 128 faces."""
    d = get_defense("advface", recognizer=dlib_model, profile="ci", shadow_images=128, iterations=2)
    t0 = time.perf_counter()
    S = d.shadow_network(progress=False)
    assert d.shadow_path().is_file()
    d2 = get_defense("advface", recognizer=dlib_model, profile="ci", shadow_images=128, iterations=2)
    S2 = d2.shadow_network(progress=False)
    assert all(torch.equal(a, b) for a, b in zip(S.state_dict().values(), S2.state_dict().values(), strict=True))
    assert not any(p.requires_grad for p in S2.parameters())
    out = d2.protect_stored(d2.protect(faces[:4]))
    assert out.shape == (4, *SHAPE) and torch.isfinite(out).all()
    assert time.perf_counter() - t0 < 80


def _offline_measured(lfw, dlib_model, bound: str) -> dict:
    """Online vs offline on 200 LFW pairs with the quick-profile shadow (600 steps), the offline server
    retrained as in the quick bench (500 public faces x 2 flips, 12 epochs; step budgets only, so the
    result does not depend on the machine's load), plus what the retraining optimises, on held-out faces
    (the enrolment side of the pairs): the cosine of the server's embeddings of their adversarial
    features to the teacher's clean embeddings. About 10 minutes on one core with the shadow cached."""
    import torch.nn.functional as F

    from faceveil.bench.build import bench_system, pair_embeddings
    from faceveil.bench.lfw import subset_pairs, verification
    from faceveil.train.advface_student import adapted_server_part

    on = get_defense("advface", profile="quick", bound=bound).enable_memo(2000)
    off = on.with_mode("offline")
    student = adapted_server_part(off, "res1", profile="ci", train_images=500, epochs=12, max_seconds=None, progress=False)
    pairs = subset_pairs(lfw.pairs("pairs"), 10)
    accs = {}
    for name, d, server in (("online", on, None), ("offline frozen", off, None), ("offline", off, student)):
        sysm = bench_system(d, "adapted" if server is not None else "frozen", model=server, metric="cosine")
        ea, eb, _ = pair_embeddings(sysm, lfw, pairs)
        accs[name] = verification(ea, eb, pairs, name, metrics=("cosine",))[0].acc_mean
    chips, _ = lfw.dataset().subset(np.unique(pairs.a)).chips(on.recognizer.crop, progress=False)
    x = to_tensor(chips)
    _, psi = dlib_model.split("res1")
    with torch.no_grad():
        clean = dlib_model(x)
        adv = torch.cat([off.protect_stored(off.protect(x[s : s + 32])) for s in range(0, len(x), 32)])
        cos = {"frozen": float(F.cosine_similarity(psi(adv), clean).mean()),
               "retrained": float(F.cosine_similarity(student.eval()(adv), clean).mean())}
    print("\nLFW 200 pairs (cosine): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accs.items())
          + f"; held-out cos to clean embeddings: frozen {cos['frozen']:.4f}, retrained {cos['retrained']:.4f}")
    assert np.isfinite(list(accs.values())).all() and np.isfinite(list(cos.values())).all()
    return {"acc": accs, "cos": cos}


@pytest.fixture(scope="module")
def offline_measured(lfw, dlib_model) -> dict:
    """:func:`_offline_measured` with ε read as a total ball (measured 5 Dec)."""
    return _offline_measured(lfw, dlib_model, "total")


@pytest.mark.slow
def test_offline_retraining_brings_adversarial_embeddings_closer_to_clean(offline_measured):
    """Section 4.4's mechanism: the server part retrained on stored adversarial features maps held-out
    adversarial features closer to the clean embeddings than the deployed Ψ does (5 Dec: 0.9657 vs 0.9629
    on these 200 pairs' enrolment faces; offline accuracy 95.5 % retrained vs 94.0 % frozen, online 97.0 %).
    Before the body's rate was lowered to lr/50 the retrained server was *below* the frozen one (0.954)."""
    assert offline_measured["cos"]["retrained"] > offline_measured["cos"]["frozen"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "with ε read as a total ball, the paper's offline > online (97.78 vs 96.43) is not reproduced with CPU-budget "
    "retraining (on all 6,000 pairs: offline 95.22, online 96.63): both sides of an "
    "offline comparison carry the adversarial perturbation, and retraining on hundreds of public faces moves held-out "
    "adversarial embeddings only from cos 0.962 to 0.964-0.968 of the clean ones. Measured 5 Dec on 600 LFW pairs "
    "(quick shadow, cosine): online 96.5 %, offline frozen 94.0 %, offline retrained on 500 / 1,500 faces 93.3-95.7 % "
    "(README, AdvFace). Strict: a pass means the finding changed."))
def test_offline_beats_online_on_lfw_subset(offline_measured):
    """The paper's Section 4.4 claim, measured: offline (Ψ retrained on stored adversarial features, probes
    converted) vs online (deployed Ψ, adversarial enrolment, plain probes) on 200 LFW pairs, with ε read as a total
    ball (on all 6,000 pairs: offline 95.22 %, online 96.63 %, 5 Dec)."""
    assert offline_measured["acc"]["offline"] > offline_measured["acc"]["online"]


@pytest.mark.slow
def test_offline_beats_online_with_the_papers_reading_of_eps(lfw, dlib_model):
    """With ε bounding each PGD iteration (eqs. 5-6, the default) the paper's ordering holds — at a far lower
    level: on all 6,000 LFW pairs offline (Ψ retrained) 67.12 ± 1.87 % vs online 59.83 ± 2.48 %, frozen offline
    55.40 % (6 Dec, `python bench/advface.py --table2 --bound step`, results/advface-table2; the experiment's 200
    pairs, one metric: 63.5 vs 60.5). Both sides of an offline comparison carry the perturbation, so the retrained
    server only has to map adversarial features onto each other; online must match them to plain probes."""
    m = _offline_measured(lfw, dlib_model, "step")
    assert m["acc"]["offline"] > m["acc"]["online"]
    assert m["acc"]["offline"] < 0.9  # far from the paper's 97.78: the per-iteration drift costs the accuracy

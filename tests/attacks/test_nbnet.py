"""``nbnet``: NbNet decoder + identity loss through the public recogniser, trained on public and GAN faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.attacks import Budget, PairSource, get_attack
from faceveil.attacks.base import ThreatModel, attack_class, profile_budget
from faceveil.attacks.nbnet import NbNet, random_affine, recognizer_terms
from faceveil.data.align import to_tensor
from faceveil.data.chips import recrop, resize
from faceveil.metrics.identity import closer_to_own
from faceveil.models.base import CropSpec

CROP = CropSpec(150, 0.25)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_declares_synthetic_faces_and_validates():
    assert attack_class("nbnet").needs == {"pairs", "synthetic"}
    a = get_attack("nbnet", target_size=64)
    assert a.identity_weight > 0 and a.synthetic_count(1000) == 1000
    assert get_attack("nbnet", synthetic_max=300).synthetic_count(1000) == 300
    # an expensive client's budget of 1,000 protected faces: half public, half GAN faces (at most synthetic_max)
    assert a.public_share(1000) == 500 and get_attack("nbnet", synthetic_max=300).public_share(1000) == 700
    assert get_attack("nbnet", synthetic_ratio=0).public_share(1000) == 1000 == get_attack("dn").public_share(1000)
    assert get_attack("nbnet", synthetic_ratio=0).synthetic_chips(CROP, 1000, 0) is None
    chips, desc = get_attack("nbnet", synthetic_ratio=0.5).synthetic_chips(CropSpec(112, 0.25), 6, 3)
    assert chips.shape == (3, 112, 112, 3) and desc["n"] == 3 and desc["seed"] == 3
    for bad in ({"identity_weight": -1}, {"jitter": float("nan")}, {"identity_batch": 0}, {"synthetic_max": -1},
                {"generator": "stylegan"}, {"linear_dim": 0}):
        with pytest.raises(ValueError):
            NbNet(**bad)


def test_the_bench_runs_nbnet_at_quick_and_full_only():
    """nbnet is in the suite of every setting at the quick and full profiles; the ci bench stays cheap."""
    from faceveil.bench.plan import BENCH_PROFILES, DEFAULT_ATTACKS, default_attacks

    assert "ridge" in DEFAULT_ATTACKS and "nbnet" not in DEFAULT_ATTACKS
    assert default_attacks(BENCH_PROFILES["ci"]) == DEFAULT_ATTACKS
    assert default_attacks(BENCH_PROFILES["quick"]) == DEFAULT_ATTACKS  # make run stays short (issue 34)
    assert default_attacks(BENCH_PROFILES["full"]) == (*DEFAULT_ATTACKS, "nbnet", "ganinv", "ganinv-es")


def test_recogniser_terms_work_in_its_crop_geometry(lfw_sample, dlib_model):
    """A reconstruction is compared in the recogniser's crop at the target size: the identity term of a
    112-px copy of a chip against the chip is small (same person, same geometry), that of another
    geometry (the independent judge's wider crop) or another person is not; gradients reach the pixels."""
    _, chips = lfw_sample
    x = to_tensor(chips[:8])
    t = resize(x, 112)
    wrong = resize(recrop(x, CROP, CropSpec(150, 0.46)), 112)
    same, _ = recognizer_terms(dlib_model, t, x, None)
    other, _ = recognizer_terms(dlib_model, t, x.roll(1, 0), None)
    shifted, _ = recognizer_terms(dlib_model, wrong, x, None)
    assert same.max() < 0.02 and other.min() > 2 * same.max() and shifted.mean() > 3 * same.mean()
    out = resize(x, 64).clone().requires_grad_(True)
    theta = random_affine(8, 0.05, torch.Generator().manual_seed(0))
    ident, perc = recognizer_terms(dlib_model, out, x.roll(1, 0), "res1", theta)
    (ident.mean() + perc.mean()).backward()
    assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert ident.shape == perc.shape == (8,)
    with torch.no_grad():  # the transform moves both sides: no change of person
        moved, _ = recognizer_terms(dlib_model, t, x, None, theta)
    assert moved.max() < 0.05


def test_identity_loss_decreases_during_training(lfw_sample, dlib_model):
    """On 24 real faces and their dlib templates, the cosine distance of the reconstructions' dlib embeddings to
    their sources' falls in 30 steps (measured: 0.148 -> 0.085, mean of the first and last five steps)."""
    _, chips = lfw_sample
    x = to_tensor(chips)
    attack = NbNet(target_size=32, width=8, identity_weight=1.0, perceptual_weight=0.0, identity_batch=8, synthetic_ratio=0,
                   jitter=0.0, linear_start=False, seed=0)
    budget = Budget(epochs=100, max_steps=30, batch_size=8, lr=3e-3, target_size=32)
    attack.fit(PairSource(resize(x, 32), dlib_model.embed(x), seed=0), budget, progress=False)
    ident = attack.term_log["identity"]
    assert len(ident) == 30 and len(attack.term_log["pixel"]) == 30 and attack.term_log["perceptual"] == []
    first, last = np.mean(ident[:5]), np.mean(ident[-5:])
    assert last < 0.7 * first, (first, last)


@pytest.fixture(scope="module")
def trained(data_root, lfw, dlib_model):
    """``dn`` and ``nbnet`` (same decoder width, same step budget) and the ``ridge`` floor trained on the dlib
    embeddings of 384 public faces (nbnet: plus 384 GAN faces), judged on 100 LFW pair images by
    closer-to-own."""
    from faceveil.bench.privacy.judging import eval_pairs
    from faceveil.data.datasets import public_chips

    torch.manual_seed(0)
    chips = public_chips(data_root, CROP, 384, 0, False)
    ia, _ = eval_pairs(lfw, 100)
    lfw_chips, _ = lfw.dataset().subset(ia).chips(CROP, progress=False)
    x_eval = to_tensor(lfw_chips)
    e_eval = dlib_model.embed(x_eval)
    budget = Budget(epochs=100, max_steps=60, batch_size=32, lr=3e-3, target_size=64)
    out = {}
    for name, kw in (("ridge", {}), ("dn", {"width": 16}), ("nbnet", {"width": 16, "identity_batch": 8})):
        attack = get_attack(name, target_size=64, seed=0, **kw)
        extra = attack.synthetic_chips(CROP, len(chips), 0)
        c = chips if extra is None else np.concatenate([chips, extra[0]])
        x = to_tensor(c)
        attack.fit(PairSource(resize(x, 64), dlib_model.embed(x), seed=0), budget, progress=False)
        recon = attack.attack(e_eval)
        e_rec = dlib_model.embed(resize(recon, 150).clamp(0, 1))
        out[name] = (attack, float(closer_to_own(e_rec, e_eval, "euclidean", 0).float().mean()))
    out["mean face"] = float(closer_to_own(dlib_model.embed(resize(resize(to_tensor(chips), 64).mean(0, keepdim=True), 150))
                                           .expand(len(e_eval), -1), e_eval, "euclidean", 0).float().mean())
    return out


@pytest.mark.slow
def test_nbnet_beats_dn_and_the_mean_face_on_closer_to_own(trained):
    """A small budget (384 public faces, 60 steps, ~2.5 min on one core): the identity term lifts closer-to-own
    above the pixel-loss-only decoder's; the linear floor is strong here (ridge closer-to-own ~0.98 on these
    100 images), nbnet beats it at the ci budget (test_nbnet_beats_ridge_at_the_ci_budget)."""
    nb, ridge, dn, mean = trained["nbnet"][1], trained["ridge"][1], trained["dn"][1], trained["mean face"]
    assert mean <= 0.6 and dn > mean and ridge > mean
    assert nb > dn + 0.05, (nb, ridge, dn, mean)
    ident = trained["nbnet"][0].term_log["identity"]
    assert len(ident) == 60 and np.mean(ident[-10:]) < 0.75 * np.mean(ident[:10])


def test_bench_gives_nbnet_synthetic_faces(monkeypatch, tmp_path):
    """train_attacker appends the attack's GAN faces to the public faces before the client protects them,
    and keys the attacker set by them; an attack that does not declare the need gets none."""
    from faceveil.attacks.base import ReconstructionAttack
    from faceveil.bench.privacy import leaks, run
    from faceveil.context import RunContext
    from faceveil.defenses import get_defense

    real = np.zeros((8, 150, 150, 3), np.uint8)
    monkeypatch.setattr(run, "public_chips", lambda *a, **k: real)
    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path))
    seen: dict[str, tuple] = {}
    orig = leaks.attacker_source

    def spy(*a, **k):
        seen["call"] = (len(a[3]), k.get("synthetic"))
        return orig(*a, **k)

    class Stop(Exception):
        pass

    def stop(self, source, *a, **k):
        seen["pairs"] = (len(source), tuple(source.sample_shape()))
        raise Stop

    monkeypatch.setattr(run, "attacker_source", spy)
    monkeypatch.setattr(ReconstructionAttack, "fit_and_save", stop)
    budget = profile_budget("ci", train_images=8)
    for name, n, synthetic in (("nbnet", 16, True), ("dn", 8, False)):
        with pytest.raises(Stop):
            run.train_attacker(get_defense("none", transmit="embedding"), name, ThreatModel(), budget,
                               RunContext("ci", progress=False, force=True))
        assert seen["pairs"] == (n, (128,)) and seen["call"][0] == n
        assert (seen["call"][1] is not None) == synthetic
        if synthetic:
            assert seen["call"][1]["n"] == 8


def test_an_expensive_client_shares_its_budget_with_the_gan_faces(monkeypatch):
    """A client sized to a protection-time budget (DeepBlur, ~0.5-0.9 s/face) protects as many faces for
    nbnet as for dn: half of them public, half GAN faces; the set's cache key records both counts."""
    from faceveil.bench.privacy import run
    from faceveil.context import RunContext
    from faceveil.defenses import get_defense

    asked: list[int | None] = []

    class Stop(Exception):
        pass

    def chips(data, crop, limit, *a, **k):
        asked.append(limit)
        return np.zeros((limit, crop.size, crop.size, 3), np.uint8)

    def stop(*a, **k):
        asked.append((len(a[3]), k["synthetic"]))
        raise Stop

    monkeypatch.setattr(run, "public_chips", chips)
    monkeypatch.setattr(run, "attacker_source", stop)
    d = get_defense("deepblur")
    assert d.protect_ms_hint > 0
    with pytest.raises(Stop):
        run.train_attacker(d, "nbnet", ThreatModel(), profile_budget("ci", train_images=200),
                           RunContext("ci", progress=False, force=True))
    assert asked[0] == 100 and asked[1][0] == 200 and asked[1][1]["public"] == 100 and asked[1][1]["n"] == 100


def test_training_starts_from_the_ridge_floor(lfw_sample, dlib_model):
    """With linear_start the network is the ridge decoder plus a residual that starts at exactly zero."""
    _, chips = lfw_sample
    x = to_tensor(chips)
    emb = dlib_model.embed(x)
    src = PairSource(resize(x, 32), emb, seed=0)
    ridge = get_attack("ridge", target_size=32, max_dim=512).fit(src, Budget(epochs=1, batch_size=8, target_size=32),
                                                                 progress=False)
    nb = NbNet(target_size=32, width=8, synthetic_ratio=0)
    nb._base = ridge.net
    net = nb.build((128,)).eval()
    with torch.no_grad():
        assert torch.equal(net(emb), ridge.net(emb))
    assert not isinstance(NbNet(target_size=32, linear_start=False).build((128,)), type(net))


class _Killable(PairSource):
    """A PairSource that raises KeyboardInterrupt when epoch ``stop_at`` begins (a killed process)."""

    def __init__(self, targets, protected, stop_at: int | None = None) -> None:
        super().__init__(targets, protected=protected, seed=2)
        self.stop_at, self.epochs = stop_at, []

    def batches(self, epoch: int, batch_size: int):
        if epoch == self.stop_at:
            raise KeyboardInterrupt("killed")
        self.epochs.append(epoch)
        yield from super().batches(epoch, batch_size)


def test_training_resumes_from_its_checkpoint_exactly(lfw_sample, dlib_model, tmp_path):
    """nbnet with every term (identity, perceptual, jitter) on 24 real faces: a run killed after two epochs and
    resumed through fit_and_save ends with the uninterrupted run's network and loss terms, without training
    the first two epochs again; a checkpoint of another configuration is refused."""
    _, chips = lfw_sample
    x = to_tensor(chips)
    targets, emb = resize(x, 32), dlib_model.embed(x)
    budget = Budget(epochs=4, batch_size=8, lr=2e-3, target_size=32)
    kw = {"target_size": 32, "width": 8, "identity_batch": 4, "perceptual_weight": 0.1, "synthetic_ratio": 0, "seed": 1}
    ref = NbNet(**kw).fit(_Killable(targets, emb), budget, progress=False)
    ckpt = tmp_path / "nbnet.ckpt"
    with pytest.raises(KeyboardInterrupt):
        NbNet(**kw).fit(_Killable(targets, emb, stop_at=2), budget, progress=False, checkpoint=ckpt,
                        checkpoint_seconds=0)
    assert ckpt.is_file()
    src = _Killable(targets, emb)
    resumed = NbNet(**kw).fit_and_save(src, budget, tmp_path / "nbnet.pt", progress=False)
    assert src.epochs == [2, 3] and not ckpt.exists()
    assert resumed.log.steps == ref.log.steps == 12 and resumed.log.losses == ref.log.losses
    assert resumed.term_log == ref.term_log and len(ref.term_log["perceptual"]) == 12
    assert all(torch.equal(p, q) for p, q in zip(ref.net.state_dict().values(), resumed.net.state_dict().values(),
                                                  strict=True))
    loaded = NbNet(**kw).load(tmp_path / "nbnet.pt")
    assert torch.equal(loaded.attack(emb[:4]), resumed.attack(emb[:4]))
    with pytest.raises(KeyboardInterrupt):
        NbNet(**kw).fit(_Killable(targets, emb, stop_at=1), budget, progress=False, checkpoint=ckpt,
                        checkpoint_seconds=0)
    with pytest.raises(ValueError, match="another configuration"):
        NbNet(**{**kw, "identity_weight": 0.5}).fit(_Killable(targets, emb), budget, progress=False, checkpoint=ckpt)


@pytest.mark.slow
def test_nbnet_beats_ridge_at_the_ci_budget(tmp_path):
    """Must show (issue 32): the bench's attack cell on unprotected 128-D dlib embeddings, judged like the ridge
    floor (tests/bench/test_sar.py: ci profile, 3,000 public faces, 100 LFW same-pairs). nbnet at the ci
    budget with a fixed step count instead of its wall-time guard (150 steps, ~4 min on one core: its identity
    term runs dlib forward and backward) is at least as close to its own source as ridge (both ~99 %: the
    metric saturates on 100 pairs) and far closer than dn, and passes the deployed recogniser at its FMR 1e-3
    and 1e-4 thresholds more often than ridge (measured: SAR type I 91 % vs 76 % at 1e-3, 51 % vs 30 % at 1e-4)."""
    from faceveil.bench.privacy import run_attack
    from faceveil.context import RunContext
    from faceveil.defenses import get_defense

    torch.set_num_threads(1)
    d, ctx = get_defense("none", transmit="embedding"), RunContext("ci", progress=False, out_dir=tmp_path)
    steps = profile_budget("ci", max_steps=150, max_seconds=None)
    res = {a: run_attack(d, a, ThreatModel(), ctx, budget=b)
           for a, b in (("ridge", None), ("dn", steps), ("nbnet", steps))}
    m = {a: r["metrics"]["reconstruction"] for a, r in res.items()}
    assert m["nbnet"]["closer_to_own"] >= max(m["ridge"]["closer_to_own"], m["dn"]["closer_to_own"] + 0.1), m
    assert m["nbnet"]["closer_to_own"] >= 0.95
    for k in ("SAR_I@1e-3", "SAR_I@1e-4", "SRRA_same_image"):
        assert m["nbnet"][k] > m["ridge"][k], (k, m)
    assert m["nbnet"]["SAR_I@1e-3"] >= m["ridge"]["SAR_I@1e-3"] + 0.05
    assert res["nbnet"]["train_log"]["steps"] == 150

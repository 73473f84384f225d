"""GAN-prior template inversion (faceveil.attacks.ganinv) on real LFW faces, dlib's 128-D embeddings and the
pretrained DCGAN of gan-face-generate: the mapping trains, the per-target latent refinement (Vendrow & Vendrow
2021) lowers the embedding distance to the target below the mapping's start and a random latent's, and the
query-only search (Dong et al. 2023) lowers the system's match distance within its query budget."""

from __future__ import annotations

import math

import pytest
import torch

from faceveil.attacks import Budget, PairSource, get_attack
from faceveil.attacks.base import ThreatModel, attack_cache_path
from faceveil.attacks.ganinv import GANInversion, GANInversionES, GANMapping, QueryOracle, sphere
from faceveil.bench.privacy.run import query_oracle, whitebox_map
from faceveil.data.align import to_tensor
from faceveil.data.chips import chip_images
from faceveil.data.datasets import public_chips
from faceveil.defenses import get_defense
from faceveil.errors import FaceveilDataError

S = 64  # the attack's output size (the ci profile's)
#: a small mapping that trains in seconds: 96 public faces, 16 GAN samples per step, 4 + 4 through the recogniser
SMALL = dict(hidden=64, depth=2, gan_pairs=512, gan_batch=16, id_batch=4)


@pytest.fixture(scope="module")
def unprotected():
    """The unprotected system leaking dlib embeddings: (defense, its black-box client, the white-box map)."""
    torch.set_num_threads(1)
    d = get_defense("none", transmit="embedding")
    threat = ThreatModel()
    from faceveil.bench.privacy.leaks import leak_fn

    return d, leak_fn(d, threat), whitebox_map(d, threat)


@pytest.fixture(scope="module")
def targets(lfw_sample, dlib_model):
    """8 LFW faces (150-px dlib chips) and their dlib embeddings (what the unprotected system stores)."""
    _, chips = lfw_sample
    x = to_tensor(chips[:: 3][:8])
    with torch.no_grad():
        return x, dlib_model.embed(x)


@pytest.fixture(scope="module")
def trained(unprotected, data_root):
    """A ``ganinv`` attacker whose mapping was trained for a few steps on public faces (identity-disjoint from
    LFW) and GAN samples protected by the attacker's client."""
    d, leak, forward = unprotected
    crop = d.recognizer.crop
    chips = public_chips(data_root, crop, 96, 0, False)
    with torch.no_grad():
        protected = leak(to_tensor(chips), torch.Generator().manual_seed(0))
    a = get_attack("ganinv", target_size=S, seed=0, forward=forward, target_map=d.whitebox_target,
                   input_size=crop.size, steps=20, feature_steps=10, **SMALL)
    a.use_client(leak, crop)
    a.fit(PairSource(chip_images(chips, S), protected=protected, seed=0),
          Budget(epochs=100, max_steps=32, batch_size=32, lr=1e-2, target_size=S), progress=False)
    return a


def test_mapping_trains_on_a_tiny_budget(trained):
    log = trained.log
    assert log.steps == log.planned_steps == 32 and log.stopped_by == "steps"
    losses = torch.tensor(log.losses)
    assert torch.isfinite(losses).all()
    assert losses[-8:].mean() < 0.95 * losses[:8].mean(), f"the mapping's loss did not decrease: {log.losses}"


def test_refinement_lowers_the_embedding_distance_to_the_target(trained, targets, dlib_model):
    """The must-show: for most real targets the refined face's dlib embedding is nearer the leaked one than the
    mapping's start, and on average nearer than a random latent's face."""
    x, t = targets
    out = trained.attack(t)
    assert out.shape == (len(t), 3, S, S) and 0 <= float(out.min()) <= float(out.max()) <= 1
    mapped, refined = trained.trace["mapped"], trained.trace["refined"]
    assert int((refined < mapped).sum()) >= 6, (mapped, refined)
    assert refined.mean() < 0.8 * mapped.mean()
    # the recogniser's own distance (not the objective's relative one), for the rendered faces at its input size
    z0 = trained.latents(t)
    w, space = trained.refine(z0, t)
    rand = sphere(torch.randn(len(t), trained.gen.nz, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        d_ref = (dlib_model.embed(trained.render(w, space, 150).clamp(0, 1)) - t).norm(dim=1)
        d_map = (dlib_model.embed(trained.render(z0, "z", 150).clamp(0, 1)) - t).norm(dim=1)
        d_rand = (dlib_model.embed(trained.render(rand, "z", 150).clamp(0, 1)) - t).norm(dim=1)
    assert int((d_ref < d_map).sum()) >= 6 and d_ref.mean() < d_rand.mean(), (d_ref, d_map, d_rand)


def test_refinement_steps_do_not_change_the_trained_mapping(trained, tmp_path, unprotected):
    """A trained mapping is shared: ``ganinv``'s refinement parameters are not in its training key, a saved
    ``ganinv`` loads as ``ganinv-map`` with the same latents, and config() round-trips through the constructor."""
    d, _, forward = unprotected
    other = get_attack("ganinv", target_size=S, seed=0, steps=3, feature_steps=0, lr=0.1, **SMALL)
    mapping = get_attack("ganinv-map", target_size=S, seed=0, **SMALL)
    assert other.train_config() == trained.train_config() == mapping.config()
    assert attack_cache_path(other, "k") == attack_cache_path(trained, "k") == attack_cache_path(mapping, "k")
    for a in (trained, mapping, other):
        cfg = a.config()
        assert type(a)(**{k: v for k, v in cfg.items() if k != "name"}).config() == cfg
    trained.save(tmp_path / "m.pt")
    mapping.load(tmp_path / "m.pt")
    t = torch.randn(3, 128) * 0.05
    assert torch.equal(mapping.latents(t), trained.latents(t))


def test_bad_templates_are_refused(trained, targets):
    _, t = targets
    for bad in (t[:2, :100], t[:2].reshape(2, 8, 16), torch.full((2, 128), math.nan), t[:2].double().long()):
        with pytest.raises(FaceveilDataError):
            trained.attack(bad)
    with pytest.raises(RuntimeError, match="fit"):
        get_attack("ganinv-map", target_size=S).attack(t)
    wrong = get_attack("ganinv", target_size=S, forward=lambda x: x.mean((2, 3)), **SMALL)
    wrong.in_shape, wrong.net = trained.in_shape, trained.net
    with pytest.raises(FaceveilDataError, match="forward map"):
        wrong.attack(t[:2])


@pytest.mark.parametrize("kw", [dict(generator="stylegan"), dict(hidden=4), dict(gan_pairs=-1), dict(id_batch=1.5),
                                dict(latent_weight=math.nan), dict(identity_weight=-1.0)])
def test_mapping_configuration_is_checked(kw):
    with pytest.raises(ValueError):
        GANMapping(**kw)


@pytest.mark.parametrize("kw", [dict(steps=-1), dict(lr=0.0), dict(feature_lr=math.inf), dict(prior_weight=-1.0),
                                dict(input_size=8)])
def test_refinement_configuration_is_checked(kw):
    with pytest.raises(ValueError):
        GANInversion(**kw)


# --- query-only ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle(unprotected):
    """The deployed system's match API (:func:`query_oracle`) as the harness gives it to a query attacker."""
    d, _, _ = unprotected
    return query_oracle(d, ThreatModel(), seed=0)


def test_es_lowers_the_oracle_distance_within_its_query_budget(oracle, targets):
    _, t = targets
    t = t[:4]
    es = get_attack("ganinv-es", oracle=oracle, target_size=S, queries=130, population=10, sigma=1.0, seed=0)
    avg = sphere(es.gen.average_latent("z")[None]).expand(len(t), -1)
    from faceveil.attacks.ganinv import chip_frame

    with torch.no_grad():
        start = oracle(es.gen.render(avg, "z", chip_frame(oracle.size, oracle.padding)), t)
    before = oracle.queries
    out = es.attack(t, batch_size=2)
    used = oracle.queries - before
    assert used == es.attack_stats()["queries"] == 4 * 130 // 10 * 10 <= 4 * 130  # 13 generations of 10, never more
    assert out.shape == (4, 3, S, S) and 0 <= float(out.min()) <= float(out.max()) <= 1
    trace = es.trace
    assert trace.shape == (13, 4) and (trace[1:] <= trace[:-1]).all()  # the best so far, per target
    assert (trace[-1] < start).all() and trace[-1].mean() < 0.9 * start.mean(), (start, trace[-1])
    # the returned faces are the best candidates the oracle scored
    with torch.no_grad():
        final = oracle(torch.nn.functional.interpolate(out, size=oracle.size, mode="bilinear", align_corners=False), t)
    assert final.mean() < start.mean()


def test_es_is_deterministic_and_refuses_bad_records(oracle, targets):
    _, t = targets
    kw = dict(oracle=oracle, target_size=32, queries=20, population=10)
    assert torch.equal(get_attack("ganinv-es", **kw).attack(t[:2]), get_attack("ganinv-es", **kw).attack(t[:2]))
    es = get_attack("ganinv-es", **kw)
    for bad in (t[:2, :64], torch.full((2, 128), math.inf), t[:2].long()):
        with pytest.raises(FaceveilDataError):
            es.attack(bad)
    with pytest.raises(RuntimeError, match="oracle"):
        get_attack("ganinv-es").attack(t[:2])
    for bad_kw in (dict(population=7), dict(population=2), dict(queries=10, population=20), dict(sigma=0.0),
                   dict(generator="x")):
        with pytest.raises(ValueError):
            GANInversionES(**bad_kw)


def test_query_oracle_counts_every_probe():
    o = QueryOracle(lambda x, r: (x.mean((1, 2, 3)) - r[:, 0]).abs(), (1,), size=8, chunk=3)
    d = o(torch.rand(7, 3, 8, 8), torch.rand(7, 1))
    assert d.shape == (7,) and o.queries == 7

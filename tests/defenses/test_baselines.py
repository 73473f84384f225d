"""Baseline defenses: contracts (shape, dtype, seeding, validation), exactness, and behaviour on real
LFW faces (utility falls as strength grows; AdvNoise moves embeddings; masks touch only masks)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from faceveil.bench.build import bench_system, embed_chips, lfw_utility
from faceveil.data.align import dataset_landmarks, to_tensor
from faceveil.defenses import defense_names, get_defense
from faceveil.defenses.blur import box_blur, gaussian_blur
from faceveil.defenses.cli_support import list_defenses, parse_params, protect_files
from faceveil.defenses.mask import image_to_chip_points, template_chip_points
from faceveil.errors import FaceveilDataError

BASELINES = ["noise", "blur", "pixelate", "mask", "advnoise", "laplace", "randperturb", "instahide", "facemix"]
STOCHASTIC = {"noise", "advnoise", "laplace", "randperturb", "instahide", "facemix"}
#: fast settings for contract tests (advnoise: 2 PGD steps)
FAST = {"advnoise": {"steps": 2}}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def chips(lfw_sample):
    return to_tensor(lfw_sample[1])


@pytest.fixture(scope="module")
def x(chips):
    return chips[:4]


@pytest.fixture(scope="module")
def pool(chips):
    """Stand-in public pool for tests: LFW chips not used as private images."""
    return chips[8:20]


def make(name: str, dlib_model, pool, **kw):
    kw = {**FAST.get(name, {}), **kw}
    if name in ("instahide", "facemix", "advnoise"):
        kw["pool"] = pool
    return get_defense(name, recognizer=dlib_model, **kw)


def test_all_registered():
    assert set(BASELINES) <= set(defense_names())


@pytest.mark.parametrize("name", BASELINES)
def test_contract(name, x, dlib_model, pool):
    d = make(name, dlib_model, pool)
    out = d.protect(x, gen(1))
    assert out.dtype == torch.float32 and not out.requires_grad and torch.isfinite(out).all()
    if d.domain == "image":
        assert out.shape == x.shape
    else:
        assert out.shape == (len(x), 128) and d.stored_shape() == (128,) and d.input_kind == "vector"
    assert torch.equal(out, d.protect(x, gen(1))), "not deterministic under a seed"
    other = d.protect(x, gen(2))
    if name in STOCHASTIC:
        assert d.stochastic and not torch.equal(out, other), "same output for different seeds"
        assert not torch.equal(d.protect(x, None), d.protect(x, None)), "no generator: fresh CSPRNG draws"
    else:
        assert not d.stochastic and torch.equal(out, other)
    assert d.config()["name"] == name and d.storage_bytes() > 0


BAD_PARAMS = [
    ("noise", {"sigma": -1.0}, "sigma"),
    ("noise", {"sigma": float("nan")}, "sigma"),
    ("blur", {"k": 0}, "k must be"),
    ("blur", {"k": 2.5}, "k must be"),
    ("blur", {"kind": "median"}, "kind"),
    ("blur", {"kind": "gaussian", "sigma": 0.0}, "sigma"),
    ("blur", {"border": "wrap"}, "border"),
    ("pixelate", {"k": 0}, "k must be"),
    ("mask", {"regions": "ears"}, "unknown region"),
    ("mask", {"regions": ""}, "at least one"),
    ("mask", {"fill": 1.5}, "fill"),
    ("mask", {"margin": -0.1}, "margin"),
    ("advnoise", {"eps": 0.0}, "eps"),
    ("advnoise", {"steps": 0}, "steps"),
    ("advnoise", {"step_size": -1.0}, "step_size"),
    ("advnoise", {"mode": "sideways"}, "mode"),
    ("laplace", {"eps": 0.0}, "eps"),
    ("laplace", {"eps": -1.0}, "eps"),
    ("laplace", {"c": 0.0}, "c must be"),
    ("laplace", {"at": "res99"}, "unknown layer"),
    ("randperturb", {"iterations": 0}, "iterations"),
    ("randperturb", {"alpha": 0.0}, "alpha"),
    ("randperturb", {"eps": 0.0}, "eps"),
    ("randperturb", {"bound": "ball"}, "bound"),
    ("instahide", {"k": 1}, "k must be"),
    ("instahide", {"upper": 0.4}, "upper"),
    ("instahide", {"pool_size": 0}, "pool_size"),
    ("facemix", {"k": 1}, "k must be"),
    ("facemix", {"w_min": 0.5}, "w_min"),
    ("facemix", {"w_min": 0.9, "w_max": 0.7}, "w_min"),
    ("facemix", {"pool_source": "imagenet"}, "pool_source"),
]


@pytest.mark.parametrize(("name", "kw", "match"), BAD_PARAMS)
def test_parameter_validation(name, kw, match, dlib_model):
    with pytest.raises(ValueError, match=match):
        get_defense(name, recognizer=dlib_model, **kw)


@pytest.mark.parametrize(("name", "k"), [("blur", 151), ("pixelate", 200)])
def test_k_larger_than_image(name, k, x):
    with pytest.raises(ValueError, match="exceeds the image size"):
        get_defense(name, k=k).protect(x)


# --- image-domain exactness ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 8, 16])
@pytest.mark.parametrize(("border", "mode"), [("reflect", "reflect"), ("replicate", "nearest")])
def test_box_blur_matches_scipy(k, border, mode):
    a = torch.rand(2, 3, 23, 29, dtype=torch.float64, generator=gen(0))
    ref = ndi.uniform_filter(a.numpy(), size=(1, 1, k, k), mode=mode)
    assert np.abs(box_blur(a, k, border).numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("sigma", [0.7, 3.0, 9.0])
def test_gaussian_blur_matches_scipy(sigma):
    a = torch.rand(1, 3, 31, 27, dtype=torch.float64, generator=gen(0))
    ref = ndi.gaussian_filter(a.numpy(), sigma=(0, 0, sigma, sigma), mode="reflect")
    assert np.abs(gaussian_blur(a, sigma).numpy() - ref).max() < 1e-12
    out = get_defense("blur", kind="gaussian", sigma=sigma).protect(a.float())
    assert np.abs(out.double().numpy() - ref).max() < 1e-5


def test_pixelate_blocks(x):
    out = get_defense("pixelate", k=10).protect(x)
    blocks = out.reshape(4, 3, 15, 10, 15, 10)
    assert (blocks - blocks[:, :, :, :1, :, :1]).abs().max() < 1e-6  # constant inside every block
    assert torch.allclose(blocks[:, :, :, 0, :, 0], x.reshape(4, 3, 15, 10, 15, 10).mean(dim=(3, 5)), atol=1e-6)
    edge = get_defense("pixelate", k=40).protect(x)  # 150 = 3*40 + 30: the last block averages 30 px
    assert torch.allclose(edge[:, :, 149, 149], x[:, :, 120:, 120:].mean(dim=(2, 3)), atol=1e-6)


def test_noise_scale():
    grey = torch.full((2, 3, 150, 150), 0.5)
    out = get_defense("noise", sigma=8.0).protect(grey, gen(0))
    assert abs(float((out - grey).std()) * 255 - 8.0) < 0.1
    assert torch.equal(get_defense("noise", sigma=0.0).protect(grey, gen(0)), grey)


def test_mask_changes_only_masked_pixels(x, lfw_sample, dlib_model):
    d = get_defense("mask", recognizer=dlib_model, fill=0.5)
    m = d.mask(x)
    out = d.protect(x)
    assert torch.equal(out[~m.expand_as(out)], x[~m.expand_as(x)])
    assert (out[m.expand_as(out)] == 0.5).all()
    assert 0.08 < m.float().mean() < 0.35
    # the template's eye and nose points lie inside the mask
    for u, v in template_chip_points(dlib_model.crop):
        assert m[0, 0, round(v), round(u)]
    # per-image detected landmarks (in chip coordinates) move the regions, and still only touch them
    sub, _ = lfw_sample
    lm = dataset_landmarks(sub.root, sub.files[:4], sub.name, progress=False, select=sub.select)
    pts = np.stack([image_to_chip_points(p, dlib_model.crop) for p in lm["points"]])
    mi = d.mask(x, pts)
    assert not torch.equal(mi, m)
    out_i = d.protect_with_landmarks(x, pts)
    assert torch.equal(out_i[~mi.expand_as(out_i)], x[~mi.expand_as(x)])
    face = get_defense("mask", recognizer=dlib_model, regions="face").mask(x)
    assert (face | ~m).all()  # the solid face box covers eyes, nose and mouth


# --- AdvNoise -----------------------------------------------------------------------------------


def test_advnoise_moves_embedding_within_budget(x, dlib_model, pool):
    d = get_defense("advnoise", recognizer=dlib_model, steps=5)
    out = d.protect(x[:2], gen(0))
    assert (out - x[:2]).abs().max() <= 8 / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        clean = dlib_model(x[:2])
        adv = (dlib_model(out) - clean).norm(dim=1)
        rnd = (dlib_model(get_defense("noise", sigma=8.0).protect(x[:2], gen(0))) - clean).norm(dim=1)
    assert (adv > 0.6).all(), adv  # past dlib's 0.6 match threshold
    assert (adv > 4 * rnd).all()  # far more than random noise of a similar size
    dt = get_defense("advnoise", recognizer=dlib_model, steps=5, mode="targeted", pool=pool)
    with torch.no_grad():
        target = dt.targets(clean, gen(0))
        before = (clean - target).norm(dim=1)
        after = (dlib_model(dt.protect(x[:2], gen(0))) - target).norm(dim=1)
    assert (after < before - 0.2).all(), (before, after)


# --- feature domain -----------------------------------------------------------------------------


def test_laplace_noise_scale_and_clipping(x, dlib_model):
    d = get_defense("laplace", recognizer=dlib_model, eps=2.0, c=0.35)
    with torch.no_grad():
        f = dlib_model(x).clamp(-0.35, 0.35)
        noise = torch.cat([d.protect(x, gen(s)) - f for s in range(20)])
    assert d.scale == pytest.approx(0.35)  # Δ/ε = 2c/ε
    assert float(noise.abs().mean()) == pytest.approx(0.35, rel=0.05)  # E|Laplace(b)| = b
    big = get_defense("laplace", recognizer=dlib_model, eps=1e9, c=0.05)
    assert (big.protect(x, gen(0)).abs() <= 0.05 + 1e-6).all()


@pytest.mark.parametrize("name", ["laplace", "randperturb"])
def test_feature_defense_on_split_layer(name, x, dlib_model):
    kw = {"eps": 1e6, "c": 1e3} if name == "laplace" else {"eps": 1e-4, "alpha": 1e-4}
    d = get_defense(name, recognizer=dlib_model, at="res1", **kw)
    with torch.no_grad():
        t = d.protect(x, gen(0))
        assert d.input_kind == "map" and t.shape[1:] == d.stored_shape() and t.ndim == 4
        assert torch.allclose(d.frozen_server()(t), dlib_model(x), atol=1e-3)  # tiny noise: server recovers


def test_randperturb_per_step_bound_is_an_unclipped_walk(x, dlib_model):
    """AdvFace's eqs. 5-6 reading (the default): ε bounds each of the 40 steps, not their sum, so with α = ε the
    walk is never clipped: offsets are multiples of 2α (40 even steps) spread with std α√40 = 1.26, far outside
    the ε-ball of the total reading."""
    d = get_defense("randperturb", recognizer=dlib_model)
    assert d.config()["bound"] == "step" and "bound" not in get_defense("randperturb", bound="total").config()
    with torch.no_grad():
        delta = (d.protect(x, gen(0)) - dlib_model(x)).double()
    assert delta.abs().max() > 0.2 * 4 and delta.abs().max() <= 8 + 1e-5
    assert ((delta / 0.4 - (delta / 0.4).round()).abs() < 1e-4).all()  # an even number of ±α steps
    assert 1.1 < delta.std() < 1.4  # α √40


def test_randperturb_projection(x, dlib_model):
    d = get_defense("randperturb", recognizer=dlib_model, bound="total")
    with torch.no_grad():
        delta = d.protect(x, gen(0)) - dlib_model(x)
    assert delta.abs().max() <= 0.2 + 1e-6
    vals = torch.tensor([-0.2, 0.0, 0.2])
    assert ((delta[..., None] - vals).abs().min(dim=-1).values < 1e-5).all()  # α = ε: offsets in {−ε, 0, ε}
    frac = [(delta.abs() < 1e-5).float().mean(), (delta > 0.1).float().mean()]
    assert all(0.2 < float(f) < 0.47 for f in frac)  # stationary distribution: 1/3 each



def _simulated_walk(n: int, iterations: int, alpha: float, eps: float, seed: int) -> torch.Tensor:
    """Reference: the walk of AdvFace's random-perturbation baseline simulated step by step."""
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(n, dtype=torch.float64)
    for _ in range(iterations):
        d = (d + alpha * torch.sign(torch.randn(n, generator=g, dtype=torch.float64))).clamp(-eps, eps)
    return d


@pytest.mark.parametrize("iterations,alpha,eps", [(40, 0.2, 0.2), (7, 0.1, 0.25), (40, 0.07, 0.2), (3, 0.3, 1.0)])
def test_random_sign_walk_matches_simulated_walk(iterations, alpha, eps):
    """The one-draw sampler has the distribution of the step-by-step walk (values and frequencies)."""
    from faceveil.defenses.randperturb import random_sign_walk, walk_marginal

    n = 200_000
    ref = _simulated_walk(n, iterations, alpha, eps, seed=1)
    fast = random_sign_walk((n // 100, 10, 10), iterations, alpha, eps, gen(2), torch.float64).reshape(-1)
    values, cdf = walk_marginal(iterations, alpha, eps)
    probs = torch.diff(cdf, prepend=cdf.new_zeros(1))
    assert fast.abs().max() <= eps + 1e-12
    for sample in (ref, fast):
        nearest = (sample[:, None] - values).abs().min(dim=1)
        assert nearest.values.max() < 1e-9  # every end point is one of the computed states
        freq = torch.bincount(nearest.indices, minlength=len(values)).double() / n
        sd = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 5 * sd + 1e-12).all(), (freq, probs)
    if iterations == 3 and alpha == 0.3:  # no clipping: exact binomial, P(δ = 0.9) = 1/8
        assert values.tolist() == pytest.approx([-0.9, -0.3, 0.3, 0.9]) and probs[3].item() == pytest.approx(1 / 8)

# --- mixing defenses ----------------------------------------------------------------------------


def test_instahide(x, dlib_model, pool):
    d = get_defense("instahide", recognizer=dlib_model, pool=pool)
    t, lam = d.protect_with_coefficients(x, gen(0))
    assert d.needs_adapted_server and t.min() >= -1 and t.max() <= 1 and (t < 0).float().mean() > 0.3
    assert torch.allclose(lam.sum(1), torch.ones(4, dtype=lam.dtype)) and (lam <= 0.65).all() and (lam >= 0.35).all()
    assert (t.abs() - (2 * x - 1).abs()).abs().mean() > 0.05  # differs from the (sign-flipped) private image
    lams = torch.cat([d.protect_with_coefficients(x, gen(s))[1] for s in range(10)])
    assert (lams[:, 0] < 0.5).any() and (lams[:, 0] > 0.5).any()  # the private image is not always dominant
    y = d.frozen_server()(t)
    assert y.shape == (4, 128)


def test_facemix_private_face_dominates(x, dlib_model, pool):
    d = get_defense("facemix", recognizer=dlib_model, pool=pool)
    out, w = d.protect_with_weights(x, gen(0))
    assert d.needs_adapted_server and out.min() >= 0 and out.max() <= 1
    assert ((w[:, 0] >= 0.6) & (w[:, 0] < 0.8)).all() and torch.allclose(w.sum(1), torch.ones(4, dtype=w.dtype))
    assert (out - x).abs().mean() > 0.01

    def corr(a, b):
        a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    for i in range(4):
        own = corr(out[i : i + 1], x[i : i + 1])
        public = corr(out[i : i + 1].expand_as(pool), pool)
        assert own > public.max(), (own, public.max())


def test_public_pool_from_celeba(data_root):
    from faceveil.defenses.pool import public_pool

    a = public_pool(6, seed=0, data=data_root)
    assert a.shape == (6, 3, 150, 150) and a.dtype == torch.float32
    assert torch.equal(a, public_pool(6, seed=0, data=data_root))
    assert not torch.equal(a, public_pool(6, seed=1, data=data_root))


# --- utility on real LFW pairs: falls monotonically with strength --------------------------------

PER_FOLD = 5  # 100 real pairs (~200 images): ~5 s per level on one core


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("noise", [{"sigma": 0.0}, {"sigma": 50.0}, {"sigma": 150.0}]),
        ("blur", [{"k": 1}, {"k": 16}, {"k": 32}]),
        ("laplace", [{"eps": 1000.0}, {"eps": 10.0}, {"eps": 1.0}]),  # strength 1/eps
    ],
)
def test_utility_falls_with_strength(name, levels, lfw, dlib_model):
    accs = [lfw_utility(bench_system(get_defense(name, recognizer=dlib_model, **kw)), lfw, per_fold=PER_FOLD)["acc_mean"]
            for kw in levels]
    assert accs[0] >= 0.95, accs  # weakest level ~ clean dlib
    assert accs[0] - accs[1] >= 0.05 and accs[1] - accs[2] >= 0.05, accs


# --- CLI support --------------------------------------------------------------------------------


def test_parse_params():
    assert parse_params("blur", {"k": "8", "kind": "gaussian", "sigma": "2"}) == {"k": 8, "kind": "gaussian", "sigma": 2.0}
    with pytest.raises(ValueError, match="unknown parameter 'size'"):
        parse_params("blur", {"size": "3"})
    with pytest.raises(ValueError, match="not a valid int"):
        parse_params("blur", {"k": "eight"})


def test_list_defenses():
    table = list_defenses()
    for name in BASELINES:
        assert f"\n{name} " in table
    assert "sigma=8.0" in table and "eps=1.0" in table and "iterations=40" in table


def test_protect_files(tmp_path, lfw, data_root):
    from PIL import Image

    from faceveil.keys import Randomness

    files = [lfw.root / f for f in lfw.dataset().files[:2]]
    out = protect_files("blur", {"k": "8"}, files, tmp_path / "o", data_dir=data_root).written
    assert [p.suffix for p in out] == [".png", ".png"] and Image.open(out[0]).size == (150, 150)
    seeded = Randomness.research(0)
    out = protect_files("laplace", {}, files[:1], tmp_path / "f", seeded, data_dir=data_root).written
    assert out[0].suffix == ".npy" and np.load(out[0]).shape == (128,)
    again = protect_files("laplace", {}, files[:1], tmp_path / "g", seeded, data_dir=data_root).written
    assert np.array_equal(np.load(out[0]), np.load(again[0]))  # a research seed reproduces; the default never does
    blank = tmp_path / "blank.png"
    Image.new("RGB", (48, 48), (128, 128, 128)).save(blank)
    with pytest.raises(FaceveilDataError, match="blank.png: no face found.*wrote 0 of 1"):
        protect_files("noise", {}, [blank], tmp_path / "b")


def test_slow_client_output_cached_across_servers(lfw_sample, dlib_model, pool):
    """A slow client's protected faces are computed once (keyed by defense, chips, seed, batching):
    a second system (another server, a re-run) reuses them and the client time measured with them."""
    d = make("advnoise", dlib_model, pool)
    assert d.protect_ms_hint >= d.SLOW_CLIENT_MS
    chips = lfw_sample[1][:6]
    t1: list = []
    e1 = embed_chips(bench_system(d), chips, stored=False, batch_size=4, salt=7, seed=3, timing=t1)
    t2: list = []
    e2 = embed_chips(bench_system(d), chips, stored=False, batch_size=4, salt=7, seed=3, timing=t2)
    assert torch.equal(e1, e2) and [t[:2] for t in t1] == [t[:2] for t in t2]
    t3: list = []
    embed_chips(bench_system(d), chips, stored=False, batch_size=4, salt=7, seed=4, timing=t3)  # another seed: new key
    assert [t[1] for t in t3] != [t[1] for t in t1]


def test_fast_client_batches_are_streamed_not_cached(lfw_sample, dlib_model, pool, tmp_path, monkeypatch):
    """A fast client's protected batches are made one at a time while the server embeds them (64 clean
    BDCT channels of every LFW enrolment face would not fit in memory) and are not cached on disk."""
    import inspect

    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path))
    d = make("noise", dlib_model, pool)
    assert d.protect_ms_hint < d.SLOW_CLIENT_MS
    chips = lfw_sample[1][:6]
    from faceveil.bench.build import _protected_batches

    system = bench_system(d)
    it = _protected_batches(system, chips, stored=False, batch_size=4, salt=7, seed=3)
    assert inspect.isgenerator(it)
    first = next(it)[0]
    assert first.shape[0] == 4 and [b.shape[0] for b, _ in it] == [2]
    e = embed_chips(system, chips, stored=False, batch_size=4, salt=7, seed=3)
    assert torch.allclose(e[:4], system.embed_protected(first, stored=False), atol=1e-5)
    assert not (tmp_path / "protected").exists()


def test_lfw_utility_is_cached_by_defense_and_server_weights(lfw, dlib_model, monkeypatch, tmp_path):
    """A judged system's LFW utility is read back from the cache (the same numbers, no embedding);
    another defense setting or a server with other weights is judged afresh."""
    import copy

    import faceveil.bench.build as build
    import faceveil.config
    from faceveil.models.embed import module_digest

    real_dir = faceveil.config.cache_dir
    monkeypatch.setattr(faceveil.config, "cache_dir", lambda kind: tmp_path if kind == "utility" else real_dir(kind))
    sysm = bench_system(get_defense("blur", recognizer=dlib_model, k=9))
    first = lfw_utility(sysm, lfw, per_fold=2)
    real = build.pair_embeddings
    calls: list[int] = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(build, "pair_embeddings", counted)
    assert lfw_utility(bench_system(get_defense("blur", recognizer=dlib_model, k=9)), lfw, per_fold=2) == first
    assert calls == []
    lfw_utility(bench_system(get_defense("blur", recognizer=dlib_model, k=10)), lfw, per_fold=2)
    assert calls == [1]
    model = copy.deepcopy(sysm.model)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    other = lfw_utility(bench_system(get_defense("blur", recognizer=dlib_model, k=9), model=model), lfw, per_fold=2)
    assert calls == [1, 1]
    # the result names the server weights it was computed with (report diff: "trained apart")
    assert first["model_digest"] == module_digest(sysm.model) != other["model_digest"] == module_digest(model)

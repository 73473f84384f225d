"""FaceObfuscator: DCT exactness, recovery invariance, parameter validation, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from faceveil.data.align import to_tensor
from faceveil.defenses import get_defense
from faceveil.defenses.faceobfuscator import (
    CHANNEL_NAMES,
    block_dct,
    block_idct,
    frequency_channels,
    identity_recovery,
    self_normalise,
    validate_obfuscation,
)


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return to_tensor(lfw_sample[1][:6])


def test_block_dct_matches_scipy_on_real_faces(faces):
    grey = (0.299 * faces[:, 0:1] + 0.587 * faces[:, 1:2] + 0.114 * faces[:, 2:3]) * 255
    x = torch.nn.functional.interpolate(grey, size=(112, 112), mode="bilinear", antialias=True)
    x = torch.nn.functional.interpolate(x, scale_factor=8, mode="bilinear").double()
    c = block_dct(x)
    assert c.shape == (6, 64, 112, 112)
    img = x[2, 0].numpy()
    zz = [(0, 0)] + [(int(n[2]), int(n[3])) for n in CHANNEL_NAMES[1:]]
    for bi, bj in [(0, 0), (50, 61), (111, 7)]:
        ref = scipy.fft.dctn(img[8 * bi : 8 * bi + 8, 8 * bj : 8 * bj + 8], norm="ortho")
        ours = c[2, :, bi, bj].numpy()
        np.testing.assert_allclose(ours, [ref[u, v] for u, v in zz], rtol=0, atol=1e-9)
    torch.testing.assert_close(block_idct(c), x, atol=1e-9, rtol=0)


def test_zigzag_names():
    assert CHANNEL_NAMES[:6] == ["DC", "AC01", "AC10", "AC20", "AC11", "AC02"]
    assert len(set(CHANNEL_NAMES)) == 64 and CHANNEL_NAMES[-1] == "AC77"


def test_nearest_upsampling_would_zero_ac(faces):
    f = frequency_channels(faces, upsample="nearest")
    assert f[:, 1:].abs().max() < 1e-6 * f[:, 0].abs().max()  # why the default is bilinear
    assert frequency_channels(faces)[:, 1:3].abs().mean() > 1.0


def test_self_normalisation_uses_bessel():
    f = torch.randn(3, 2, 10, 10) * 5 + 3
    a = self_normalise(f, beta=1e-12)
    torch.testing.assert_close(a.mean(dim=(2, 3)), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.flatten(2).std(dim=2, unbiased=True), torch.ones(3, 2), atol=1e-5, rtol=0)


def test_output_shape_storage_and_determinism(faces):
    d = get_defense("faceobfuscator")
    e1 = d.protect(faces, torch.Generator().manual_seed(3))
    e2 = d.protect(faces, torch.Generator().manual_seed(3))
    e3 = d.protect(faces, torch.Generator().manual_seed(4))
    assert e1.shape == (6, 2, 112, 112) and e1.dtype == torch.float32 and torch.isfinite(e1).all()
    assert torch.equal(e1, e2) and not torch.equal(e1, e3)
    assert d.storage_bytes() == 2 * 112 * 112 * 4  # 98 KB, the paper's storage figure
    assert not torch.equal(d.protect(faces), d.protect(faces))  # no generator: fresh CSPRNG signs and exponents


def test_recovery_range_and_invariance(faces):
    for b in (2.0, 10.0):
        d = get_defense("faceobfuscator", b=b, z_lower=-12, z_upper=12, bias=1)
        e1 = d.protect(faces, torch.Generator().manual_seed(1))
        e2 = d.protect(faces, torch.Generator().manual_seed(2))
        r1, r2 = d.recover(e1), d.recover(e2)
        m = r1.abs().amax(dim=(2, 3))
        assert ((m > b**0 * (1 - 1e-6)) & (m <= b**1 * (1 + 1e-6))).all()  # (b^(bias-1), b^bias]
        torch.testing.assert_close(r1.abs(), r2.abs(), atol=0, rtol=1e-6)  # only signs differ
        assert (torch.sign(r1) != torch.sign(r2)).float().mean() > 0.4
        # |d| = |a| b^(floor(-log_b max|a|) + bias): the exponents v cancel
        a = d.deleted(faces)
        ma = a.abs().amax(dim=(2, 3), keepdim=True)
        expect = a.abs() * torch.exp((torch.floor(-torch.log(ma) / math.log(b)) + 1) * math.log(b))
        torch.testing.assert_close(r1.abs(), expect, atol=1e-5, rtol=1e-5)


def test_server_input_does_not_depend_on_the_exponent_range(faces):
    """With b = 2 (exact powers of two) and the same seed, every exponent range gives the server
    bit-identical recovered data: the range only changes what travels (Fig. 7's privacy axis),
    never what the server learns from (its accuracy axis is flat by construction)."""
    recovered = []
    for lo, hi in ((0, 1), (-30, 30), (-60, 60), (-90, 90)):
        d = get_defense("faceobfuscator", b=2.0, z_lower=lo, z_upper=hi)
        e = d.protect(faces, torch.Generator().manual_seed(5))
        recovered.append((e, d.recover(e)))
    for e, r in recovered[1:]:
        assert torch.equal(r, recovered[0][1])
        assert not torch.equal(e, recovered[0][0])  # the uploads differ


def test_zero_channel_recovers_to_zero():
    e = torch.zeros(1, 2, 4, 4)
    e[0, 1, 0, 0] = 3.0
    d = identity_recovery(e, 2.0)
    assert d[0, 0].abs().max() == 0 and d[0, 1, 0, 0] == pytest.approx(0.75)


@pytest.mark.parametrize("kw,msg", [
    ({"b": 1.0}, "b must be"), ({"b": 1.05}, "too close to 1"), ({"b": -2.0}, "b must be"),
    ({"b": 2.0, "z_lower": -200}, "float32"), ({"b": 100.0, "z_lower": -60, "z_upper": 60}, "float32"),
    ({"b": 2.0, "z_lower": 5, "z_upper": -5}, "Z_lower <= Z_upper"),
])
def test_parameter_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        validate_obfuscation(kw.get("b", 2.0), kw.get("z_lower", -60), kw.get("z_upper", 60))


def test_other_validation():
    with pytest.raises(ValueError, match="nearest"):
        get_defense("faceobfuscator", upsample="nearest")
    with pytest.raises(ValueError, match="unknown frequency channel"):
        get_defense("faceobfuscator", channels="AC99")
    validate_obfuscation(100.0, -15, 18)  # the documented limit for b=100


def test_adaptive_view_removes_randomness(faces):
    d = get_defense("faceobfuscator")
    v1 = d.attacker_view("abs", d.protect(faces, torch.Generator().manual_seed(5)))
    v2 = d.attacker_view("abs", d.protect(faces, torch.Generator().manual_seed(6)))
    torch.testing.assert_close(v1, v2, atol=0, rtol=1e-6)
    torch.testing.assert_close(v1, d.whitebox_forward(faces), atol=1e-6, rtol=1e-5)
    # recovery is idempotent, so the white-box map is already the adaptive view (no separate cell)
    w = d.whitebox_forward(faces)
    torch.testing.assert_close(d.attacker_view("abs", w), w, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_fast_frequency_channels_equal_explicit_pipeline(faces, mode):
    from faceveil.defenses.faceobfuscator import grey_face

    grey = grey_face(faces).double()
    explicit = block_dct(torch.nn.functional.interpolate(grey, scale_factor=8, mode=mode, align_corners=False))
    fast = frequency_channels(faces, upsample=mode).double()
    assert (fast - explicit).abs().max() <= 1e-4 * explicit.abs().max()


@pytest.mark.parametrize("kw", [{}, {"channels": "all"}, {"b": 1.8, "z_lower": -70, "z_upper": 70},
                                {"b": 100.0, "z_lower": -9, "z_upper": 9}])
def test_obfuscation_is_eq_sign_times_power(faces, kw):
    """e = a ⊙ (-1)^u ⊙ b^v (Algorithm 1), bit for bit, against the formula written out with int64
    draws from the same generator (protect draws int8 signs and scales in place to save memory)."""
    d = get_defense("faceobfuscator", **kw)
    x = faces[:4]
    a = d.deleted(x)
    g = torch.Generator().manual_seed(11)
    u = torch.randint(0, 2, tuple(a.shape), generator=g)
    v = torch.randint(d.z_lower, d.z_upper + 1, (*a.shape[:2], 1, 1), generator=g)
    want = (a.double() * (-1.0) ** u.double() * torch.tensor(d.b, dtype=torch.float64) ** v.double()).float()
    got = d.protect(x, torch.Generator().manual_seed(11))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))

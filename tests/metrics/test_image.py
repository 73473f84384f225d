"""Image metrics against reference implementations (scikit-image, pytorch-msssim) on real faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as pm_ms_ssim
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from faceveil.data.align import to_tensor
from faceveil.metrics.image import ms_ssim, mse, psnr, ssim


@pytest.fixture(scope="module")
def pairs(lfw_sample):
    _, chips = lfw_sample
    a = chips[:6].astype(np.float64)
    rng = np.random.default_rng(0)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).round()
    return a, b


def test_mse_psnr_match_skimage(pairs):
    a, b = pairs
    ta, tb = to_tensor(a.astype(np.uint8)) * 255, to_tensor(b.astype(np.uint8)) * 255
    for i in range(len(a)):
        assert mse(ta, tb)[i].item() == pytest.approx(mean_squared_error(a[i], b[i]), rel=1e-5)
        assert psnr(ta, tb, 255.0)[i].item() == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=255), abs=1e-4)


def test_ssim_matches_skimage(pairs):
    a, b = pairs
    ours = ssim(to_tensor(a.astype(np.uint8)), to_tensor(b.astype(np.uint8)), data_range=1.0)
    for i in range(len(a)):
        ref = structural_similarity(a[i], b[i], data_range=255, channel_axis=-1, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=2e-4)


def test_ssim_identity_and_ordering(pairs):
    a, b = pairs
    ta, tb = to_tensor(a.astype(np.uint8)), to_tensor(b.astype(np.uint8))
    torch.testing.assert_close(ssim(ta, ta, 1.0), torch.ones(len(a)))
    torch.testing.assert_close(ms_ssim(ta, ta, 1.0), torch.ones(len(a)))
    noisier = (tb - ta) * 2 + ta
    assert (ssim(ta, noisier.clamp(0, 1), 1.0) < ssim(ta, tb, 1.0)).all()


def test_ms_ssim_equals_reference_on_large_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 192, 192, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 192, 192, generator=g)).clamp(0, 1)
    torch.testing.assert_close(ms_ssim(x, y, 1.0), pm_ms_ssim(x, y, data_range=1.0, size_average=False), atol=1e-5, rtol=0)


def test_ms_ssim_small_chips(pairs):
    a, b = pairs
    v = ms_ssim(to_tensor(a.astype(np.uint8)), to_tensor(b.astype(np.uint8)), 1.0)
    assert v.shape == (len(a),) and ((v > 0) & (v < 1)).all()

"""Image quality metrics on float images ``[B,C,H,W]``; every function returns one value per image.

SSIM and MS-SSIM come from ``pytorch-msssim`` (Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03,
Wang et al. 2004 / 2003), checked against scikit-image in the tests.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _pm_ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
from torch import Tensor

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two [B,C,H,W] tensors of equal shape, got {list(x.shape)} and {list(y.shape)}")


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image, in the units of the inputs."""
    _check(x, y)
    return ((x.double() - y.double()) ** 2).flatten(1).mean(1).float()


def psnr(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Peak signal-to-noise ratio per image: ``10 log10(data_range^2 / MSE)`` (dB)."""
    m = mse(x, y).double()
    return (10.0 * torch.log10(data_range**2 / m.clamp_min(1e-20))).float()


def ssim(x: Tensor, y: Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image (mean over channels and valid window positions)."""
    _check(x, y)
    return _pm_ssim(x.float(), y.float(), data_range=data_range, size_average=False,
                    win_size=win_size, win_sigma=sigma)


def ms_ssim(x: Tensor, y: Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Multi-scale SSIM per image (Wang et al. 2003, weights 0.0448 ... 0.1333).

    Face chips (64-150 px) are smaller than the 161 px the five-scale definition needs, so we use
    as many scales as fit (the coarsest image still at least ``win_size`` wide) and renormalise the
    first weights to sum to one; at >= 161 px this equals ``pytorch_msssim.ms_ssim``. (Written here
    because pytorch-msssim refuses small images instead of using fewer scales.)
    """
    _check(x, y)
    x, y = x.float(), y.float()
    side = min(x.shape[-2:])
    levels = 1
    while levels < 5 and side // (2**levels) >= win_size:
        levels += 1
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float32)
    w = w / w.sum()
    win = _fspecial_gauss_1d(win_size, sigma).repeat([x.shape[1], 1] + [1] * (x.ndim - 2))
    vals = []
    for i in range(levels):
        s, cs = _ssim(x, y, win=win, data_range=data_range, size_average=False)
        if i < levels - 1:
            vals.append(torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, 2, padding=pad)
            y = torch.nn.functional.avg_pool2d(y, 2, padding=pad)
    vals.append(torch.relu(s))
    stack = torch.stack(vals, dim=0)  # [levels, B, C]
    return torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean(1)

"""Blur baselines: k×k averaging (FaceMix compares 8×8 on CelebA, 16×16 on LFW) or Gaussian σ."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer

BLUR_KINDS = ("box", "gaussian")
BORDERS = ("reflect", "replicate")


def border_index(n: int, before: int, after: int, border: str) -> Tensor:
    """Source indices of a length-``n`` axis padded by ``before``/``after`` samples.

    ``reflect`` is scipy.ndimage's default ``'reflect'`` (half-sample symmetric: ``d c b a | a b c d |
    d c b a``, the edge sample repeated), valid for any pad width; ``replicate`` repeats the edge
    sample (scipy ``'nearest'``)."""
    i = torch.arange(-before, n + after)
    if border == "replicate":
        return i.clamp(0, n - 1)
    if border == "reflect":
        j = i.remainder(2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")


def separable_filter(x: Tensor, kernel: Tensor, before: int, border: str) -> Tensor:
    """Correlate every channel of ``x`` ``[B,C,H,W]`` with the 1-D ``kernel`` along H then W.
    Output pixel ``i`` is ``sum_t kernel[t] * x[i - before + t]`` (borders extended by ``border``)."""
    k = len(kernel)
    after = k - 1 - before
    c = x.shape[1]
    w = kernel.to(x.dtype)
    x = x.index_select(2, border_index(x.shape[2], before, after, border))
    x = F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    x = x.index_select(3, border_index(x.shape[3], before, after, border))
    return F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def box_blur(x: Tensor, k: int, border: str = "reflect") -> Tensor:
    """k×k mean filter with scipy.ndimage.uniform_filter's centring: the window of output pixel ``i``
    covers ``i - k//2 ... i + (k-1) - k//2`` (for even ``k`` one more sample before than after)."""
    return separable_filter(x, torch.full((k,), 1.0 / k, dtype=torch.float64), k // 2, border)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter's kernel: radius ``int(truncate*σ + 0.5)``, normalised to sum 1."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def gaussian_blur(x: Tensor, sigma: float, border: str = "reflect") -> Tensor:
    """Gaussian blur equal to ``scipy.ndimage.gaussian_filter(x, (0, 0, σ, σ), mode=border)``."""
    g = gaussian_kernel(sigma)
    return separable_filter(x, g, len(g) // 2, border)


@register_defense("blur")
class Blur(Defense):
    """Blur the aligned chip: ``kind="box"`` is the k×k averaging filter of FaceMix's baseline
    (8×8 on CelebA, 16×16 on LFW; default k=16 on the 150×150 dlib chip), ``kind="gaussian"`` a
    Gaussian of standard deviation ``sigma`` pixels (kernel truncated at 4σ, as scipy). Both are
    exact separable correlations in torch matching scipy.ndimage (``uniform_filter`` /
    ``gaussian_filter``) with border ``reflect`` (scipy's default, half-sample symmetric) or
    ``replicate`` (scipy ``nearest``). Deterministic and differentiable."""

    side = "client"
    stochastic = False
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {
        "kind": "box (k x k mean) | gaussian (std sigma)",
        "k": "box size in pixels (kind=box), 1 <= k <= image size",
        "sigma": "Gaussian std in pixels (kind=gaussian), > 0",
        "border": "reflect (scipy default, half-sample symmetric) | replicate (edge pixel repeated)",
    }

    def __init__(self, *, kind: str = "box", k: int = 16, sigma: float = 4.0, border: str = "reflect",
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if kind not in BLUR_KINDS:
            raise ValueError(f"blur: kind must be one of {', '.join(BLUR_KINDS)}, got {kind!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"blur: k must be an integer >= 1, got {k!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"blur: sigma must be a finite number > 0 (pixels), got {sigma!r}")
        if border not in BORDERS:
            raise ValueError(f"blur: border must be one of {', '.join(BORDERS)}, got {border!r}")
        self.kind, self.k, self.sigma, self.border = kind, k, float(sigma), border

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x = self._check_images(x)
        if self.kind == "box":
            if self.k > min(x.shape[-2:]):
                raise ValueError(f"blur: k={self.k} exceeds the image size {x.shape[-2]}x{x.shape[-1]}")
            return box_blur(x, self.k, self.border)
        return gaussian_blur(x, self.sigma, self.border)

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

"""Gaussian pixel noise: the ``N(0, σ)`` baseline FaceMix compares against (σ = 8 grey levels)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer


@register_defense("noise")
class GaussianNoise(Defense):
    """Add i.i.d. Gaussian noise ``N(0, σ²)`` to every pixel and channel, σ in 0–255 grey levels,
    then clip to [0, 1]. FaceMix's image-domain baseline uses σ = 8 (the default). Fresh noise per
    call, drawn from the caller's generator."""

    side = "client"
    stochastic = True
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {"sigma": "noise standard deviation in grey levels (0-255 units), >= 0"}

    def __init__(self, *, sigma: float = 8.0, recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"noise: sigma must be a finite number >= 0 (0-255 units), got {sigma!r}")
        self.sigma = float(sigma)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x = self._check_images(x)
        rng = self._check_rng(rng)
        n = torch.randn(x.shape, generator=rng, dtype=x.dtype)
        return (x + n * (self.sigma / 255.0)).clamp(0.0, 1.0)

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

"""Pixelation (mosaic): the classic obfuscation defeated by McPherson et al. (2016), "Defeating
Image Obfuscation with Deep Learning", arXiv:1609.00408."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer


def pixelate(x: Tensor, k: int) -> Tensor:
    """Replace every k×k block (grid anchored at the top-left pixel) by its mean colour; blocks cut
    by the right/bottom edge average only the pixels they contain. Output has the input's size."""
    h, w = x.shape[-2:]
    p = F.avg_pool2d(x, k, k, ceil_mode=True)  # partial edge windows divide by their true size
    return p.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)[..., :h, :w]


@register_defense("pixelate")
class Pixelate(Defense):
    """Block mosaic of block size ``k`` pixels on the aligned chip (default k=10: a 15×15 mosaic of
    the 150×150 dlib chip, the grid dividing the chip exactly). Deterministic, differentiable."""

    side = "client"
    stochastic = False
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {"k": "block size in pixels, 1 <= k <= image size"}

    def __init__(self, *, k: int = 10, recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"pixelate: k must be an integer >= 1, got {k!r}")
        self.k = k

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x = self._check_images(x)
        if self.k > min(x.shape[-2:]):
            raise ValueError(f"pixelate: k={self.k} exceeds the image size {x.shape[-2]}x{x.shape[-1]}")
        return pixelate(x, self.k)

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

"""Chips as tensors: resizing, re-cropping between dlib crop geometries, uint8 chips to resized tensors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.data.align import to_tensor
from faceveil.data.crop import CropSpec


def recrop(x: Tensor, src: CropSpec, dst: CropSpec) -> Tensor:
    """Re-map chips aligned with ``src`` geometry to ``dst`` geometry. Both are dlib 5-point
    template crops: template point u sits at pixel ``q = a u + b`` with ``a = S/(2 pad + 1)``,
    ``b = pad a``, so dst pixel q maps to src pixel ``k q + c`` (``k = a_s/a_d``, ``c = b_s - k b_d``).
    Area outside ``src`` is black."""
    if src == dst:
        return x
    a_s, a_d = src.size / (2 * src.padding + 1), dst.size / (2 * dst.padding + 1)
    b_s, b_d = src.padding * a_s, dst.padding * a_d
    k = a_s / a_d
    c = b_s - k * b_d
    # grid_sample, align_corners=False: n = (2 q + 1) / S - 1
    scale = k * dst.size / src.size
    offset = (k * dst.size - k + 2 * c + 1) / src.size - 1
    theta = torch.tensor([[scale, 0, offset], [0, scale, offset]], dtype=x.dtype).unsqueeze(0).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, [len(x), x.shape[1], dst.size, dst.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def chip_images(chips: np.ndarray, size: int, chunk: int = 256) -> Tensor:
    """``resize(to_tensor(chips), size)`` made ``chunk`` chips at a time (the same values: both are
    per image): 13,566 public chips as float at 150 px are 3.7 GB, at the 112-px target 2.0 GB."""
    out = torch.empty((len(chips), 3, size, size))
    for s in range(0, len(chips), chunk):
        out[s : s + chunk] = resize(to_tensor(chips[s : s + chunk]), size)
    return out

"""Pictures of attacks: what the attacker holds, rendered as images, and reconstruction grids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.data.chips import resize

log = logging.getLogger(__name__)


def visualise_held(t: Tensor, size: int) -> Tensor:
    """Render what the attacker holds as ``[B,3,size,size]``: images as they are (min-max scaled if
    outside [0,1]), feature/frequency maps as the first channel (grey, min-max), vectors as a
    heat-map grid."""
    t = t.detach().float()
    if t.ndim == 2:
        d = t.shape[1]
        w = int(np.ceil(np.sqrt(d)))
        v = F.pad(t, (0, w * w - d)).view(-1, 1, w, w)
    elif t.ndim == 4 and t.shape[1] == 3:
        v = t
    else:
        v = t[:, :1]
    lo = v.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = v.flatten(1).max(1).values.view(-1, 1, 1, 1)
    if v.shape[1] != 3 or lo.min() < 0 or hi.max() > 1:
        v = (v - lo) / (hi - lo).clamp_min(1e-12)
    v = F.interpolate(v, size=(size, size), mode="nearest" if t.ndim == 2 else "bilinear")
    return v.expand(-1, 3, -1, -1).clamp(0, 1)


def image_grid(rows: list[Tensor], path: Path, pad: int = 2) -> Path:
    """Save rows of equally sized images ``[N,3,S,S]`` as one PNG (atomically)."""
    from faceveil.data.io import write_image

    n, s = rows[0].shape[0], rows[0].shape[-1]
    canvas = torch.ones(3, len(rows) * (s + pad) + pad, n * (s + pad) + pad)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (s + pad), pad + c * (s + pad)
            canvas[:, y : y + s, x : x + s] = resize(row[c : c + 1], s)[0]
    arr = (canvas.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    write_image(path, arr)
    return path

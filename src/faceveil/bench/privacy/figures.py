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


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (at word boundaries)."""
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and font.getlength(trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def _label_font(size: int):
    """DejaVu Sans as matplotlib ships it (labels carry Greek letters: ε, σ, α, which PIL's built-in font draws as
    boxes); PIL's built-in font if matplotlib's cannot be found."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except (ImportError, ValueError, OSError):
        return ImageFont.load_default(size=size)


def image_grid(rows: list[Tensor], path: Path, pad: int = 2, labels: list[str] | None = None,
               label_width: int = 230) -> Path:
    """Save rows of equally sized images ``[N,3,S,S]`` as one PNG (atomically); ``labels``: one text per row,
    drawn in a left margin ``label_width`` pixels wide (so a reader need not count rows)."""
    from PIL import Image, ImageDraw

    from faceveil.data.io import write_image

    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} grid rows")
    n, s = rows[0].shape[0], rows[0].shape[-1]
    margin = label_width if labels else 0
    canvas = torch.ones(3, len(rows) * (s + pad) + pad, margin + n * (s + pad) + pad)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (s + pad), margin + pad + c * (s + pad)
            canvas[:, y : y + s, x : x + s] = resize(row[c : c + 1], s)[0]
    arr = (canvas.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    if labels:
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        size = max(9, min(13, s // 5))
        font = _label_font(size)
        for r, text in enumerate(labels):
            lines = _wrap(text, font, margin - 8)
            max_lines = max(1, (s - 2) // (size + 2))
            if len(lines) > max_lines:
                lines = lines[: max_lines - 1] + [lines[max_lines - 1] + " …"]
            y0 = pad + r * (s + pad) + max(0, (s - len(lines) * (size + 2)) // 2)
            for i, line in enumerate(lines):
                draw.text((4, y0 + i * (size + 2)), line, fill=(20, 20, 20), font=font)
        arr = np.asarray(img)
    write_image(path, arr)
    return path

"""Small real-face seed files for fuzzing the image decoders: one LFW face, 48x48, in every
format the decoders read (JPEG with EXIF orientation, PNG, 16-bit PNG, GIF, BMP, TIFF, WebP, PPM)."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, features

LFW_FACE = "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"


@lru_cache(maxsize=1)
def seed_files() -> dict[str, bytes]:
    """``{name with suffix: file bytes}``, made in memory from a real LFW face (never stored)."""
    from faceveil.config import data_dir

    face = Image.open(data_dir() / LFW_FACE).convert("RGB").crop((60, 60, 190, 190)).resize((48, 48), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257)
    out: dict[str, bytes] = {}

    def put(name: str, im: Image.Image, **kw) -> None:
        b = io.BytesIO()
        im.save(b, format=kw.pop("format"), **kw)
        out[name] = b.getvalue()

    put("face.jpg", face, format="JPEG", quality=85, exif=exif)
    put("face.png", face, format="PNG")
    put("face16.png", grey16, format="PNG")
    put("face.gif", face.convert("P"), format="GIF")
    put("face.bmp", face, format="BMP")
    put("face.tiff", face, format="TIFF", compression="tiff_deflate" if features.check("libtiff") else None)
    put("face.ppm", face, format="PPM")
    if features.check("webp"):
        put("face.webp", face, format="WEBP", quality=80)
    return out

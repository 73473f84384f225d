"""The one function every image read goes through."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from faceveil.errors import FaceveilDataError
from faceveil.storage import write_atomically

# Decompression-bomb guard: faces never need more than this many pixels.
MAX_PIXELS = 40_000_000
_OK_MODES = {"RGB", "L", "RGBA", "LA", "P", "I;16", "CMYK", "YCbCr", "1"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an RGB uint8 array of shape (H, W, 3).

    Greyscale, palette and RGBA convert to RGB (alpha composited on black is *not* done: alpha is
    dropped). A missing file, a non-image, a truncated/corrupt file, a decompression bomb or an
    unsupported mode raises :class:`FaceveilDataError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FaceveilDataError(f"{p}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise FaceveilDataError(
                        f"{p}: image of {w}x{h} pixels exceeds the {MAX_PIXELS:,}-pixel limit "
                        "(possible decompression bomb)"
                    )
                if im.mode not in _OK_MODES:
                    raise FaceveilDataError(f"{p}: unsupported image mode {im.mode!r}")
                im.load()  # forces a full decode: truncated files fail here
                rgb = im.convert("RGB")
    except FaceveilDataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FaceveilDataError(f"{p}: refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise FaceveilDataError(f"{p}: not an image file (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise FaceveilDataError(f"{p}: corrupt or truncated image ({e})") from e
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise FaceveilDataError(f"{p}: decoded to unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an (H,W,3) or (H,W) uint8 array, or a float array in [0,1], as PNG/JPEG by suffix.

    Atomic (:func:`faceveil.storage.write_atomically`): a killed process never leaves a truncated
    image under ``path``; a full disk or unwritable folder raises ``FaceveilOutputError``."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    write_atomically(path, lambda p: im.save(p))


def write_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an array as ``.npy`` atomically (like :func:`write_image`)."""
    a = np.asarray(arr)

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: np.save would append .npy to another suffix
            np.save(f, a, allow_pickle=False)

    write_atomically(path, write)

"""The one function every image read goes through."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from faceveil.errors import FaceveilDataError, FaceveilError
from faceveil.storage import write_atomically

#: Decompression-bomb guard: larger images are refused before decoding. Set from what this 2-core
#: machine processes (bench/detect_bounds.py; upscaled LFW photos): reading costs ~10 bytes a pixel
#: (PIL's 4-byte RGBX buffer plus the 3-byte array), i.e. 120 MP read in 1.0 s (JPEG) / 2.3 s
#: (PNG) at 1.2 GB peak, and read + detect + chip 4-6 s at 1.5 GB, since detection and the chip
#: warp work on bounded copies (data/align.py). 120 MP admits every camera in use up to 108 MP
#: phones (12000x9000) while keeping the worst case (no face: + the CNN's 1 GB) near 2.5 GB.
MAX_PIXELS = 120_000_000
#: Greyscale modes with more than 8 bits per pixel: rescaled from their real range (see _wide_grey_to_uint8).
_WIDE_GREY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_OK_MODES = {"RGB", "L", "RGBA", "LA", "P", "CMYK", "YCbCr", "1"} | _WIDE_GREY_MODES
_EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose)
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _wide_grey_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit greyscale -> uint8 by the values' real range: min..max maps linearly to 0..255.

    (PIL's own ``convert`` clips every value above 255 to white, so a 16-bit face becomes a white
    square.) A constant image maps to the 8-bit value of its level within the 16-bit range."""
    a = a.astype(np.float64, copy=False)
    lo, hi = float(a.min()), float(a.max())
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.full(a.shape, np.clip(lo / 257.0, 0, 255))
    return np.round(out).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an RGB uint8 array of shape (H, W, 3), upright.

    The EXIF orientation tag (phone photos) is applied, so the array is the image as viewers show
    it. Greyscale, palette and RGBA convert to RGB (alpha is dropped, not composited); 16-bit (and
    32-bit integer) greyscale is scaled to 8 bits by its real range, not clipped. A missing file, a
    non-image, a truncated/corrupt file or corrupt EXIF, a decompression bomb or an unsupported mode
    raises :class:`FaceveilDataError` naming the file; so does any other decoder failure (only
    ``MemoryError`` passes through, for the memory bound of :mod:`faceveil.limits`).
    """
    p = Path(path)
    if not p.is_file():
        raise FaceveilDataError(f"{p}: no such image file")
    return _decode(p, str(p))


#: encoded uploads larger than this are refused before decoding (a 120 MP JPEG is ~40 MB)
MAX_ENCODED_BYTES = 64 << 20


def decode_image(data: bytes, name: str = "image bytes") -> np.ndarray:
    """:func:`read_image` for encoded image bytes (uploads, payloads): the same checks, errors name ``name``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FaceveilDataError(f"{name}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise FaceveilDataError(f"{name}: empty (0 bytes)")
    if len(data) > MAX_ENCODED_BYTES:
        raise FaceveilDataError(f"{name}: {len(data):,} bytes exceeds the {MAX_ENCODED_BYTES:,}-byte limit")
    return _decode(io.BytesIO(bytes(data)), name)


def _decode(source, p: str) -> np.ndarray:
    """Decode ``source`` (a path or a binary file object) named ``p`` in errors."""
    try:
        with warnings.catch_warnings():
            # our MAX_PIXELS check below replaces PIL's warning (89 MP); PIL's error (179 MP) stays
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # PIL warns and reads on about damaged metadata (EXIF tags past the end of the file):
            # the pixels decode, so the image is kept; an unreadable orientation counts as upright
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(source) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise FaceveilDataError(
                        f"{p}: image of {w}x{h} pixels exceeds the {MAX_PIXELS:,}-pixel limit "
                        "(possible decompression bomb)"
                    )
                if im.mode not in _OK_MODES:
                    raise FaceveilDataError(f"{p}: unsupported image mode {im.mode!r}")
                im.load()  # forces a full decode: truncated files fail here
                try:
                    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                    method = _ORIENT.get(orientation) if isinstance(orientation, int) else None
                except Exception as e:  # noqa: BLE001 - any EXIF parser failure is corrupt metadata
                    raise FaceveilDataError(f"{p}: corrupt EXIF metadata ({type(e).__name__}: {e})") from e
                if im.mode in _WIDE_GREY_MODES:
                    rgb = Image.fromarray(_wide_grey_to_uint8(np.asarray(im)), mode="L").convert("RGB")
                else:
                    rgb = im if im.mode == "RGB" else im.convert("RGB")
                if method is not None:
                    rgb = rgb.transpose(method)
                arr = np.asarray(rgb, dtype=np.uint8)
    except (FaceveilError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FaceveilDataError(f"{p}: refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise FaceveilDataError(f"{p}: not an image file (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise FaceveilDataError(f"{p}: corrupt or truncated image ({e})") from e
    except Exception as e:  # noqa: BLE001 - a decoder bug on hostile input is still bad input
        raise FaceveilDataError(f"{p}: corrupt image, the decoder failed ({type(e).__name__}: {e})") from e
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

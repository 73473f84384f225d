"""Every bad image input becomes a FaceveilDataError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceveil.data.io import MAX_PIXELS, read_image
from faceveil.errors import FaceveilDataError


def test_reads_real_lfw_image(data_root):
    img = read_image(data_root / "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
    assert img.shape == (250, 250, 3) and img.dtype == np.uint8


def test_missing_file(tmp_path):
    with pytest.raises(FaceveilDataError, match="no such image"):
        read_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    p = tmp_path / "text.jpg"
    p.write_text("hello, I am not a JPEG")
    with pytest.raises(FaceveilDataError, match=r"text\.jpg.*not an image"):
        read_image(p)


def test_truncated_jpeg(tmp_path, data_root):
    src = (data_root / "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg").read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(src[: len(src) // 3])
    with pytest.raises(FaceveilDataError, match=r"cut\.jpg.*(corrupt|truncated)"):
        read_image(p)


def test_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.png"
    side = int(np.sqrt(MAX_PIXELS)) + 100
    Image.new("1", (side, side)).save(p)  # tiny file, huge pixel count
    assert p.stat().st_size < 2_000_000
    with pytest.raises(FaceveilDataError, match=r"bomb\.png.*(bomb|limit)"):
        read_image(p)


def test_unsupported_mode(tmp_path):
    p = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(p)
    with pytest.raises(FaceveilDataError, match=r"float\.tiff.*unsupported image mode"):
        read_image(p)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_modes_convert_to_rgb(tmp_path, mode):
    p = tmp_path / f"img_{mode}.png"
    Image.new(mode, (10, 7)).save(p)
    img = read_image(p)
    assert img.shape == (7, 10, 3) and img.dtype == np.uint8


LFW_A = "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
#: the transpose that turns an upright image into the pixels a camera stores with each EXIF orientation
_STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def _save_oriented(upright: Image.Image, path, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORE[orientation]) if orientation in _STORE else upright
    stored.save(path, exif=exif, **kw)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil_exif_transpose(tmp_path, orientation):
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    upright = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    p = tmp_path / f"o{orientation}.png"
    _save_oriented(upright, p, orientation)
    with Image.open(p) as im:
        assert im.getexif()[0x0112] == orientation
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_image(p)
    assert np.array_equal(got, ref)
    assert np.array_equal(got, np.asarray(upright))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_phone_photo_is_read_upright(tmp_path, data_root, orientation):
    """A real face stored rotated with an EXIF orientation tag (as phones do): read upright, the
    face is found and its chip matches the unrotated image's."""
    from faceveil.data.align import align_image, detect
    from faceveil.errors import FaceNotFoundError
    from faceveil.models.base import CropSpec

    src = read_image(data_root / LFW_A)
    p = tmp_path / f"phone_{orientation}.jpg"
    _save_oriented(Image.fromarray(src), p, orientation, quality=95)
    with Image.open(p) as im:
        stored = np.asarray(im.convert("RGB"))
    if orientation in (6, 8):
        with pytest.raises(FaceNotFoundError):  # the raw pixels hold a sideways face
            detect(stored, cnn=False)
    img = read_image(p)
    assert img.shape == src.shape
    assert np.abs(img.astype(int) - src.astype(int)).mean() < 2  # JPEG re-encoding only
    crop = CropSpec(150, 0.25)
    chip, lm = align_image(img, crop)
    chip0, lm0 = align_image(src, crop)
    assert np.abs(lm.points - lm0.points).max() <= 2
    assert np.abs(chip.astype(int) - chip0.astype(int)).mean() < 5  # a landmark may move by a pixel


def test_odd_exif_orientation_values_are_ignored(tmp_path):
    for i, value in enumerate([0, 9, 65535]):
        p = tmp_path / f"odd{i}.png"
        exif = Image.Exif()
        exif[0x0112] = value
        Image.new("RGB", (6, 4), (1, 2, 3)).save(p, exif=exif)
        assert read_image(p).shape == (4, 6, 3)


def _grey16_file(tmp_path, grey8: np.ndarray, mode: str):
    """A 16/32-bit greyscale file from 8-bit grey values, using only part of the wide range."""
    if mode == "I;16":  # 12-bit sensor data in a 16-bit PNG
        p, im = tmp_path / "g16.png", Image.fromarray(grey8.astype(np.uint16) * 16 + 5)
    elif mode == "I;16B":  # big-endian 16-bit TIFF
        a = (grey8.astype(np.uint16) * 200 + 1000).astype(">u2")
        p, im = tmp_path / "g16b.tiff", Image.frombytes("I;16B", grey8.shape[::-1], a.tobytes())
    else:  # 32-bit signed TIFF with negative values
        p, im = tmp_path / "g32.tiff", Image.fromarray(grey8.astype(np.int32) * 1000 - 50_000)
    im.save(p)
    with Image.open(p) as back:
        assert back.mode == mode
    return p


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_wide_greyscale_scaled_by_real_range(tmp_path, data_root, mode):
    from faceveil.data.align import detect

    rgb = read_image(data_root / LFW_A)
    grey8 = np.asarray(Image.fromarray(rgb).convert("L"))
    p = _grey16_file(tmp_path, grey8, mode)
    lo, hi = float(grey8.min()), float(grey8.max())
    expected = np.round((grey8 - lo) * 255 / (hi - lo)).astype(np.uint8)
    with Image.open(p) as im:
        clipped = np.asarray(im.convert("L"))
    assert np.abs(clipped.astype(int) - expected).mean() > 50  # PIL's own conversion clips to 0..255
    img = read_image(p)
    assert img.shape == (*grey8.shape, 3) and img.dtype == np.uint8
    assert np.abs(img[..., 0].astype(int) - expected).max() <= 1
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert np.abs(detect(img).points - detect(rgb).points).max() <= 3  # the face is found where it is


def test_constant_wide_greyscale(tmp_path):
    p = tmp_path / "flat16.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(p)
    assert (read_image(p) == 128).all()  # its level in the 16-bit range: 32768 / 257

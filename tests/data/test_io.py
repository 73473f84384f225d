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

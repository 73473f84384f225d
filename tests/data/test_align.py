"""Our torch warp reproduces dlib.get_face_chip; detection failures are explicit."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.data.align import STATUS_FALLBACK, align_image, chips_from_images, detect
from faceveil.data.io import read_image
from faceveil.errors import FaceNotFoundError
from faceveil.models.base import CropSpec


@pytest.fixture(scope="module")
def dlib_tools():
    import dlib
    import face_recognition_models as frm

    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(frm.pose_predictor_five_point_model_location())


@pytest.mark.parametrize("size", [150, 112])
def test_chips_match_dlib(lfw, dlib_tools, size):
    dlib, det, sp = dlib_tools
    ds = lfw.dataset()
    files = [ds.root / ds.files[i] for i in lfw.pair_images()[::500][:16]]
    imgs, lms, refs = [], [], []
    for f in files:
        img = read_image(f)
        lm = detect(img)
        rect = dlib.rectangle(*lm.rect)
        refs.append(dlib.get_face_chip(img, sp(img, rect), size=size, padding=0.25))
        imgs.append(img)
        lms.append(lm)
    ours = chips_from_images(imgs, lms, CropSpec(size, 0.25)).astype(np.int32)
    diff = np.abs(ours - np.stack(refs).astype(np.int32))
    assert diff.reshape(len(files), -1).mean(1).max() <= 1.0
    assert diff.mean() < 0.05  # in practice almost every pixel is identical


def test_no_face_raises_and_fallback_is_flagged():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 180, 3), dtype=np.uint8)
    with pytest.raises(FaceNotFoundError, match="no face"):
        detect(noise, source="noise.png")
    chip, lm = align_image(noise, CropSpec(64, 0.25), fallback=True)
    assert lm.fallback and lm.status == STATUS_FALLBACK
    assert chip.shape == (64, 64, 3) and chip.dtype == np.uint8


def test_downscaled_targets(lfw_sample):
    sub, chips150 = lfw_sample
    for size in (112, 64):
        chips, status = sub.subset(range(4)).chips(CropSpec(size, 0.25), progress=False)
        assert chips.shape == (4, size, size, 3) and (status >= 0).all()
        # same geometry as the 150 chip: the downscaled 150 chip is close
        from PIL import Image

        small = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in chips150[:4]])
        assert np.abs(small.astype(int) - chips.astype(int)).mean() < 12


def test_row_store_concurrent_appends_stay_aligned(tmp_path, monkeypatch):
    """Two stores opened before either appends (two `bench --jobs` workers) must not lose or
    misalign each other's rows, and rows an interrupted append left beyond the index are dropped."""
    from faceveil.data.align import _RowStore
    from faceveil.storage import write_atomically

    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path))
    a, b = _RowStore("t", ["v"]), _RowStore("t", ["v"])
    a.append(["x", "y"], {"v": np.array([1, 2])})
    b.append(["z", "x"], {"v": np.array([3, 99])})  # "x" already stored by a: kept as a wrote it
    c = _RowStore("t", ["v"])
    assert c.files == ["x", "y", "z"]
    assert np.asarray(c.get("v")[c.rows(["x", "y", "z"])]).tolist() == [1, 2, 3]
    # an append interrupted after the arrays, before the index
    write_atomically(c._path("v"), lambda p: np.save(p, np.array([1, 2, 3, 77])), checksum=True)
    c.append(["w"], {"v": np.array([4])})
    d = _RowStore("t", ["v"])
    assert np.asarray(d.get("v")[d.rows(["x", "y", "z", "w"])]).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["bit-flip", "truncated", "no-sidecar"])
@pytest.mark.parametrize("field", ["chips", "points", "index"])
def test_damaged_row_store_is_reported_and_rebuilt(tmp_path, monkeypatch, lfw, caplog, how, field):
    """A flipped byte, a cut or a missing checksum in the aligned-chip or landmark store: a warning names the
    file, the store is rebuilt, the chips are the same as before (never a silently wrong pixel)."""
    from faceveil.models.base import CropSpec
    from faceveil.storage import sidecar

    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path))
    monkeypatch.delenv("FACEVEIL_ADOPT_UNVERIFIED", raising=False)
    sub = lfw.dataset().subset(np.arange(3))
    chips, status = sub.chips(CropSpec(112, 0.25), progress=False)
    name = {"chips": "*chips112*.chips.npy", "points": "*landmarks.points.npy", "index": "*landmarks.index.json"}[field]
    (path,) = (tmp_path / "align").glob(name)
    data = bytearray(path.read_bytes())
    if how == "bit-flip":
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        sidecar(path).unlink()
    caplog.clear()
    again, status2 = sub.chips(CropSpec(112, 0.25), progress=False)
    assert np.array_equal(again, chips) and np.array_equal(status2, status)
    assert str(path) in caplog.text and "rebuilding" in caplog.text
    caplog.clear()
    sub.chips(CropSpec(112, 0.25), progress=False)
    assert caplog.text == ""  # rebuilt with good checksums

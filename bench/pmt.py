"""PMT protection cost on this CPU: ms per face for K iterations of Algorithm 1/2 (the user's side:
K forward/backward passes of the authorised shallow model E_c, plus one no-grad forward per
iteration for the augmentation target), at batch 1 and batch 32, beside one full embedding by the
same recogniser and the ratio, measured in one run.

    OMP_NUM_THREADS=1 python bench/pmt.py [--models dlib,mobilefacenet,faceres] [--iterations 100]
                                          [--augment noise] [--n 32] [--mr]

``--mr`` also times MR-PMT over all the listed models (x~ in the first one's crop).
"""

from __future__ import annotations

import argparse

import torch

from faceveil.bench.timing import per_face_ms
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses import get_defense


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dlib,mobilefacenet,faceres")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--augment", default="noise", choices=("none", "noise", "affine", "mix"))
    ap.add_argument("--n", type=int, default=32, help="LFW faces timed at batch 32 (batch 1 times the first 4)")
    ap.add_argument("--mr", action="store_true", help="also time MR-PMT over all listed models")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lfw = LFW()
    idx = lfw.pair_images()[: args.n]
    configs = [(m, {"model": m}) for m in args.models.split(",") if m]
    if args.mr and len(configs) > 1:
        configs.append(("MR:" + "+".join(m for m, _ in configs), {"model": configs[0][0], "models": args.models}))
    print(f"{len(idx)} LFW chips, torch threads = {torch.get_num_threads()}, K = {args.iterations}, augment = {args.augment}")
    print(f"{'PMT for':<34} {'cut':<24} {'batch':>5} {'embedding':>12} {'PMT (K its)':>14} {'per iteration':>14} {'ratio':>8}")
    g = torch.Generator()
    for label, kw in configs:
        d = get_defense("pmt", iterations=args.iterations, augment=args.augment, **kw)
        chips, _ = lfw.dataset().subset(idx).chips(d.recognizer.crop, progress=False)
        x = to_tensor(chips)
        for batch in (1, 32):
            xs = x[:4] if batch == 1 else x
            with torch.no_grad():
                emb = per_face_ms(lambda b, d=d: d.recognizer(b), xs, batch)
            prot = per_face_ms(lambda b, d=d: d.protect(b, g.manual_seed(0)), xs, batch)
            cut = d.cut if len(d.cut) <= 24 else "…" + d.cut[-23:]
            print(f"{label:<34} {cut:<24} {batch:>5} {emb:>9.2f} ms {prot:>11.0f} ms "
                  f"{prot / args.iterations:>11.2f} ms {prot / emb:>7.0f}x")
    print("Each PMT face costs K forward+backward passes through E_c (plus a forward for the augmented target).")


if __name__ == "__main__":
    main()

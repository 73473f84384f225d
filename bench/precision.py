"""fp32 vs bf16 (``--precision``) in one run: ms per face of the deployed recogniser's embedding and ms per
training step of the ``dn`` decoder, and how far bf16's embeddings are from fp32's (real faces).

    PYTHONPATH=src FACEVEIL_DATA=../shared/data python bench/precision.py [--threads 1] [--faces 64]

Prints the ratios measured in this run (this machine is noisy: compare within one run, not across runs).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (one-time kernel selection)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from faceveil.attacks import get_attack
    from faceveil.data.align import to_tensor
    from faceveil.data.datasets import public_chips
    from faceveil.devices import PRECISION_ENV, autocast, device_name
    from faceveil.models import deployed_recognizer

    rec = deployed_recognizer(None)
    x = to_tensor(public_chips(limit=args.faces, progress=False))
    net = get_attack("dn", target_size=64).build((128,))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    p, y = torch.randn(32, 128, generator=g), torch.rand(32, 3, 64, 64, generator=g)

    def step() -> None:
        with autocast(torch.device("cpu")):
            loss = ((net(p).float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows, emb = {}, {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved: load changes hit both alike
        os.environ[PRECISION_ENV] = precision
        e_ms = 1000 * _time(lambda k=precision: emb.__setitem__(k, rec.embed(x)), 2) / len(x)
        s_ms = 1000 * _time(step, args.steps)
        rows.setdefault(precision, []).append((e_ms, s_ms))
    cos = torch.nn.functional.cosine_similarity(emb["bf16"], emb["fp32"])
    dist = (torch.cdist(emb["bf16"], emb["bf16"]) - torch.cdist(emb["fp32"], emb["fp32"])).abs().max()
    best = {k: (min(a for a, _ in r), min(b for _, b in r)) for k, r in rows.items()}  # fastest of two rounds
    print(f"{device_name()}; {args.faces} public faces; dn batch 32 at 64 px")
    for precision, (e, s) in best.items():
        print(f"{precision}: embedding {e:.2f} ms/face, dn training {s:.1f} ms/step")
    print(f"bf16 speed-up: embedding {best['fp32'][0] / best['bf16'][0]:.2f}x, dn training "
          f"{best['fp32'][1] / best['bf16'][1]:.2f}x; bf16 vs fp32 embeddings: min cosine {cos.min():.6f}, "
          f"max pairwise-distance change {dist:.4f}")

if __name__ == "__main__":
    main()

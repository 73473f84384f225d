"""AdvFace protection cost on this CPU: ms per face for the server's adversarial-feature step
(eq. 4 + 40 PGD iterations through the shadow model) at batch 1 and batch 32, beside the client's
``E(x)`` and a plain dlib embedding, and their ratio, in one run. The paper reports 286.98 ms per
face on a GPU.

    OMP_NUM_THREADS=1 python bench/advface.py [--shadow resrec] [--n 32] [--iterations 40] [--trained]

Without ``--trained`` the shadow is an untrained network of the same architecture (the cost does
not depend on its weights; no training needed); with it, the cached quick-profile shadow is used
(trained on first use).
"""

from __future__ import annotations

import argparse

import torch

from faceveil.attacks import get_attack
from faceveil.attacks.base import profile_budget
from faceveil.bench.timing import per_face_ms
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses import get_defense
from faceveil.models import get_recognizer
from faceveil.models.base import CropSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shadow", default="resrec", choices=("transrec", "resrec", "urec"))
    ap.add_argument("--n", type=int, default=32, help="LFW faces timed (batch-1 timing uses the first 8)")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--profile", default="quick", help="shadow profile (target size 64 for ci/quick, 112 for full)")
    ap.add_argument("--trained", action="store_true", help="use the cached trained shadow (trains it if missing)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lfw = LFW()
    chips, _ = lfw.dataset().subset(lfw.pair_images()[: args.n]).chips(CropSpec(150, 0.25), progress=False)
    x = to_tensor(chips)
    model = get_recognizer("dlib")
    kw: dict = {"iterations": args.iterations, "shadow": args.shadow, "profile": args.profile, "recognizer": model}
    if not args.trained:
        size = profile_budget(args.profile).target_size
        extra = {"client": model.split("res1")[0]} if args.shadow == "transrec" else {}
        kw["shadow_model"] = get_attack(args.shadow, target_size=size, **extra).build((32, 35, 35))
    d = get_defense("advface", **kw)
    d.shadow_network()
    with torch.no_grad():
        z = d.protect(x)

    print(f"{len(x)} LFW chips, torch threads = {torch.get_num_threads()}, shadow {args.shadow} "
          f"({'trained' if args.trained else 'untrained, same cost'}), {args.iterations} PGD iterations")
    rows = []
    for batch in (1, 32):
        xs, zs = (x[:8], z[:8]) if batch == 1 else (x, z)
        with torch.no_grad():
            emb = per_face_ms(lambda b: model(b), xs, batch)
            client = per_face_ms(lambda b: d.protect(b), xs, batch)
        server = per_face_ms(lambda b: d.protect_stored(b), zs, min(batch, len(zs)))
        rows.append((batch, emb, client, server))
    print(f"{'batch':>5} {'dlib embedding':>15} {'client E(x)':>12} {'AdvFace server step':>20} {'ratio step/embedding':>21}")
    for batch, emb, client, server in rows:
        print(f"{batch:>5} {emb:>12.2f} ms {client:>9.2f} ms {server:>17.1f} ms {server / emb:>20.1f}x")
    print("paper: 286.98 ms per face for AdvFace on a GPU")


if __name__ == "__main__":
    main()

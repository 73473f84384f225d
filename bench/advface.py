"""AdvFace protection cost on this CPU: ms per face for the server's adversarial-feature step
(eq. 4 + 40 PGD iterations through the shadow model) at batch 1 and batch 32, beside the client's
``E(x)`` and a plain dlib embedding, and their ratio, in one run. The paper reports 286.98 ms per
face on a GPU.

    OMP_NUM_THREADS=1 python bench/advface.py [--shadow resrec] [--n 32] [--iterations 40] [--trained]
    OMP_NUM_THREADS=1 python bench/advface.py --table2 [--profile quick]

``--table2`` instead measures Table 2's AdvFace rows on all 6,000 LFW pairs with the profile's trained
shadow, through the experiment's own functions (:mod:`faceveil.bench.experiments.advface`; stored
features and the retrained server are cached): unprotected, online, offline with the frozen Ψ, and
offline with Ψ retrained on adversarial features (the profile's offline budget).

Without ``--trained`` the shadow is an untrained network of the same architecture (the cost does
not depend on its weights; no training needed); with it, the cached quick-profile shadow is used
(trained on first use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from faceveil.attacks import get_attack
from faceveil.attacks.base import profile_budget
from faceveil.bench.timing import per_face_ms
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses import get_defense
from faceveil.models import get_recognizer
from faceveil.models.base import CropSpec


def table2(profile: str, out: Path) -> None:
    """Table 2's AdvFace rows on every LFW pair (the experiment's quick/full Table 2 caps the pairs)."""
    from faceveil.bench.experiments.advface import ADV_BUDGETS, AT, advface, offline_server, utility_at
    from faceveil.bench.experiments.common import experiment_context

    ctx = experiment_context(profile, out)
    adv = advface(ctx)
    off = adv.with_mode("offline")
    model = offline_server(off, ctx, ADV_BUDGETS[profile])
    rows = [("unprotected (dlib ResNet)", "98.13", utility_at(get_defense("none", transmit=AT), ctx, None)),
            ("AdvFace online (deployed Ψ)", "96.43", utility_at(adv, ctx, None)),
            ("AdvFace offline, frozen Ψ", "", utility_at(off, ctx, None)),
            ("AdvFace offline, Ψ retrained", "97.78", utility_at(off, ctx, None, "adapted", model))]
    print(f"AdvFace ({profile} shadow), LFW 10-fold on every pair")
    print(f"{'system':<32} {'acc %':>14} {'TPR@1e-3':>9} {'pairs':>6} {'paper':>6}")
    for label, paper, u in rows:
        print(f"{label:<32} {100 * u['acc_mean']:>7.2f} ± {100 * u['acc_std']:.2f} {100 * u['tpr_at_fpr_1e3']:>8.1f}% "
              f"{u['n_pairs']:>6} {paper:>6}")
    (out / "table2.json").write_text(json.dumps({label: u for label, _, u in rows}, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shadow", default="resrec", choices=("transrec", "resrec", "urec"))
    ap.add_argument("--n", type=int, default=32, help="LFW faces timed (batch-1 timing uses the first 8)")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--profile", default="quick", help="shadow profile (target size 64 for ci/quick, 112 for full)")
    ap.add_argument("--trained", action="store_true", help="use the cached trained shadow (trains it if missing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table2", action="store_true", help="LFW accuracy rows of Table 2 on all 6,000 pairs instead")
    ap.add_argument("--out", type=Path, default=Path("results/advface-table2"), help="--table2 output folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.table2:
        table2(args.profile, args.out)
        return

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

"""AdvFace protection cost on this CPU: ms per face for the server's adversarial-feature step
(eq. 4 + 40 PGD iterations through the shadow model) at batch 1 and batch 32, beside the client's
``E(x)`` and a plain dlib embedding, and their ratio, in one run. The paper reports 286.98 ms per
face on a GPU.

    OMP_NUM_THREADS=1 python bench/advface.py [--shadow resrec] [--n 32] [--iterations 40] [--trained]
    OMP_NUM_THREADS=1 python bench/advface.py --table2 [--profile quick]
    OMP_NUM_THREADS=1 python bench/advface.py --precision [--profile full] [--n 64]

``--table2`` instead measures Table 2's AdvFace rows on all 6,000 LFW pairs with the profile's trained
shadow, through the experiment's own functions (:mod:`faceveil.bench.experiments.advface`; stored
features and the retrained server are cached): unprotected, online, offline with the frozen Ψ, and
offline with Ψ retrained on adversarial features (the profile's offline budget).

``--precision`` compares PGD in float32 and under CPU bfloat16 autocast (``AdvFace(precision=...)``)
on the first ``n`` LFW pair images with the profile's trained shadow, in one run: ms per face at batch
32, the shadow objective reached (mean ``|S(z_adv) − x̃|`` per pixel, what PGD maximises), the
cosine of ``Ψ(z_adv)`` to ``Ψ(z)`` (what online recognition keeps), and the reconstruction of the
paper's plain-z resrec attacker from the stored features (PSNR / SSIM vs the face; the profile's
cached attacker, trained on first use).

Without ``--trained`` the shadow is an untrained network of the same architecture (the cost does
not depend on its weights; no training needed); with it, the cached quick-profile shadow is used
(trained on first use).
"""

from __future__ import annotations

import argparse
import json
import time
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


def table2(profile: str, out: Path, bound: str = "step") -> None:
    """Table 2's AdvFace rows on every LFW pair (the experiment's quick/full Table 2 caps the pairs), with ε read
    per PGD iteration (``bound="step"``, the paper's eqs. 5-6) or as a total ball; written to
    ``out/table2-<bound>-<profile>.json`` (and printed)."""
    from faceveil.bench.experiments.advface import ADV_BUDGETS, AT, advface, offline_server, utility_at
    from faceveil.bench.experiments.common import experiment_context
    from faceveil.storage import write_text_atomic

    ctx = experiment_context(profile, out)
    adv = advface(ctx, bound=bound)
    off = adv.with_mode("offline")
    model = offline_server(off, ctx, ADV_BUDGETS[profile])
    rows = [("unprotected (dlib ResNet)", "98.13", utility_at(get_defense("none", transmit=AT), ctx, None)),
            ("AdvFace online (deployed Ψ)", "96.43", utility_at(adv, ctx, None)),
            ("AdvFace offline, frozen Ψ", "", utility_at(off, ctx, None)),
            ("AdvFace offline, Ψ retrained", "97.78", utility_at(off, ctx, None, "adapted", model))]
    print(f"AdvFace ({profile} shadow, ε bound per {'iteration' if bound == 'step' else 'total ball'}), LFW 10-fold on every pair")
    print(f"{'system':<32} {'acc %':>14} {'TPR@1e-3':>9} {'pairs':>6} {'paper':>6}")
    for label, paper, u in rows:
        print(f"{label:<32} {100 * u['acc_mean']:>7.2f} ± {100 * u['acc_std']:.2f} {100 * u['tpr_at_fpr_1e3']:>8.1f}% "
              f"{u['n_pairs']:>6} {paper:>6}")
    write_text_atomic(out / f"table2-{bound}-{profile}.json", json.dumps(
        {"profile": profile, "bound": bound, "command": f"OMP_NUM_THREADS=1 python bench/advface.py --table2 --profile {profile} "
         f"--bound {bound}", "rows": {label: {"paper": paper, **u} for label, paper, u in rows}}, indent=1, default=str))


def precision_check(profile: str, n: int, out: Path) -> None:
    """float32 vs bfloat16-autocast PGD: speed and protection on the same faces (see the module docstring)."""
    import torch.nn.functional as F

    from faceveil.bench.experiments.advface import advface, plain_attacker
    from faceveil.bench.experiments.common import experiment_context
    from faceveil.data.chips import chip_images
    from faceveil.defenses.advface import batch_statistics
    from faceveil.metrics.image import psnr, ssim

    ctx = experiment_context(profile, out)
    attacker, _ = plain_attacker("resrec", ctx)
    lfw = LFW()
    base = advface(ctx)
    chips, _ = lfw.dataset().subset(lfw.pair_images()[:n]).chips(base.recognizer.crop, progress=False)
    x = to_tensor(chips)
    with torch.no_grad():
        z = base.protect(x)
        emb = F.normalize(base.server_network()(z), dim=1)
    target = chip_images(chips, attacker.target_size)
    results = {}
    for prec in ("fp32", "bf16"):
        d = advface(ctx, precision=prec).enable_memo(0)
        S = d.shadow_network()
        batches = [z[i:i + 32] for i in range(0, n, 32)]
        t0 = time.perf_counter()  # the stored features themselves are timed: no extra PGD run for the clock
        zs = torch.cat([d.protect_stored(b) for b in batches])
        ms = 1000 * (time.perf_counter() - t0) / n
        x_rec, z0 = (torch.cat(t) for t in zip(*map(d.reconstruct_and_reencode, batches), strict=True))
        with torch.no_grad(), batch_statistics(S):  # the objective under the batch statistics PGD used
            obj = torch.cat([(S(zs[i:i + 32]) - x_rec[i:i + 32]).abs().mean((1, 2, 3)) for i in range(0, n, 32)])
        with torch.no_grad():
            cos = (F.normalize(d.server_network()(zs), dim=1) * emb).sum(1)
            rec = attacker.attack(zs).clamp(0, 1)
        results[prec] = zs
        print(f"{prec}: {ms:7.1f} ms/face (batch 32) | max |z_adv - z0| {(zs - z0).abs().max():.3f} (eps {d.eps_abs:g}) | "
              f"shadow objective {obj.mean():.4f} | cos(Psi(z_adv), Psi(z)) {cos.mean():.4f} | plain resrec attacker "
              f"PSNR {psnr(rec, target, 1.0).mean():.2f} SSIM {ssim(rec, target, 1.0).mean():.3f}")
    diff = (results["fp32"] - results["bf16"]).abs()
    print(f"{n} LFW faces, profile {profile}: fp32 vs bf16 stored features differ in {100 * (diff > 1e-6).float().mean():.1f}% "
          f"of coordinates (mean |diff| {diff.mean():.4f}); ε-ball diameter {2 * base.eps_abs:g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shadow", default="resrec", choices=("transrec", "resrec", "urec"))
    ap.add_argument("--n", type=int, default=32, help="LFW faces timed (batch-1 timing uses the first 8)")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--profile", default="quick", help="shadow profile (target size 64 for ci/quick, 112 for full)")
    ap.add_argument("--trained", action="store_true", help="use the cached trained shadow (trains it if missing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table2", action="store_true", help="LFW accuracy rows of Table 2 on all 6,000 pairs instead")
    ap.add_argument("--bound", default="step", choices=("step", "total"), help="--table2: ε per PGD iteration or total")
    ap.add_argument("--out", type=Path, default=Path("results/advface-table2"), help="--table2 output folder")
    ap.add_argument("--precision", action="store_true", help="fp32 vs bf16-autocast PGD (speed and protection) instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.precision:
        precision_check(args.profile, args.n, Path("results/advface-precision"))
        return
    if args.table2:
        table2(args.profile, args.out, args.bound)
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

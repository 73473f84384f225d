"""DeepBlur on this CPU: optimiser comparison (the paper's Fig. 7), ms per face, the sigma grid
(Figs. 8-9), the generator frame measurement, the generator comparison, and the paper tables.

    OMP_NUM_THREADS=1 python bench/deepblur.py fig7 [--n 4] [--steps 10] [--first-order-steps 40]
    OMP_NUM_THREADS=1 python bench/deepblur.py grid [--n 6] [--space feature]
    OMP_NUM_THREADS=1 python bench/deepblur.py frame [--n 300]
    OMP_NUM_THREADS=1 python bench/deepblur.py generators [--n 6] [--train-seconds 900]
    OMP_NUM_THREADS=1 python bench/deepblur.py tables [--profile ci|quick|paper|celeba200]

Faces are LFW pair images (fixed, spread over the list), dlib 150x150 chips. Outputs go to
``--out`` (default ``results/deepblur``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from faceveil.bench.privacy import image_grid
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses import get_defense
from faceveil.defenses.deepblur import DEFAULT_LR, OPTIMIZERS, InversionLog
from faceveil.models.base import CropSpec

SIGMAS = (0.0, 0.5, 1.0, 2.0, 5.0, 100.0)


def lfw_faces(n: int, offset: int = 0) -> torch.Tensor:
    lfw = LFW()
    idx = lfw.pair_images()
    idx = idx[offset :: max(1, len(idx) // n)][:n]
    chips, _ = lfw.dataset().subset(idx).chips(CropSpec(150, 0.25), progress=False)
    return to_tensor(chips)


def fig7(args: argparse.Namespace) -> None:
    """Loss vs iterations and vs time for L-BFGS / Adam / AdaGrad / SGD-momentum from the average face."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = lfw_faces(args.n)
    res = {}
    for opt in OPTIMIZERS:
        steps = args.steps if opt == "lbfgs" else args.first_order_steps
        d = get_defense("deepblur", optimizer=opt, steps=steps, space=args.space, chunk=1)
        d.average_latent()
        log = InversionLog()
        t0 = time.perf_counter()
        w = d.invert(x, log)
        ms = 1000 * (time.perf_counter() - t0) / len(x)
        final = float(d.inversion_loss(x, w).mean())
        curve = log.per_iteration()
        # loss vs time: mean over faces of the best loss so far, on a common time grid
        grid_t = np.linspace(0, max(r["seconds"][-1] for r in log.runs), 60)
        per_face = []
        for r in log.runs:
            best = np.minimum.accumulate(np.array(r["loss"]) / r["faces"][0])
            per_face.append(np.interp(grid_t, r["seconds"], best))
        res[opt] = {"steps": steps, "lr": DEFAULT_LR[opt], "ms_per_face": ms, "evals_per_face": log.evaluations / len(x),
                    "final_loss": final, "per_iteration": curve, "time": grid_t.tolist(),
                    "loss_vs_time": np.mean(per_face, 0).tolist()}
        print(f"{opt:8s} steps {steps:3d}  lr {DEFAULT_LR[opt]:<5g} loss {curve[0]:.3f} -> {final:.3f}  "
              f"{log.evaluations / len(x):5.1f} evaluations/face  {ms:7.0f} ms/face", flush=True)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for opt, r in res.items():
        ax[0].plot(range(len(r["per_iteration"])), r["per_iteration"], "o-" if opt == "lbfgs" else "-", ms=3, label=opt)
        ax[1].plot(r["time"], r["loss_vs_time"], label=opt)
    ax[0].set_xlabel("iteration")
    ax[1].set_xlabel("seconds per face (1 CPU thread, shared machine)")
    for a in ax:
        a.set_ylabel("search loss (mean per face)")
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle(f"DeepBlur latent search ({args.space} space), {len(x)} LFW faces — cf. paper Fig. 7")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"fig7_{args.space}.png", dpi=110)
    (out / f"fig7_{args.space}.json").write_text(json.dumps(res, indent=2))
    d = get_defense("deepblur", space=args.space)
    t0 = time.perf_counter()
    d.protect(x[:2])
    print(f"DeepBlur protect() with defaults ({d.optimizer}, {d.steps} steps, {d.space}): "
          f"{1000 * (time.perf_counter() - t0) / 2:.0f} ms/face (latent search dominates)")
    print(f"wrote {out / f'fig7_{args.space}.png'}")


def grid(args: argparse.Namespace) -> None:
    """Rows: original, then sigma in SIGMAS (0 = the inversion; 100 = the average face), then the
    whole-chip regeneration at sigma 0; one column per face."""
    x = lfw_faces(args.n)
    out = Path(args.out)
    for space in args.spaces.split(","):
        d = get_defense("deepblur", space=space)
        t0 = time.perf_counter()
        w = d.invert(x)
        ms = 1000 * (time.perf_counter() - t0) / len(x)
        outs = d.protect_sigmas(x, list(SIGMAS), w)
        whole = get_defense("deepblur", space=space, background="generated").paste(d.regenerate(w), x)
        p = image_grid([x, *outs.values(), whole], out / f"sigma_grid_{space}.png")
        avg = d.paste(d.regenerate(d.average_latent()[None]), x[:1])
        mean_face = d.paste(d.regenerate(d.gen.mean_latent(space)[None]), x[:1])
        image_grid([avg, mean_face], out / f"average_face_{space}.png")
        loss = d.inversion_loss(x, w)
        print(f"{space}: rows original, sigma {', '.join(f'{s:g}' for s in SIGMAS)}, whole chip (sigma 0); "
              f"search loss {float(loss.mean()):.3f}; {ms:.0f} ms/face; wrote {p}")


def frame(args: argparse.Namespace) -> None:
    """Measure the generator's output frame with dlib landmarks (see faceveil.models.generators)."""
    import torch.nn.functional as F

    from faceveil.data.align import TEMPLATE_5, detect, similarity_transform
    from faceveil.errors import FaceNotFoundError
    from faceveil.models.generators import get_generator, to_uint8

    g = get_generator(args.generator)
    faces = g.sample(args.n, torch.Generator().manual_seed(1))
    up = F.interpolate(faces, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    k = up.shape[-1] / faces.shape[-1]
    rows = []
    for img in to_uint8(up):
        try:
            lm = detect(img, cnn=False)
        except FaceNotFoundError:
            continue
        s = similarity_transform(TEMPLATE_5, (lm.points + 0.5) / k - 0.5)
        rows.append((np.hypot(s[0, 0], s[1, 0]), np.degrees(np.arctan2(s[1, 0], s[0, 0])), s[0, 2], s[1, 2]))
    r = np.array(rows)
    med = np.median(r, 0)
    print(f"{len(r)} of {args.n} samples detected; median scale {med[0]:.2f} px/template unit, roll {med[1]:.2f} deg, "
          f"ox {med[2]:.2f}, oy {med[3]:.2f}; quartiles {np.percentile(r, [25, 75], 0).round(2).tolist()}")
    print(f"in use: {g.frame}")


def generators(args: argparse.Namespace) -> None:
    """Inversion quality of the pretrained DigiFace DCGAN vs our DCGAN trained on public faces."""
    from faceveil.bench.privacy import cos_judge, embed_images
    from faceveil.metrics.image import ssim
    from faceveil.models.generators import DCGANConfig, FaceGenerator, Frame, get_generator, train_dcgan

    x = lfw_faces(args.n, offset=7)
    cfg = DCGANConfig(max_seconds=args.train_seconds, ngf=args.ngf, ndf=args.ngf)
    t0 = time.perf_counter()
    net, log = train_dcgan(cfg, progress=True)
    print(f"public DCGAN: {log['steps']} steps, {log['epochs']} epochs, {log['seconds']:.0f} s training "
          f"(this call {time.perf_counter() - t0:.0f} s, cached afterwards)")
    from faceveil.models.generators import PUBLIC_CROP

    public = FaceGenerator(net, Frame.from_crop(PUBLIC_CROP).resized(64), "public", "own DCGAN")
    judge, independent = cos_judge()
    crop = CropSpec(150, 0.25)
    ej = embed_images(judge, x, crop)
    rows, res = [x], {}
    for name, gen in (("digiface", get_generator("digiface")), ("public", public)):
        d = get_defense("deepblur", sigma=0.0, background="generated")
        d._gen = gen
        w = d.invert(x)
        y = d.paste(d.regenerate(w), x)
        e = embed_images(judge, y, crop)
        res[name] = {"loss": float(d.inversion_loss(x, w).mean()), "ssim": float(ssim(x, y, 1.0).mean()),
                     "identity_cos": float(torch.nn.functional.cosine_similarity(e, ej).mean())}
        rows += [y, d.paste(d.regenerate(d.average_latent()[None].expand(len(x), *w.shape[1:])), x)]
        print(f"{name:9s} search loss {res[name]['loss']:.3f}  SSIM {res[name]['ssim']:.3f}  "
              f"{judge.name} cosine to original {res[name]['identity_cos']:.3f}")
    samples = public.sample(args.n, torch.Generator().manual_seed(0))
    rows.append(torch.nn.functional.interpolate(samples, size=(150, 150), mode="bilinear", align_corners=False))
    out = Path(args.out)
    p = image_grid(rows, out / "generators.png")
    (out / "generators.json").write_text(json.dumps({"dcgan": log | {"d_loss": None, "g_loss": None}, "results": res,
                                                     "judge": judge.name, "independent": independent}, indent=2))
    print(f"rows: original, digiface inversion, digiface average, public inversion, public average, public samples; wrote {p}")


def tables(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from faceveil.bench.experiments.deepblur import EXPERIMENT_PROFILES, run_experiment

    cfg = EXPERIMENT_PROFILES[args.profile]
    if args.n_ids:
        cfg = replace(cfg, n_ids=args.n_ids)
    if args.embedders is not None:
        cfg = replace(cfg, embedders=tuple(e for e in args.embedders.split(",") if e))
    if args.table1_ids is not None:
        cfg = replace(cfg, table1_ids=args.table1_ids or None)
    if args.cnn_seconds is not None:
        cfg = replace(cfg, cnn_budget=replace(cfg.cnn_budget, max_seconds=args.cnn_seconds))
    r = run_experiment(cfg, out_dir=Path(args.out), progress=True)
    print(r["markdown"])
    print(f"wall time {r['data']['wall_seconds']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("fig7", "grid", "frame", "generators", "tables"))
    ap.add_argument("--n", type=int, default=None, help="faces (fig7: 4, grid: 6, frame: 300, generators: 6)")
    ap.add_argument("--steps", type=int, default=10, help="L-BFGS iterations (fig7)")
    ap.add_argument("--first-order-steps", type=int, default=40, help="Adam/AdaGrad/SGD steps (fig7)")
    ap.add_argument("--space", default="feature", choices=("feature", "z"))
    ap.add_argument("--spaces", default="feature,z", help="grid: comma-separated spaces")
    ap.add_argument("--generator", default="digiface", choices=("digiface", "public"))
    ap.add_argument("--train-seconds", type=float, default=900.0, help="generators: CPU budget of our DCGAN")
    ap.add_argument("--ngf", type=int, default=64, help="generators: width of our DCGAN (ngf = ndf)")
    ap.add_argument("--profile", default="quick", help="tables: ci | quick (50x10) | paper (100x10) | celeba200 (200x30)")
    ap.add_argument("--n-ids", type=int, default=None, help="tables: override the number of identities")
    ap.add_argument("--embedders", default=None, help="tables: override the embedding attackers (e.g. dlib,faceres)")
    ap.add_argument("--cnn-seconds", type=float, default=None, help="tables: override the CNN attackers' time budget")
    ap.add_argument("--table1-ids", type=int, default=None, help="tables: Table 1 on the first N identities (0 = all)")
    ap.add_argument("--out", default="results/deepblur")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.n is None:
        args.n = {"fig7": 4, "grid": 6, "frame": 300, "generators": 6}.get(args.what, 6)
    {"fig7": fig7, "grid": grid, "frame": frame, "generators": generators, "tables": tables}[args.what](args)


if __name__ == "__main__":
    main()

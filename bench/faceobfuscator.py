"""FaceObfuscator's Table 3 cost columns on this CPU, in one run: storage KB/face and ms/face of the
client (greyscale -> x8 upscaling -> 8x8 block DCT -> channel selection -> self-normalisation ->
stochastic obfuscation) and of the server (identity recovery + the recogniser on the recovered
channels) at batch 1 and batch 32, for the paper's baselines, with each system's ratio to a plain
dlib embedding of the RGB chip.

    OMP_NUM_THREADS=1 python bench/faceobfuscator.py [--n 32] [--table3 quick|full]

The server networks are the distilled students' architecture (the dlib ResNet behind a small input
adapter for frequency channels; their cost does not depend on the weights, so untrained copies are
timed). ``--table3 PROFILE`` also runs the experiment's Table 3 (LFW 10-fold accuracy of the trained
students, cached by config; trained on first use) and prints the accuracy ratios to the same-budget
clean student and to the frozen dlib ResNet. The paper (GPU, ArcFace ResNet-50): ArcFace 99.72 %,
FaceObfuscator 99.68 %, 98 KB/face.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from faceveil.bench.timing import per_face_ms
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses import get_defense
from faceveil.models import get_recognizer
from faceveil.train.distill import distill_config, make_student

#: (label, FaceObfuscator parameters); None = the frozen dlib ResNet on the RGB chip
SYSTEMS: list[tuple[str, dict | None]] = [
    ("dlib ResNet, frozen, RGB (ArcFace row)", None),
    ("64 clean BDCT channels (Arcface-FD)", {"channels": "all", "obfuscate": False}),
    ("2 clean channels (deletion only)", {"obfuscate": False}),
    ("FaceObfuscator (AC01,AC10; b=2; [-60,60])", {}),
]


def timings(x: torch.Tensor, batches: tuple[int, ...] = (1, 32)) -> list[dict]:
    """Storage and client/server ms per face of every system in :data:`SYSTEMS`."""
    dlib = get_recognizer("dlib")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the reference every ratio divides by, timed once per batch size
        emb = {b: per_face_ms(dlib, x[:8] if b == 1 else x, b, repeats=2) for b in batches}
    rows = []
    for label, params in SYSTEMS:
        row: dict = {"system": label}
        if params is None:
            row["storage_kb"] = x[0].numel() / 1024  # the 8-bit RGB chip
            client = lambda b: b  # noqa: E731 - nothing to do on the client
            server = dlib
        else:
            d = get_defense("faceobfuscator", **params)
            row["storage_kb"] = d.storage_bytes() / 1024
            student = make_student(d.protect(x[:2], g)[0], distill_config("quick")).eval()
            client = lambda b, d=d: d.protect(b, g)  # noqa: E731
            server = lambda t, d=d, s=student: s(d.recover(t))  # noqa: E731
        with torch.no_grad():
            t = client(x)
            for batch in batches:
                xs, ts = (x[:8], t[:8]) if batch == 1 else (x, t)
                row[f"client_ms_b{batch}"] = 0.0 if params is None else per_face_ms(client, xs, batch)
                row[f"server_ms_b{batch}"] = per_face_ms(server, ts, batch)
                row[f"embedding_ms_b{batch}"] = emb[batch]
        rows.append(row)
    return rows


def print_timings(rows: list[dict], batches: tuple[int, ...] = (1, 32)) -> None:
    print(f"{'system':<42} {'KB/face':>8} " + " ".join(
        f"{'b' + str(b) + ' client':>11} {'b' + str(b) + ' server':>11} {'ratio':>6}" for b in batches))
    for r in rows:
        cells = []
        for b in batches:
            total = r[f"client_ms_b{b}"] + r[f"server_ms_b{b}"]
            cells.append(f"{r[f'client_ms_b{b}']:>8.2f} ms {r[f'server_ms_b{b}']:>8.2f} ms {total / r[f'embedding_ms_b{b}']:>5.2f}x")
        print(f"{r['system']:<42} {r['storage_kb']:>8.1f} " + " ".join(cells))
    print("ratio = (client + server) / a dlib embedding of the RGB chip timed in the same pass; paper: 98 KB/face")


def accuracy_table(profile: str, out: Path) -> dict:
    """Table 3 of the FaceObfuscator experiment at ``profile`` (cached students) and its accuracy ratios."""
    from faceveil.bench.experiments import faceobfuscator as fo_exp
    from faceveil.bench.experiments.common import experiment_context

    r = fo_exp.run(experiment_context(profile, out, progress=False, parts=("table3",)))
    print(r["markdown"])
    t3 = r["data"]["table3"]
    fo = t3.get("FaceObfuscator (deletion + obfuscation + recovery)")
    clean = t3.get("student, clean RGB")
    frozen = t3.get("dlib_frozen")
    if fo and clean:
        print(f"FaceObfuscator / same-budget clean student accuracy: {fo['acc_mean'] / clean['acc_mean']:.4f} "
              f"(paper FaceObfuscator / ArcFace: {99.68 / 99.72:.4f})")
    if fo and frozen:
        acc = next(x for x in frozen["results"] if x["metric"] == "euclidean")["acc_mean"]
        print(f"FaceObfuscator / frozen dlib ResNet accuracy: {fo['acc_mean'] / acc:.4f}")
    return r["data"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="LFW faces timed at batch 32 (batch 1 times the first 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table3", choices=("ci", "quick", "full"), help="also measure LFW accuracy at this bench profile")
    ap.add_argument("--out", type=Path, default=Path("results/bench-faceobfuscator"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lfw = LFW()
    chips, _ = lfw.dataset().subset(lfw.pair_images()[: args.n]).chips(get_recognizer("dlib").crop, progress=False)
    x = to_tensor(chips)
    print(f"{len(x)} LFW chips, torch threads = {torch.get_num_threads()}")
    rows = timings(x)
    print_timings(rows)
    result: dict = {"timings": rows}
    if args.table3:
        result["table3"] = accuracy_table(args.table3, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faceobfuscator_bench.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

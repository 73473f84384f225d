"""LFW verification: the standard 10-fold protocol on ``pairs.txt`` and the operating point.

Protocol: for each of the 10 folds, the accuracy-maximising threshold is picked on the other nine
folds and applied to the held-out fold; mean and std of the ten accuracies are reported, plus
TPR at FPR 1e-2 and 1e-3 over all 6,000 pairs. Both Euclidean and cosine distance are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceveil.config import cache_dir, config_hash, load_or_compute
from faceveil.data.align import ALIGN_VERSION, STATUS_CNN, STATUS_FALLBACK
from faceveil.data.crop import CropSpec
from faceveil.data.datasets import LFW, PairSet
from faceveil.devices import device_record, module_device
from faceveil.metrics.protection import threshold_at_fmr
from faceveil.metrics.verification import best_threshold, kfold_accuracy, tpr_at_fpr
from faceveil.models.base import OperatingPoint, Recognizer, pairwise_distance
from faceveil.models.embed import dataset_embeddings, model_fingerprint
from faceveil.storage import write_json_atomic

METRICS = ("euclidean", "cosine")


@dataclass
class VerificationResult:
    model: str
    protocol: str
    n_pairs: int
    metric: str
    acc_mean: float
    acc_std: float
    tpr_at_fpr_1e2: float
    tpr_at_fpr_1e3: float
    fold_acc: list[float] = field(default_factory=list)


def subset_pairs(pairs: PairSet, per_fold: int | None) -> PairSet:
    """The first ``per_fold`` same and ``per_fold`` different pairs of every fold (all if None)."""
    if per_fold is None:
        return pairs
    keep = []
    for f in np.unique(pairs.fold):
        for s in (True, False):
            keep.extend(np.flatnonzero((pairs.fold == f) & (pairs.same == s))[:per_fold])
    k = np.sort(np.array(keep))
    return PairSet(pairs.a[k], pairs.b[k], pairs.same[k], pairs.fold[k])


def pair_embeddings(
    model: Recognizer, lfw: LFW, pairs: PairSet, progress: bool = True, flip_tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Embeddings of both sides of every pair (computing each image once)."""
    uniq, inv = np.unique(np.concatenate([pairs.a, pairs.b]), return_inverse=True)
    emb, _, ms = dataset_embeddings(model, lfw.dataset(), uniq, progress=progress, flip_tta=flip_tta)
    n = len(pairs.a)
    return emb[inv[:n]], emb[inv[n:]], ms


def verification(
    ea: torch.Tensor, eb: torch.Tensor, pairs: PairSet, model_name: str, protocol: str = "pairs",
    metrics: tuple[str, ...] = METRICS,
) -> list[VerificationResult]:
    """10-fold accuracy and TPR@FPR of embedding pairs, one result per distance."""
    out = []
    for metric in metrics:
        d = pairwise_distance(ea, eb, metric).double().numpy()
        k = kfold_accuracy(d, pairs.same, pairs.fold)
        out.append(VerificationResult(
            model_name, protocol, len(d), metric, k.mean, k.std,
            tpr_at_fpr(d, pairs.same, 1e-2), tpr_at_fpr(d, pairs.same, 1e-3), k.fold_acc,
        ))
    return out


def fit_operating_point(model: Recognizer, lfw: LFW, progress: bool = True) -> OperatingPoint:
    """Accuracy-maximising threshold of the model's own metric on ``pairsDevTrain.txt`` (1,100 +
    1,100 pairs, disjoint from the 10-fold test protocol's purpose), saved beside the model."""
    pairs = lfw.pairs("devtrain")
    ea, eb, _ = pair_embeddings(model, lfw, pairs, progress)
    d = pairwise_distance(ea, eb, model.metric).double().numpy()
    t, acc = best_threshold(d, pairs.same)
    op = OperatingPoint(model.metric, t, "lfw pairsDevTrain.txt", acc)
    model.save_operating_point(op)
    return op


def operating_point(model: Recognizer, lfw: LFW | None = None, progress: bool = True) -> OperatingPoint:
    """The saved operating point of ``model``, fitted on first use."""
    op = model.operating_point()
    if op is None:
        op = fit_operating_point(model, lfw or LFW(), progress)
    return op


#: false match rates at which template-inversion papers report their successful attack rate (SAR)
SAR_FMRS = (1e-3, 1e-4)
#: impostor comparisons sampled for :func:`fmr_thresholds` (half fit the thresholds, half check them): at FMR
#: 1e-4 the fitted half accepts 50 of them, so the threshold is not one outlier pair
SAR_IMPOSTORS = 1_000_000
#: version of the FMR-threshold fit (its cache key; judged results include it too)
FMR_VERSION = "fmr-v2"


def fmr_label(fmr: float) -> str:
    """``1e-3`` for 0.001 (the key of a false match rate in results)."""
    m, e = f"{fmr:.0e}".split("e")
    return f"{m}e{int(e)}"


def impostor_count(labels: np.ndarray) -> int:
    """How many unordered pairs of images with different identity ``labels`` exist."""
    size = len(labels)
    return size * (size - 1) // 2 - sum(int(c) * (int(c) - 1) // 2 for c in np.unique(labels, return_counts=True)[1])


def impostor_pairs(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct unordered pairs of images ``(i, j)`` with different identity ``labels``, drawn
    uniformly with a seeded generator (in random order)."""
    labels = np.asarray(labels)
    size = len(labels)
    possible = impostor_count(labels)
    if n > possible // 2:
        raise ValueError(f"{n} impostor pairs asked of {size} images that make {possible}: sample at most half of them")
    rng = np.random.default_rng(seed)
    codes = np.empty(0, dtype=np.int64)
    while len(codes) < n:
        i = rng.integers(0, size, 2 * (n - len(codes)) + 1024)
        j = rng.integers(0, size, len(i))
        keep = labels[i] != labels[j]
        lo, hi = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
        new = lo.astype(np.int64) * size + hi
        # first occurrences, in drawing order (np.unique sorts: keep the draw order so the split is random)
        _, first = np.unique(np.concatenate([codes, new]), return_index=True)
        codes = np.concatenate([codes, new])[np.sort(first)]
    codes = codes[:n]
    return codes // size, codes % size


def impostor_distances(emb: torch.Tensor, i: np.ndarray, j: np.ndarray, metric: str, chunk: int = 100_000) -> np.ndarray:
    """Distances of the pairs ``(emb[i], emb[j])`` (computed ``chunk`` pairs at a time)."""
    out = [pairwise_distance(emb[torch.from_numpy(i[s : s + chunk])], emb[torch.from_numpy(j[s : s + chunk])], metric)
           for s in range(0, len(i), chunk)]
    return torch.cat(out).double().numpy()


def fmr_thresholds(model: Recognizer, lfw: LFW | None = None, fmrs: tuple[float, ...] = SAR_FMRS,
                   n_impostor: int = SAR_IMPOSTORS, seed: int = 0, align: CropSpec | None = None,
                   progress: bool = False, images: int | None = None) -> dict:
    """Thresholds of ``model`` (its own metric) at false match rates ``fmrs``, the operating points at which
    template-inversion papers report SAR (ISO/IEC 19795-1 FMR; Mai et al. TPAMI 2019 use LFW impostors too).

    Every LFW image (13,233), or a seeded random subset of ``images`` of them (cheap profiles: the 224-px
    judge embeds ~16 images/s on a core), is embedded once (:func:`dataset_embeddings`, cached; with ``align``:
    chips of that geometry re-cropped to the model's, as a judge sees them); ``n_impostor`` distinct pairs of
    images of different people (at most half of those the images make) are drawn with ``seed``; the first half fits each threshold
    (:func:`threshold_at_fmr`), the held-out second half measures the FMR it achieves. Cached on disk,
    keyed by the model's weight fingerprint. Returns a JSON-ready dict: ``thresholds`` / ``fit_fmr`` /
    ``held_out_fmr`` keyed by :func:`fmr_label`, and how they were fitted."""
    lfw = lfw or LFW()
    ds = lfw.dataset()
    idx = None
    if images is not None and images < len(ds):
        if images < 100:
            raise ValueError(f"FMR thresholds from {images} images: use at least 100")
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), images, replace=False))
        ds = ds.subset(idx)
    labels = np.asarray(ds.labels)
    n_impostor = min(n_impostor, impostor_count(labels) // 2)
    align = None if align == model.crop else align
    key = config_hash(model_fingerprint(model), [float(f) for f in fmrs], n_impostor, seed, ds.files, ALIGN_VERSION,
                      model.crop.key(), align.key() if align else None, FMR_VERSION)
    path = cache_dir("thresholds") / f"fmr-{model.name}-{key}.pt"

    def fit() -> dict:
        emb, status, _ = dataset_embeddings(model, lfw.dataset(), idx, progress=progress, align=align)
        i, j = impostor_pairs(labels, n_impostor, seed)
        d = impostor_distances(emb, i, j, model.metric)
        half = len(d) // 2
        fit_d, held_d = d[:half], d[half:]
        out: dict = {"model": model.name, "metric": model.metric, "fit_on": "LFW impostor pairs (different people)",
                     "images": len(ds), "alignments": {"cnn detector": int((status == STATUS_CNN).sum()),
                                                                "centre-crop fallback": int((status == STATUS_FALLBACK).sum())},
                     "n_fit": half, "n_held_out": len(held_d), "seed": seed,
                     "align": (align or model.crop).key(), "thresholds": {}, "fit_fmr": {}, "held_out_fmr": {}}
        for f in fmrs:
            t = threshold_at_fmr(fit_d, f)
            lab = fmr_label(f)
            out["thresholds"][lab] = t
            out["fit_fmr"][lab] = float((fit_d <= t).mean())
            out["held_out_fmr"][lab] = float((held_d <= t).mean())
        return out

    return load_or_compute(path, fit)


def evaluate_lfw(
    model: Recognizer, lfw: LFW | None = None, per_fold: int | None = None, progress: bool = True, flip_tta: bool = False
) -> dict:
    """Full LFW evaluation of a recogniser; returns a JSON-ready dict. The operating point is always
    the plain (no test-time augmentation) deployed model's."""
    lfw = lfw or LFW()
    pairs = subset_pairs(lfw.pairs("pairs"), per_fold)
    ea, eb, ms = pair_embeddings(model, lfw, pairs, progress, flip_tta)
    results = verification(ea, eb, pairs, model.name)
    op = operating_point(model, lfw, progress)
    d = pairwise_distance(ea, eb, op.metric).numpy()
    return {
        "model": model.name + (" (+flip TTA)" if flip_tta else ""),
        "pairs": len(pairs.a),
        "ms_per_image": ms,
        "results": [asdict(r) for r in results],
        "operating_point": asdict(op),
        "accuracy_at_operating_point": float(((d <= op.threshold) == pairs.same).mean()),
        "run_on": device_record(module_device(model)),
    }


def format_table(report: dict) -> str:
    lines = [
        f"LFW ({report['pairs']} pairs, 10-fold) — model {report['model']}",
        f"{'distance':<10} {'accuracy':>16} {'TPR@FPR=1e-2':>13} {'TPR@FPR=1e-3':>13}",
    ]
    for r in report["results"]:
        acc = f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}%"
        lines.append(f"{r['metric']:<10} {acc:>16} {100 * r['tpr_at_fpr_1e2']:>12.2f}% {100 * r['tpr_at_fpr_1e3']:>12.2f}%")
    op = report["operating_point"]
    lines.append(
        f"operating point ({op['fit_on']}): {op['metric']} <= {op['threshold']:.4f}; "
        f"accuracy on these pairs {100 * report['accuracy_at_operating_point']:.2f}%"
    )
    if report["ms_per_image"] == report["ms_per_image"]:
        where = report.get("run_on", {}).get("device", "cpu")
        lines.append(f"embedding time: {report['ms_per_image']:.2f} ms/image (batched, {where})")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    """The report as JSON at ``path`` (atomically; ``FaceveilOutputError`` when it cannot be written)."""
    write_json_atomic(path, report, indent=2)

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

from faceveil.data.datasets import LFW, PairSet
from faceveil.metrics.verification import best_threshold, kfold_accuracy, tpr_at_fpr
from faceveil.models.base import OperatingPoint, Recognizer, pairwise_distance
from faceveil.models.embed import dataset_embeddings
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
        lines.append(f"embedding time: {report['ms_per_image']:.2f} ms/image (batched, CPU)")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    """The report as JSON at ``path`` (atomically; ``FaceveilOutputError`` when it cannot be written)."""
    write_json_atomic(path, report, indent=2)

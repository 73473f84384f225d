"""Verification metrics: accuracy at a threshold, LFW 10-fold protocol, ROC and TPR@FPR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def best_threshold(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``dist <= t`` on the given pairs; returns (t, accuracy).

    Exhaustive over the midpoints between sorted distances (exact, O(n log n))."""
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order].astype(np.int64)
    n = len(d)
    # accepting the first k pairs: correct = same among first k + different among the rest
    tp = np.concatenate([[0], np.cumsum(s)])
    tn = (n - s.sum()) - np.concatenate([[0], np.cumsum(1 - s)])
    acc = (tp + tn) / n
    # only cut between distinct distances
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = d[1:] != d[:-1]
    k = int(np.argmax(np.where(valid, acc, -1)))
    if k == 0:
        t = d[0] - 1e-6
    elif k == n:
        t = d[-1] + 1e-6
    else:
        t = 0.5 * (d[k - 1] + d[k])
    return float(t), float(acc[k])


def accuracy_at(dist: np.ndarray, same: np.ndarray, t: float) -> float:
    return float(((dist <= t) == same.astype(bool)).mean())


@dataclass
class KFoldResult:
    mean: float
    std: float
    fold_acc: list[float]
    fold_thresholds: list[float]


def kfold_accuracy(dist: np.ndarray, same: np.ndarray, fold: np.ndarray) -> KFoldResult:
    """Standard LFW protocol: for each fold, choose the threshold on the other nine folds, measure
    accuracy on the held-out fold; report mean and (population) std over folds."""
    accs, ths = [], []
    for f in np.unique(fold):
        train = fold != f
        t, _ = best_threshold(dist[train], same[train])
        accs.append(accuracy_at(dist[~train], same[~train], t))
        ths.append(t)
    return KFoldResult(float(np.mean(accs)), float(np.std(accs)), accs, ths)


def roc(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of the rule ``accept if dist <= t``: returns (fpr, tpr, thresholds), thresholds
    increasing, starting from "accept nothing"."""
    same = same.astype(bool)
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    last = np.r_[np.flatnonzero(d[1:] != d[:-1]), len(d) - 1]  # last index of each distinct value
    tp = np.cumsum(s)[last]
    fp = np.cumsum(~s)[last]
    tpr = np.r_[0.0, tp / max(1, s.sum())]
    fpr = np.r_[0.0, fp / max(1, (~s).sum())]
    th = np.r_[-np.inf, d[last]]
    return fpr, tpr, th


def tpr_at_fpr(dist: np.ndarray, same: np.ndarray, target_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR does not exceed ``target_fpr``."""
    fpr, tpr, _ = roc(dist, same)
    ok = fpr <= target_fpr + 1e-12
    return float(tpr[ok].max())

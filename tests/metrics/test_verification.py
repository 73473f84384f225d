"""Verification metrics against brute-force computations."""

from __future__ import annotations

import numpy as np
import torch

from faceveil.metrics.identity import closer_to_own, srra
from faceveil.metrics.verification import best_threshold, kfold_accuracy, roc, tpr_at_fpr
from faceveil.models.base import OperatingPoint


def _data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    same = np.arange(n) % 2 == 0
    dist = np.where(same, rng.normal(0.4, 0.1, n), rng.normal(0.8, 0.1, n)).round(3)  # ties
    return dist, same, np.repeat(np.arange(10), n // 10)


def test_best_threshold_is_optimal():
    dist, same, _ = _data()
    t, acc = best_threshold(dist, same)
    brute = max(((dist <= c) == same).mean() for c in np.r_[dist, dist.min() - 1])
    assert acc == brute == ((dist <= t) == same).mean()


def test_kfold_uses_held_out_thresholds():
    dist, same, fold = _data(1)
    r = kfold_accuracy(dist, same, fold)
    for f in range(10):
        tr = fold != f
        t, _ = best_threshold(dist[tr], same[tr])
        assert r.fold_acc[f] == ((dist[~tr] <= t) == same[~tr]).mean()
    assert abs(r.mean - np.mean(r.fold_acc)) < 1e-12


def test_roc_and_tpr_at_fpr_brute_force():
    dist, same, _ = _data(2)
    fpr, tpr, th = roc(dist, same)
    for t, f, p in zip(th[1:], fpr[1:], tpr[1:], strict=True):
        acc = dist <= t
        assert f == (acc & ~same).sum() / (~same).sum() and p == (acc & same).sum() / same.sum()
    for target in (1e-2, 1e-3, 0.1):
        best = max(((dist <= t) & same).sum() / same.sum() for t in np.r_[-1, dist]
                   if ((dist <= t) & ~same).sum() / (~same).sum() <= target)
        assert tpr_at_fpr(dist, same, target) == best


def test_srra_and_closer_to_own():
    a = torch.eye(4)
    op = OperatingPoint("euclidean", 0.5, "test", 1.0)
    assert srra(a + 0.1, a, op).all() and not srra(a.roll(1, 0), a, op).any()
    assert closer_to_own(a + 0.01, a, "cosine").all()

"""Attribute utility: how well binary face attributes can be read from (protected) data, measured by a linear
probe on frozen features with identity-disjoint cross-validation, next to the majority-class baseline.

The probe is L2-regularised logistic regression with the objective of scikit-learn's
``LogisticRegression(C=l2_c)`` (sum of log-losses + ½‖w‖²/C, intercept unpenalised) on features standardised
with the training fold's mean and standard deviation, solved to convergence by L-BFGS in float64 (torch; no
scikit-learn dependency). Identities are dealt to folds so that no person is in a training and a test fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def identity_folds(groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A fold index in ``0..k-1`` per sample such that all samples of a group (identity) share one fold:
    identities in a seeded random order, each given to the fold with the fewest samples so far (folds of
    nearly equal size). Needs at least ``k`` identities."""
    groups = np.asarray(groups)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"identity_folds: k must be an integer >= 2, got {k!r}")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(ids) < k:
        raise ValueError(f"identity_folds: {len(ids)} identities cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    size = np.zeros(k, dtype=np.int64)
    fold_of = np.empty(len(ids), dtype=np.int64)
    for i in order:
        f = int(np.argmin(size))  # ties: the lowest fold index
        fold_of[i] = f
        size[f] += counts[i]
    return fold_of[inverse.reshape(-1)]


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 200) -> tuple[np.ndarray, float, np.ndarray,
                                                                                              np.ndarray]:
    """L2 logistic regression on ``x`` ``[n,d]`` and boolean ``y``: ``(w, b, mean, std)`` of the standardised
    model (``x`` is standardised with its own mean/std; constant features get std 1)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_logistic: {len(x)} samples for {len(y)} labels")
    if not np.isfinite(x).all():
        raise ValueError("fit_logistic: non-finite features")
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = xt @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="sum") + 0.5 * (w @ w) / c
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach()), mean, std


def predict_logistic(model: tuple[np.ndarray, float, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Boolean predictions of a :func:`fit_logistic` model."""
    w, b, mean, std = model
    return ((np.asarray(x, dtype=np.float64) - mean) / std) @ w + b > 0


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated accuracy of the probe and of the majority-class baseline (the training fold's majority
    class predicted for every test sample), over all ``n`` samples; ``positive`` is the share of positives."""

    accuracy: float
    balanced_accuracy: float
    majority: float
    positive: float
    n: int
    fold_accuracy: tuple[float, ...]


def probe_accuracy(features: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float = 1.0) -> ProbeResult:
    """Every sample predicted by the probe trained on the other folds (:func:`fit_logistic`)."""
    features = np.asarray(features, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    folds = np.asarray(folds)
    if not (len(features) == len(y) == len(folds)):
        raise ValueError(f"probe_accuracy: {len(features)} features, {len(y)} labels, {len(folds)} fold ids")
    pred = np.zeros(len(y), dtype=bool)
    major = np.zeros(len(y), dtype=bool)
    per_fold = []
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        if tr.sum() == 0:
            raise ValueError("probe_accuracy: needs at least two folds")
        if y[tr].all() or not y[tr].any():  # one class only: the probe is the majority rule
            pred[te] = y[tr][0]
        else:
            pred[te] = predict_logistic(fit_logistic(features[tr], y[tr], c), features[te])
        major[te] = y[tr].mean() >= 0.5
        per_fold.append(float((pred[te] == y[te]).mean()))
    ok = pred == y
    recall = [float(ok[y == v].mean()) for v in (True, False) if (y == v).any()]
    return ProbeResult(float(ok.mean()), float(np.mean(recall)), float((major == y).mean()), float(y.mean()), len(y),
                       tuple(per_fold))

"""The attribute-utility probe: identity-disjoint folds and the logistic probe against the majority baseline."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.metrics.attributes import fit_logistic, identity_folds, predict_logistic, probe_accuracy


def test_folds_keep_every_identity_in_one_fold_and_are_balanced():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), rng.integers(1, 8, 60))
    folds = identity_folds(groups, 5, seed=1)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 7  # greedy: within one identity's size
    assert (identity_folds(groups, 5, seed=1) == folds).all()  # seeded
    assert not (identity_folds(groups, 5, seed=2) == folds).all()


def test_folds_refuse_too_few_identities():
    with pytest.raises(ValueError, match="identities"):
        identity_folds(np.array([0, 0, 1, 1]), 3)
    with pytest.raises(ValueError, match="k must"):
        identity_folds(np.arange(10), 1)


def test_logistic_matches_the_closed_form_optimum():
    """At the optimum of sum(log-loss) + ||w||²/(2C), the gradient vanishes: X'(p - y) + w/C = 0, sum(p - y) = 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.5, -2.0, 0.0, 0.5, 0.0]) + 0.3 * rng.normal(size=200) > 0.2
    w, b, mean, std = fit_logistic(x, y, c=0.5)
    z = (x - mean) / std
    p = 1 / (1 + np.exp(-(z @ w + b)))
    assert np.abs(z.T @ (p - y) + w / 0.5).max() < 1e-5
    assert abs((p - y).sum()) < 1e-5
    assert (predict_logistic((w, b, mean, std), x) == y).mean() > 0.9


def test_probe_reads_an_attribute_the_features_carry_and_not_one_they_do_not():
    """A feature that carries the attribute beats the majority baseline by far; pure noise features do not
    (the probe cannot exceed what the features hold), whatever the class balance."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(80), 5)
    y = rng.random(400) < 0.3
    informative = np.c_[y + 0.4 * rng.normal(size=400), rng.normal(size=(400, 10))]
    noise = rng.normal(size=(400, 11))
    folds = identity_folds(groups, 5, seed=0)
    good, bad = probe_accuracy(informative, y, folds), probe_accuracy(noise, y, folds)
    assert good.n == 400 and len(good.fold_accuracy) == 5
    assert abs(good.majority - (1 - y.mean())) < 0.05
    assert good.accuracy > good.majority + 0.2 and good.balanced_accuracy > 0.85
    assert bad.accuracy < bad.majority + 0.05 and abs(bad.balanced_accuracy - 0.5) < 0.1


def test_probe_with_one_class_in_a_training_fold_predicts_it():
    """A training fold of one class gives the majority rule (no fit): here every test image has the other class."""
    y = np.array([True] * 10 + [False] * 2)
    folds = np.array([0] * 10 + [1] * 2)
    r = probe_accuracy(np.random.default_rng(0).normal(size=(12, 3)), y, folds)
    assert r.accuracy == r.majority == 0.0 and r.fold_accuracy == (0.0, 0.0)

"""FNMR at FMR, renewability and cross-key linkage scores, against brute force and on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.errors import FaceveilDataError
from faceveil.metrics.protection import fnmr_at_fmr, linkage_scores, renewability, threshold_at_fmr
from faceveil.metrics.unlinkability import d_sys
from faceveil.metrics.verification import tpr_at_fpr
from tests.metrics.conftest import random_orthonormal


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    gen = rng.normal(0.4, 0.1, 3000).round(3)  # distances, with ties
    imp = rng.normal(0.8, 0.1, 4000).round(3)
    return gen, imp


@pytest.mark.parametrize("fmr", [1e-3, 1e-2, 0.1, 0.5])
def test_threshold_and_fnmr_at_fmr_brute_force(fmr):
    gen, imp = _scores()
    t = threshold_at_fmr(imp, fmr)
    assert (imp <= t).mean() <= fmr
    # most permissive: the next impostor score up would exceed the FMR
    nxt = imp[imp > t].min()
    assert (imp <= nxt).mean() > fmr
    best = max((gen <= c).mean() for c in np.r_[gen, imp, -1.0] if (imp <= c).mean() <= fmr)
    assert fnmr_at_fmr(gen, imp, fmr) == pytest.approx(1 - best, abs=1e-15)
    assert fnmr_at_fmr(gen, imp, fmr) == pytest.approx((gen > t).mean(), abs=1e-15)
    # similarities: the same decisions on negated scores
    ts = threshold_at_fmr(-imp, fmr, higher_is_match=True)
    assert ts == -t and fnmr_at_fmr(-gen, -imp, fmr, higher_is_match=True) == fnmr_at_fmr(gen, imp, fmr)
    same = np.r_[np.ones(len(gen), bool), np.zeros(len(imp), bool)]
    assert fnmr_at_fmr(gen, imp, fmr) == 1 - tpr_at_fpr(np.r_[gen, imp], same, fmr)


def test_fmr_needs_enough_impostors_and_sane_inputs():
    gen, imp = _scores()
    with pytest.raises(FaceveilDataError, match="cannot be measured on 500 impostor scores.*1000 needed"):
        fnmr_at_fmr(gen, imp[:500], 1e-3)
    t = threshold_at_fmr(imp[:1000], 1e-3)  # 1000 suffice: at most one impostor accepted
    assert (imp[:1000] <= t).sum() == np.sum(imp[:1000] < np.sort(imp[:1000])[1]) <= 1
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(FaceveilDataError, match="FMR must lie in"):
            threshold_at_fmr(imp, bad)
    with pytest.raises(ValueError, match="genuine scores hold 1 non-finite"):
        fnmr_at_fmr(np.r_[gen, np.nan], imp, 1e-2)
    with pytest.raises(ValueError, match="no impostor scores"):
        threshold_at_fmr([], 1e-2)


def test_renewability_counts_accepted_old_templates():
    old_vs_new = np.array([0.2, 0.5, 0.6, 0.9, 1.1])
    assert renewability(old_vs_new, 0.6) == 0.6  # distances <= 0.6
    assert renewability(old_vs_new, 0.6, higher_is_match=True) == 0.6  # similarities >= 0.6
    assert renewability(old_vs_new, 0.1) == 0.0
    with pytest.raises(ValueError, match="threshold must be finite"):
        renewability(old_vs_new, float("nan"))
    with pytest.raises(ValueError, match="no old-vs-new scores"):
        renewability([], 0.5)


def test_linkage_pairs_follow_the_protocol():
    labels = np.array([0, 0, 1, 2, 2, 2, 3])
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    s = linkage_scores(a, b, labels, mated="sample", max_nonmated=None)
    assert s.mated_pairs.tolist() == [[i, i] for i in range(7)] and s.higher_is_match
    sub = linkage_scores(a, b, labels, mated="subject", max_nonmated=None)
    assert {tuple(p) for p in sub.mated_pairs} == {(0, 1), (1, 0), (3, 4), (4, 3), (3, 5), (5, 3), (4, 5), (5, 4)}
    alls = linkage_scores(a, b, labels, mated="all", max_nonmated=None)
    assert {tuple(p) for p in alls.mated_pairs} == {tuple(p) for p in sub.mated_pairs} | {(i, i) for i in range(7)}
    # non-mated: every ordered pair of different subjects, once
    expected = {(i, j) for i in range(7) for j in range(7) if labels[i] != labels[j]}
    assert {tuple(p) for p in s.nonmated_pairs} == expected and len(s.nonmated_pairs) == len(expected)
    # scores are computed on (row of A, row of B)
    for pairs, vals in ((s.mated_pairs, s.mated), (s.nonmated_pairs, s.nonmated)):
        ref = [a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]) for i, j in pairs]
        np.testing.assert_allclose(vals, ref, rtol=1e-12)
    # subsampling: without replacement, deterministic per seed, different subjects only
    k = linkage_scores(a, b, labels, mated="sample", max_nonmated=10, seed=3)
    assert len({tuple(p) for p in k.nonmated_pairs}) == 10 and all(labels[i] != labels[j] for i, j in k.nonmated_pairs)
    np.testing.assert_array_equal(k.nonmated_pairs, linkage_scores(a, b, labels, mated="sample", max_nonmated=10, seed=3).nonmated_pairs)


def test_linkage_rejection_sampling_for_large_sets():
    rng = np.random.default_rng(1)
    n = 2100  # n² above the enumeration limit
    labels = rng.integers(0, 700, n)
    a = rng.normal(size=(n, 4))
    s = linkage_scores(a, a, labels, mated="subject", max_nonmated=5000, seed=1)
    p = s.nonmated_pairs
    assert len(p) == 5000 and len(np.unique(p[:, 0] * n + p[:, 1])) == 5000 and (labels[p[:, 0]] != labels[p[:, 1]]).all()
    with pytest.raises(FaceveilDataError, match="set max_nonmated"):
        linkage_scores(a, a, labels, mated="subject", max_nonmated=None)


def test_linkage_score_functions():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(20), 3)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    e = linkage_scores(a, b, labels, mated="subject", score="euclidean", max_nonmated=None)
    assert not e.higher_is_match
    np.testing.assert_allclose(e.mated, [np.linalg.norm(a[i] - b[j]) for i, j in e.mated_pairs])
    ha, hb = a > 0, b > 0  # binary templates (BioHashing-style)
    h = linkage_scores(ha, hb, labels, mated="sample", score="hamming", max_nonmated=None)
    np.testing.assert_allclose(h.mated, (ha != hb).mean(1))
    c = linkage_scores(a, b, labels, mated="sample", score=lambda x, y: -np.abs(x - y).sum(1), higher_is_match=True, max_nonmated=None)
    np.testing.assert_allclose(c.nonmated, [-np.abs(a[i] - b[j]).sum() for i, j in c.nonmated_pairs])
    with pytest.raises(FaceveilDataError, match="needs higher_is_match"):
        linkage_scores(a, b, labels, mated="sample", score=lambda x, y: x[:, 0])
    with pytest.raises(FaceveilDataError, match="returned 1 values for 60"):
        linkage_scores(a, b, labels, mated="sample", score=lambda x, y: np.zeros(1), higher_is_match=False)
    with pytest.raises(FaceveilDataError, match="cosine score has higher_is_match=True"):
        linkage_scores(a, b, labels, mated="sample", higher_is_match=False)
    with pytest.raises(FaceveilDataError, match="unknown score"):
        linkage_scores(a, b, labels, mated="sample", score="manhattan")
    with pytest.raises(FaceveilDataError, match="unknown mated protocol"):
        linkage_scores(a, b, labels, mated="pairs")
    with pytest.raises(FaceveilDataError, match="differ"):
        linkage_scores(a, b[:-1], labels, mated="sample")
    with pytest.raises(FaceveilDataError, match="59 labels for 60"):
        linkage_scores(a, b, labels[:-1], mated="sample")
    with pytest.raises(FaceveilDataError, match="no mated pairs"):
        linkage_scores(a, b, np.arange(60), mated="subject")
    with pytest.raises(FaceveilDataError, match="no non-mated pairs"):
        linkage_scores(a, b, np.zeros(60), mated="sample")
    with pytest.raises(FaceveilDataError, match="NaN or inf"):
        linkage_scores(np.where(a > 2, np.nan, a), b, labels, mated="sample")


def test_identical_templates_linkable_independent_ones_not():
    """The issue's known answers: the same templates under both "keys" → D↔sys = 1; templates of
    one sample drawn independently under each key → D↔sys ≈ 0."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(1000), 2)
    x = rng.normal(size=(2000, 32))
    same = linkage_scores(x, x, labels, mated="sample", max_nonmated=200_000)
    assert d_sys(same.mated, same.nonmated) == pytest.approx(1.0, abs=1e-12)
    indep = linkage_scores(x, rng.normal(size=(2000, 32)), labels, mated="sample", max_nonmated=200_000)
    assert d_sys(indep.mated, indep.nonmated, n_bins=20) < 0.05


def test_renewal_revokes_old_templates_on_real_faces(lfw_templates):
    """Keyed random projection of dlib templates of LFW faces: the new key's system recognises
    people (FNMR at FMR 1e-3 as unprotected dlib: rotation keeps cosines), while the templates
    stored under the old key are accepted no more often than impostors."""
    x, labels = lfw_templates
    old, new = x @ random_orthonormal(x.shape[1], 10), x @ random_orthonormal(x.shape[1], 11)
    sys_new = linkage_scores(new, new, labels, mated="subject", max_nonmated=200_000)
    t = threshold_at_fmr(sys_new.nonmated, 1e-3, higher_is_match=True)
    fnmr = fnmr_at_fmr(sys_new.mated, sys_new.nonmated, 1e-3, higher_is_match=True)
    assert fnmr < 0.3  # measured 0.063
    old_vs_new = linkage_scores(old, new, labels, mated="sample", max_nonmated=200_000)
    assert renewability(old_vs_new.mated, t, higher_is_match=True) <= 0.01  # measured 0.0

"""D↔(s) and D↔sys (Gomez-Barrero et al., IEEE TIFS 2018) on cases with known answers and on real
dlib templates of LFW faces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import integrate, stats

from faceveil.errors import FaceveilDataError
from faceveil.metrics.protection import linkage_scores
from faceveil.metrics.unlinkability import d_sys, local_linkability, plot_unlinkability, scott_bandwidth, unlinkability
from tests.metrics.conftest import random_orthonormal


def true_d_sys(mu: float, sigma: float, omega: float = 1.0) -> float:
    """D↔sys of mated N(mu, sigma²) against non-mated N(0, 1), integrating the paper's formula with
    the true densities (scipy quad)."""
    def f(s):
        pm, pn = stats.norm.pdf(s, mu, sigma), stats.norm.pdf(s)
        return pm * max(0.0, (omega * pm - pn) / (omega * pm + pn))
    val, err = integrate.quad(f, -15, 15 + mu, limit=400, points=[0.0, mu])
    assert err < 1e-6
    return val


def test_identical_distributions_are_unlinkable():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0, 1, 100_000), rng.normal(0, 1, 100_000)
    assert unlinkability(m, n).d_sys < 0.02  # measured 0.007: only histogram noise
    assert unlinkability(m, n, method="kde").d_sys < 0.01
    # few samples: the estimator's known upward bias, still below the 0.05 at 20k
    assert d_sys(m[:20_000], n[:20_000]) < 0.05


def test_fully_separated_distributions_are_fully_linkable():
    rng = np.random.default_rng(1)
    m, n = rng.uniform(0.6, 1.0, 5000), rng.uniform(0.0, 0.4, 5000)
    r = unlinkability(m, n)
    assert r.d_sys == pytest.approx(1.0, abs=1e-12)  # exact: every mated bin is free of non-mated scores
    assert set(np.unique(r.d_local[r.p_mated > 0])) == {1.0} and (r.d_local[r.p_mated == 0] == 0).all()
    # the reference's trapezoid rule over bin centres drops half of the two outermost bins' mated
    # mass (here the last bin's; the first holds non-mated scores only): exactly that much below 1
    t = unlinkability(m, n, integration="trapezoid")
    w = r.bin_edges[1] - r.bin_edges[0]
    assert t.d_sys == pytest.approx(1.0 - 0.5 * w * (r.p_mated[0] + r.p_mated[-1]), abs=1e-12) and t.d_sys < 1
    assert unlinkability(m, n, method="kde").d_sys > 1 - 1e-6  # tails 10 bandwidths apart
    # swapping the direction of the score (distance <-> similarity) changes nothing
    assert d_sys(-m, -n) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("mu,sigma", [(1.0, 1.0), (2.0, 1.0), (1.5, 0.5)])
def test_partial_overlap_matches_numerical_integration(mu, sigma):
    rng = np.random.default_rng(2)
    m, n = rng.normal(mu, sigma, 200_000), rng.normal(0, 1, 200_000)
    expected = true_d_sys(mu, sigma)
    assert 0.2 < expected < 0.9
    assert d_sys(m, n) == pytest.approx(expected, rel=0.02)  # measured within 0.3 %
    assert d_sys(m, n, method="kde") == pytest.approx(expected, rel=0.02)
    m, n = -m, -n
    assert d_sys(m, n) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("omega", [3.0, 1 / 3])
def test_omega_shifts_the_prior_as_the_formula_says(omega):
    rng = np.random.default_rng(3)
    m, n = rng.normal(1.0, 1.0, 200_000), rng.normal(0, 1, 200_000)
    expected = true_d_sys(1.0, 1.0, omega)
    assert d_sys(m, n, omega) == pytest.approx(expected, rel=0.02, abs=0.003)  # ω=1/3: 0.0749 vs 0.0768
    # a larger prior of mated pairs makes every score more linkable
    assert (d_sys(m, n, omega) > d_sys(m, n)) == (omega > 1)
    r1, rw = unlinkability(m, n), unlinkability(m, n, omega)
    np.testing.assert_array_equal(r1.p_mated, rw.p_mated)
    np.testing.assert_allclose(rw.d_local, local_linkability(r1.p_mated, r1.p_nonmated, omega))


def test_histogram_estimate_equals_an_independent_per_score_computation():
    """D↔sys with histogram densities is the mean, over mated scores, of D↔ at each score's bin:
    recompute it that way from bin indices (no np.histogram, no integration), with LR, p(H_m|s)
    and p(H_nm|s) spelled out as in the paper."""
    rng = np.random.default_rng(4)
    m, n = rng.gamma(4.0, 1.0, 30_000) + 1.0, rng.gamma(3.0, 1.0, 50_000)
    lo, hi, k = min(m.min(), n.min()), max(m.max(), n.max()), 100
    bm, bn = (np.minimum(((x - lo) / (hi - lo) * k).astype(int), k - 1) for x in (m, n))
    cm = np.bincount(bm, minlength=k) / len(m)  # bin probabilities (the bin width cancels in LR)
    cn = np.bincount(bn, minlength=k) / len(n)
    for omega in (1.0, 2.5, 0.4):
        d = np.zeros(k)
        for b in range(k):
            if cm[b] == 0:
                continue
            if cn[b] == 0:
                d[b] = 1.0
                continue
            lr = cm[b] / cn[b]
            p_m = omega * lr / (1 + omega * lr)
            d[b] = max(0.0, p_m - (1 - p_m))
        expected = d[bm].mean()
        assert unlinkability(m, n, omega).d_sys == pytest.approx(expected, abs=1e-12)


def test_local_linkability_formula():
    pm = np.array([0.0, 0.0, 1.0, 2.0, 1.0, 3.0])
    pn = np.array([0.0, 1.0, 0.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(local_linkability(pm, pn), [0, 0, 1, 1 / 3, 0, 0.5])
    # omega = 2: p(H_m|s) = 2LR/(1+2LR); LR = 1/2 sits exactly at omega*LR = 1 -> 0
    np.testing.assert_allclose(local_linkability(pm, pn, 2.0), [0, 0, 1, 0.6, 0, 5 / 7])


def test_kde_matches_scipy_gaussian_kde():
    rng = np.random.default_rng(5)
    m, n = rng.normal(1, 0.7, 3000), rng.normal(0, 1, 4000)
    r = unlinkability(m, n, method="kde")
    for x, p in ((m, r.p_mated), (n, r.p_nonmated)):
        ref = stats.gaussian_kde(x)(r.grid)
        assert scott_bandwidth(x) == pytest.approx(float(np.sqrt(stats.gaussian_kde(x).covariance[0, 0])), rel=1e-12)
        assert np.abs(p - ref).max() < 1e-4 * ref.max()
        assert np.trapezoid(p, r.grid) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "mated,nonmated,kw,match",
    [
        ([], [0.1, 0.2], {}, "no mated scores"),
        ([0.1, 0.2], np.array([]), {}, "no non-mated scores"),
        ([0.1, np.nan], [0.1, 0.2], {}, "mated scores hold 1 non-finite"),
        ([0.1, 0.2], [0.1, np.inf, 0.3], {}, "non-mated scores hold 1 non-finite.*index 1"),
        ([0.5, 0.5], [0.5, 0.5, 0.5], {}, "all 2 mated and 3 non-mated scores equal 0.5"),
        ([[0.1, 0.2]], [0.1, 0.2], {}, "1-D array"),
        ([0.1, 0.2], [0.1, 0.3], {"omega": 0.0}, "omega"),
        ([0.1, 0.2], [0.1, 0.3], {"omega": float("nan")}, "omega"),
        ([0.1, 0.2], [0.1, 0.3], {"n_bins": 1}, "n_bins"),
        ([0.1, 0.2], [0.1, 0.3], {"method": "svm"}, "unknown method"),
        ([0.1, 0.2], [0.1, 0.3], {"integration": "simpson"}, "unknown integration"),
        ([0.5, 0.5], [0.1, 0.3], {"method": "kde"}, "mated scores have no spread"),
    ],
)
def test_bad_input_raises_value_error(mated, nonmated, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        unlinkability(mated, nonmated, **kw)
    assert isinstance(e.value, FaceveilDataError)


def test_plot_is_written_atomically(tmp_path):
    rng = np.random.default_rng(6)
    m, n = rng.normal(1, 1, 2000), rng.normal(0, 1, 5000)
    for method in ("hist", "kde"):
        out = plot_unlinkability(unlinkability(m, n, 2.0, method=method), tmp_path / f"u-{method}.png", title="synthetic")
        assert out == tmp_path / f"u-{method}.png"
        with Image.open(out) as im:
            assert im.format == "PNG" and im.size[0] > 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u-hist.png", "u-kde.png"]  # no temp files left


def test_real_faces_unprotected_linkable_keyed_projection_unlinkable(lfw_templates, tmp_path):
    """dlib templates of 1,549 LFW images: unprotected, two photos of one person are linked
    (D↔sys high); under two independent random orthonormal projections (keys A and B) even the
    same photo's two templates are not (D↔sys low)."""
    x, labels = lfw_templates
    plain = linkage_scores(x, x, labels, mated="subject", max_nonmated=200_000)
    u_plain = unlinkability(plain.mated, plain.nonmated)
    assert len(plain.mated) == 2 * 983 and u_plain.d_sys > 0.8  # measured 0.974

    qa, qb = random_orthonormal(x.shape[1], 1), random_orthonormal(x.shape[1], 2)
    keyed = linkage_scores(x @ qa, x @ qb, labels, mated="sample", max_nonmated=200_000)
    u_keyed = unlinkability(keyed.mated, keyed.nonmated)
    # measured 0.050 (0.043-0.054 over five key pairs); the histogram estimator alone gives
    # 0.041 +- 0.004 on 1,549 mated scores drawn from the non-mated distribution itself
    assert len(keyed.mated) == len(x) and u_keyed.d_sys < 0.1
    assert unlinkability(keyed.mated, keyed.nonmated, method="kde").d_sys < 0.1  # measured 0.031

    # the same key twice: identical templates, D↔sys = 1; other photos of a person: as unprotected
    same_key = linkage_scores(x @ qa, x @ qa, labels, mated="sample", max_nonmated=200_000)
    assert np.allclose(same_key.mated, 1.0) and d_sys(same_key.mated, same_key.nonmated) == pytest.approx(1.0, abs=1e-12)
    rotated = linkage_scores(x @ qa, x @ qa, labels, mated="subject", max_nonmated=200_000)
    np.testing.assert_allclose(rotated.mated, plain.mated, atol=1e-12)

    path = plot_unlinkability(u_keyed, tmp_path / "keyed.png", title="dlib, keyed projection", score_label="cosine similarity")
    assert path.stat().st_size > 10_000

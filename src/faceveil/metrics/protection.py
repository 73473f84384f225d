"""Template-protection measures beside unlinkability (ISO/IEC 24745 properties as the biometric
template protection literature measures them):

- recognition performance: :func:`fnmr_at_fmr` (FNMR at a fixed FMR, e.g. 1e-3, ISO/IEC 19795-1
  terms) and the threshold it uses, :func:`threshold_at_fmr`;
- renewability: :func:`renewability`, the fraction of old templates (enrolled before a key change)
  that the renewed system still accepts — 0 when renewal revokes them;
- unlinkability input: :func:`linkage_scores`, the mated and non-mated cross-key score sets that
  :func:`faceveil.metrics.unlinkability.unlinkability` turns into D↔sys.

Scores are either distances (accept when ``score <= threshold``, faceveil's operating-point
convention, ``higher_is_match=False``) or similarities (accept when ``score >= threshold``,
``higher_is_match=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from faceveil.errors import FaceveilDataError
from faceveil.metrics.unlinkability import check_scores
from faceveil.metrics.verification import tpr_at_fpr

#: built-in linkage scores: name -> higher_is_match
SCORES = {"cosine": True, "euclidean": False, "hamming": False}


def _as_distance(scores: np.ndarray, higher_is_match: bool) -> np.ndarray:
    return -scores if higher_is_match else scores


def _check_rate(fmr: float, n_impostor: int) -> float:
    r = float(fmr)
    if not 0.0 < r < 1.0:
        raise FaceveilDataError(f"FMR must lie in (0, 1), got {fmr!r}")
    if n_impostor * r < 1.0 - 1e-9:
        raise FaceveilDataError(
            f"FMR {r:g} cannot be measured on {n_impostor} impostor scores (at least {math.ceil(1 / r - 1e-9)} needed); "
            "score more impostor pairs (every cross pair of different subjects counts)"
        )
    return r


def threshold_at_fmr(impostor: Any, fmr: float, *, higher_is_match: bool = False) -> float:
    """The most permissive decision threshold whose false match rate on ``impostor`` scores is at
    most ``fmr``: with k = ⌊fmr·n⌋, accept strictly better than the (k+1)-th best impostor score
    (ties at that score are rejected, so the FMR never exceeds ``fmr``). Accept ``score <= t`` for
    distances, ``score >= t`` for similarities (``higher_is_match``)."""
    imp = check_scores(impostor, "impostor")
    r = _check_rate(fmr, imp.size)
    d = np.sort(_as_distance(imp, higher_is_match))
    k = int(math.floor(r * imp.size + 1e-9))
    t = float(np.nextafter(d[k], -np.inf)) if k < imp.size else float(d[-1])
    return -t if higher_is_match else t


def accepted(scores: Any, threshold: float, *, higher_is_match: bool = False) -> np.ndarray:
    """Boolean decision per score: ``score <= threshold`` (distances) or ``>=`` (similarities)."""
    s = check_scores(scores, "the")
    return s >= threshold if higher_is_match else s <= threshold


def fnmr_at_fmr(genuine: Any, impostor: Any, fmr: float, *, higher_is_match: bool = False) -> float:
    """False non-match rate at the most permissive threshold with FMR ≤ ``fmr`` (ROC read-out via
    :func:`faceveil.metrics.verification.tpr_at_fpr`: FNMR = 1 − TPR at FPR ≤ ``fmr``)."""
    gen, imp = check_scores(genuine, "genuine"), check_scores(impostor, "impostor")
    r = _check_rate(fmr, imp.size)
    dist = _as_distance(np.concatenate([gen, imp]), higher_is_match)
    same = np.r_[np.ones(gen.size, dtype=bool), np.zeros(imp.size, dtype=bool)]
    return 1.0 - tpr_at_fpr(dist, same, r)


def renewability(old_vs_new_scores: Any, threshold: float, *, higher_is_match: bool = False) -> float:
    """Fraction of old templates the renewed system accepts: each score compares a template
    protected under the old key with the same person's template under the new key, decided at the
    new system's ``threshold`` (e.g. :func:`threshold_at_fmr` on its impostors). 0 = the key change
    revoked every old template; the renewed system's own FMR is the level of chance."""
    if not math.isfinite(float(threshold)):
        raise FaceveilDataError(f"threshold must be finite, got {threshold!r}")
    return float(accepted(check_scores(old_vs_new_scores, "old-vs-new"), float(threshold), higher_is_match=higher_is_match).mean())


# ---------------------------------------------------------------------------------------------
# Cross-key linkage scores
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkageScores:
    """Mated and non-mated cross-key scores with the index pairs (row under key A, row under key B)."""

    mated: np.ndarray
    nonmated: np.ndarray
    higher_is_match: bool
    mated_pairs: np.ndarray  # [M, 2] int64
    nonmated_pairs: np.ndarray  # [K, 2] int64


def _templates(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[0] == 0:
        raise FaceveilDataError(f"{name}: no templates (shape {list(a.shape)})")
    a = a.reshape(a.shape[0], -1)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise FaceveilDataError(f"{name}: templates hold NaN or inf (first row {int(np.flatnonzero(~np.isfinite(a).all(1))[0])})")
    return a


def _rowwise(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if name == "cosine":
        a, b = a.astype(np.float64), b.astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        if (na == 0).any() or (nb == 0).any():
            raise FaceveilDataError("cosine linkage score of an all-zero template")
        return np.einsum("ij,ij->i", a, b) / (na * nb)
    if name == "euclidean":
        return np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=1)
    return (a != b).mean(axis=1).astype(np.float64)  # hamming: fraction of differing elements


def _pair_scores(a: np.ndarray, b: np.ndarray, pairs: np.ndarray, score: str | Callable) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    step = max(1, (1 << 24) // max(1, a.shape[1]))  # ~16M elements per side per chunk
    for s in range(0, len(pairs), step):
        p = pairs[s : s + step]
        if callable(score):
            v = np.asarray(score(a[p[:, 0]], b[p[:, 1]]), dtype=np.float64).reshape(-1)
            if v.shape != (len(p),):
                raise FaceveilDataError(f"the score function returned {v.size} values for {len(p)} template pairs (one per row expected)")
        else:
            v = _rowwise(score, a[p[:, 0]], b[p[:, 1]])
        out[s : s + step] = v
    return out


def _mated_pairs(labels: np.ndarray, mated: str) -> np.ndarray:
    if mated == "sample":
        i = np.arange(len(labels), dtype=np.int64)
        return np.stack([i, i], axis=1)
    out = []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1
    for g in np.split(order, bounds):
        if len(g) > 1 or mated == "all":
            ii, jj = np.meshgrid(g, g, indexing="ij")
            keep = ii != jj if mated == "subject" else np.ones(ii.shape, dtype=bool)
            out.append(np.stack([ii[keep], jj[keep]], axis=1))
    pairs = np.concatenate(out).astype(np.int64) if out else np.empty((0, 2), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _nonmated_pairs(labels: np.ndarray, max_pairs: int | None, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    _, counts = np.unique(labels, return_counts=True)
    available = n * n - int((counts.astype(np.int64) ** 2).sum())
    if n * n <= 4_000_000:  # enumerate every ordered cross pair of different subjects
        ii, jj = np.nonzero(labels[:, None] != labels[None, :])
        flat = ii.astype(np.int64) * n + jj
        if max_pairs is not None and flat.size > max_pairs:
            flat = np.sort(rng.choice(flat, size=max_pairs, replace=False))
    else:  # rejection sampling over all n² ordered pairs
        if max_pairs is None:
            raise FaceveilDataError(f"{available:,} non-mated pairs are too many to score all: set max_nonmated")
        want = min(max_pairs, available)
        flat = np.empty(0, dtype=np.int64)
        while flat.size < want:
            c = rng.integers(0, n * n, size=2 * (want - flat.size) + 16)
            c = c[labels[c // n] != labels[c % n]]
            flat = np.unique(np.concatenate([flat, c]))
        flat = np.sort(rng.choice(flat, size=want, replace=False))
    return np.stack([flat // n, flat % n], axis=1).astype(np.int64)


def linkage_scores(
    templates_a: Any,
    templates_b: Any,
    labels: Any,
    *,
    mated: Literal["sample", "subject", "all"],
    score: str | Callable[[np.ndarray, np.ndarray], np.ndarray] = "cosine",
    higher_is_match: bool | None = None,
    max_nonmated: int | None = 100_000,
    seed: int = 0,
) -> LinkageScores:
    """Cross-key linkage scores for D↔sys: row i of ``templates_a`` and of ``templates_b`` is the
    same face sample protected under key A and under key B; ``labels[i]`` is its subject.

    Every score compares a key-A template (first index) with a key-B template (second index).
    ``mated`` pairs: ``"sample"`` (i, i), the same sample under both keys (the worst case for the
    protection); ``"subject"`` (i, j), i ≠ j of the same subject (the paper's protocol: another
    capture of the person enrolled in the other application); ``"all"`` both. Non-mated pairs are
    (i, j) of different subjects, all of them, or ``max_nonmated`` drawn without replacement with
    ``seed``. ``score``: ``"cosine"`` (similarity), ``"euclidean"`` or ``"hamming"`` (distances;
    hamming = fraction of differing elements, for binary templates), or a function of two
    ``[M, D]`` arrays returning M scores, whose direction ``higher_is_match`` must then state."""
    a, b = _templates(templates_a, "templates_a"), _templates(templates_b, "templates_b")
    lab = np.asarray(labels).reshape(-1)
    if a.shape != b.shape:
        raise FaceveilDataError(f"templates_a {list(a.shape)} and templates_b {list(b.shape)} differ: row i of both must be "
                                "the same sample under the two keys")
    if lab.shape[0] != a.shape[0]:
        raise FaceveilDataError(f"{lab.shape[0]} labels for {a.shape[0]} templates")
    if callable(score):
        if higher_is_match is None:
            raise FaceveilDataError("a custom score function needs higher_is_match (True for similarities, False for distances)")
        him = bool(higher_is_match)
    elif score in SCORES:
        him = SCORES[score]
        if higher_is_match is not None and bool(higher_is_match) != him:
            raise FaceveilDataError(f"the {score} score has higher_is_match={him}, not {higher_is_match}")
    else:
        raise FaceveilDataError(f"unknown score {score!r}; use one of {sorted(SCORES)} or a function")
    if mated not in ("sample", "subject", "all"):
        raise FaceveilDataError(f"unknown mated protocol {mated!r}; use 'sample', 'subject' or 'all'")
    if max_nonmated is not None and max_nonmated < 1:
        raise FaceveilDataError(f"max_nonmated must be >= 1 or None, got {max_nonmated}")
    mp = _mated_pairs(lab, mated)
    if len(mp) == 0:
        raise FaceveilDataError(f"no mated pairs under protocol {mated!r}: no subject has two samples")
    if (lab == lab[0]).all():
        raise FaceveilDataError("every sample has the same subject label: no non-mated pairs")
    npairs = _nonmated_pairs(lab, max_nonmated, np.random.default_rng(seed))
    return LinkageScores(_pair_scores(a, b, mp, score), _pair_scores(a, b, npairs, score), him, mp, npairs)

"""Validation shared by the storage backends: the system binding, enrolment batches, probes, API keys.

Everything a write needs is checked here *before* the backend opens its transaction, so a bad item in the
middle of a batch stores nothing of the batch (the transaction is the second line of defence).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from faceveil.errors import FaceveilDataError
from faceveil.service.storage.base import ApiKeyRecord, Hit, TemplateRecord, check_name, template_bytes

METRICS = ("cosine", "euclidean")
DIGEST_RE = re.compile(r"^[\w.:\-]{1,256}$")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
#: the most templates one enrol call may carry (a bound on a transaction's size)
MAX_BATCH_TEMPLATES = 100_000


def check_binding(system_digest: str, dim: int, metric: str) -> tuple[str, int, str]:
    """The system a database serves: its bundle digest, embedding size and metric, validated."""
    if not isinstance(system_digest, str) or not DIGEST_RE.match(system_digest):
        raise FaceveilDataError(f"system digest must be 1-256 word characters or .:-, got {system_digest!r}")
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or not 1 <= int(dim) <= 16000:
        raise FaceveilDataError(f"embedding dimension must be an integer in 1..16000, got {dim!r}")
    if metric not in METRICS:
        raise FaceveilDataError(f"metric must be one of {METRICS}, got {metric!r}")
    return system_digest, int(dim), metric


def check_embedding(e: np.ndarray, dim: int, metric: str, what: str) -> np.ndarray:
    """A finite float32 vector of ``dim`` values (non-zero under cosine)."""
    a = np.asarray(e)
    if a.dtype.kind not in "fiu" or a.shape != (dim,):
        raise FaceveilDataError(f"{what} must be a numeric vector of {dim} values, got shape {a.shape} {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise FaceveilDataError(f"{what} has non-finite values")
    if metric == "cosine" and not np.any(a):
        raise FaceveilDataError(f"{what} is all zeros (no cosine distance)")
    return a


def prepare_items(items: Sequence[tuple[str, Sequence[TemplateRecord]]], dim: int,
                  metric: str) -> list[tuple[str, list[tuple[bytes, np.ndarray]]]]:
    """An enrolment batch, checked whole: ``[(label, [(template .npy bytes, float32 embedding)])]``."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise FaceveilDataError("enroll items must be a sequence of (subject, templates) pairs")
    out: list[tuple[str, list[tuple[bytes, np.ndarray]]]] = []
    total = 0
    for i, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise FaceveilDataError(f"enroll item {i} must be a (subject, templates) pair")
        label, records = item
        check_name(label, f"subject of item {i}")
        if isinstance(records, TemplateRecord) or not isinstance(records, Sequence) or not records:
            raise FaceveilDataError(f"item {i} ({label!r}) must have at least one template record")
        recs = []
        for j, r in enumerate(records):
            if not isinstance(r, TemplateRecord):
                raise FaceveilDataError(f"item {i} ({label!r}) template {j} is not a TemplateRecord")
            t = np.asarray(r.template)
            if t.dtype.kind not in "fiu" or t.size == 0 or not np.isfinite(t).all():
                raise FaceveilDataError(f"item {i} ({label!r}) template {j} must be a non-empty finite numeric array")
            recs.append((template_bytes(t), check_embedding(r.embedding, dim, metric, f"item {i} ({label!r}) embedding {j}")))
        total += len(recs)
        if total > MAX_BATCH_TEMPLATES:
            raise FaceveilDataError(f"an enrol batch holds at most {MAX_BATCH_TEMPLATES} templates")
        out.append((label, recs))
    return out


def check_probes(embeddings: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """Probe embeddings as float32 ``[P, D]`` (a single ``[D]`` vector is one probe)."""
    a = np.asarray(embeddings)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim or a.dtype.kind not in "fiu":
        raise FaceveilDataError(f"probe embeddings must be numeric [P, {dim}], got shape {a.shape} {a.dtype}")
    for i, row in enumerate(a):
        check_embedding(row, dim, metric, f"probe {i}")
    return np.ascontiguousarray(a, dtype=np.float32)


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= 1000:
        raise FaceveilDataError(f"k must be an integer in 1..1000, got {k!r}")
    return int(k)


def check_api_key(record: ApiKeyRecord) -> ApiKeyRecord:
    """An API key record as stored: a valid name, a lowercase sha256 hex, valid gallery names or None."""
    if not isinstance(record, ApiKeyRecord):
        raise FaceveilDataError("an API key must be an ApiKeyRecord")
    check_name(record.name, "API key name")
    if not isinstance(record.key_hash, str) or not KEY_HASH_RE.match(record.key_hash):
        raise FaceveilDataError("an API key is stored as the lowercase hex sha256 of the key (64 characters)")
    galleries = record.galleries
    if galleries is not None:
        if isinstance(galleries, str):
            raise FaceveilDataError("API key galleries must be a sequence of gallery names or None")
        galleries = tuple(check_name(g, "API key gallery") for g in galleries)
    return ApiKeyRecord(record.name, record.key_hash, galleries, bool(record.admin))


def distances(probe: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances (float64) of one probe ``[D]`` to candidates ``[N, D]``: 1-cos or Euclidean."""
    p = probe.astype(np.float64)
    c = cand.astype(np.float64)
    if metric == "cosine":
        return 1.0 - (c @ p) / (np.linalg.norm(c, axis=1) * np.linalg.norm(p))
    return np.linalg.norm(c - p, axis=1)


def best_per_subject(labels: Sequence[str], dist: Sequence[float], k: int) -> list[Hit]:
    """The ``k`` nearest subjects from candidate (label, distance) pairs: each subject at its best
    template, nearest first (ties by label, for a deterministic order)."""
    best: dict[str, float] = {}
    for lab, d in zip(labels, dist, strict=True):
        d = float(d)
        if lab not in best or d < best[lab]:
            best[lab] = d
    return [Hit(lab, d) for lab, d in sorted(best.items(), key=lambda x: (x[1], x[0]))[:k]]

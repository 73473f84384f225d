"""An exact in-memory nearest-subject index over one gallery (the SQLite backend's identification).

The matrix of the gallery's embeddings (unit rows under cosine) and the subject id of each row. Writers
(under the repository's lock, after their transaction committed) append in place past the rows that
readers can see, or build new arrays (removal), so a reader holding a :class:`Snapshot` never sees a
half-written row and needs no lock while it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceveil.service.storage.base import Hit
from faceveil.service.storage.common import best_per_subject, distances


@dataclass(frozen=True)
class Snapshot:
    emb: np.ndarray  # [N, D] float32 (unit rows under cosine)
    sid: np.ndarray  # [N] int64 subject ids
    sqn: np.ndarray  # [N] float32 squared norms (euclidean)
    labels: dict[int, str]
    tmax: int  # most templates of one subject
    metric: str

    def search(self, probes: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest subjects of each probe ``[P, D]``: a float32 ranking picks candidates (enough
        to hold every one of the ``k`` best subjects' best template), then exact float64 distances."""
        n = len(self.sid)
        if n == 0:
            return [[] for _ in range(len(probes))]
        q = probes.astype(np.float32)
        if self.metric == "cosine":
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            approx = -(self.emb @ q.T)  # [N, P], smaller is nearer
        else:
            approx = self.sqn[:, None] - 2.0 * (self.emb @ q.T)  # + |q|^2, constant per probe
        c = min(n, k * max(1, self.tmax) + 16)
        out = []
        for p in range(len(q)):
            col = approx[:, p]
            idx = np.argpartition(col, c - 1)[:c] if c < n else np.arange(n)
            d = distances(q[p], self.emb[idx], self.metric)
            out.append(best_per_subject([self.labels[int(s)] for s in self.sid[idx]], d, k))
        return out


class GalleryIndex:
    """The rows of one gallery, appended after each committed enrolment, removed after each erasure."""

    def __init__(self, dim: int, metric: str) -> None:
        self.dim, self.metric = dim, metric
        self._emb = np.empty((0, dim), np.float32)
        self._sid = np.empty(0, np.int64)
        self._sqn = np.empty(0, np.float32)
        self._n = 0
        self._labels: dict[int, str] = {}
        self._counts: dict[int, int] = {}
        self._tmax = 0

    def __len__(self) -> int:
        return self._n

    def _prepare(self, emb: np.ndarray) -> np.ndarray:
        e = np.asarray(emb, np.float32).reshape(-1, self.dim)
        if self.metric == "cosine":
            e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return e

    def add(self, sids: np.ndarray, emb: np.ndarray, labels: dict[int, str]) -> None:
        """Append rows (subject ids ``[M]``, embeddings ``[M, D]``) of subjects named in ``labels``."""
        e = self._prepare(emb)
        sids = np.asarray(sids, np.int64)
        m = len(sids)
        if m == 0:
            return
        n = self._n
        if n + m > len(self._sid):  # grow into new arrays (readers keep the old ones)
            cap = max(n + m, 2 * len(self._sid), 64)
            emb2 = np.empty((cap, self.dim), np.float32)
            sid2 = np.empty(cap, np.int64)
            sqn2 = np.empty(cap, np.float32)
            emb2[:n], sid2[:n], sqn2[:n] = self._emb[:n], self._sid[:n], self._sqn[:n]
            self._emb, self._sid, self._sqn = emb2, sid2, sqn2
        self._emb[n:n + m] = e
        self._sid[n:n + m] = sids
        self._sqn[n:n + m] = np.einsum("ij,ij->i", e, e)
        self._labels.update(labels)  # new keys only: a reader's lookups of older ids are unaffected
        for s in sids.tolist():
            self._counts[s] = self._counts.get(s, 0) + 1
            self._tmax = max(self._tmax, self._counts[s])
        self._n = n + m

    def remove(self, sid: int) -> None:
        """Drop a subject's rows (new arrays: snapshots already taken keep the old ones)."""
        keep = self._sid[:self._n] != sid
        self._emb, self._sid, self._sqn = self._emb[:self._n][keep], self._sid[:self._n][keep], self._sqn[:self._n][keep]
        self._n = len(self._sid)
        self._labels = {s: lab for s, lab in self._labels.items() if s != sid}
        self._counts.pop(sid, None)
        self._tmax = max(self._counts.values(), default=0)

    def snapshot(self) -> Snapshot:
        n = self._n
        return Snapshot(self._emb[:n], self._sid[:n], self._sqn[:n], self._labels, self._tmax, self.metric)

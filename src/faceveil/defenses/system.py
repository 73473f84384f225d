"""A protected face recognition system: defense + recogniser (frozen or adapted).

What an attacker gets:
- channel leakage: :meth:`ProtectedSystem.channel` — what the client transmits;
- database leakage: :meth:`ProtectedSystem.database` — what the server stores.

Recognition: enrolment stores ``protect_stored(protect(x))``; a probe transmits ``protect(x)``;
the server embeds both through ``recover`` and its server model. LFW utility runs both images of
every pair through the full protected path (the first as enrolment, the second as probe).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses.base import Defense
from faceveil.keys import research_generator
from faceveil.metrics.verification import best_threshold
from faceveil.models.base import OperatingPoint, pairwise_distance


def module_digest(m: nn.Module, length: int = 16) -> str:
    """sha256 of a module's parameters and buffers (keys caches of results computed with it)."""
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:length]


@dataclass
class Timing:
    client_ms: float
    server_ms: float


class ProtectedSystem:
    """Defense + server model. ``server="frozen"`` uses the deployed recogniser as is;
    ``"adapted"`` a student distilled on protected inputs (:mod:`faceveil.train`)."""

    def __init__(self, defense: Defense, server: str = "frozen", profile: str = "quick", seed: int = 0,
                 metric: str | None = None, data=None, student_overrides: dict | None = None) -> None:
        if server not in ("frozen", "adapted"):
            raise ValueError(f"server must be 'frozen' or 'adapted', got {server!r}")
        self.defense = defense
        self.server_kind = server
        self.profile = profile
        self.seed = seed
        self.data = data
        self.student_overrides = dict(student_overrides or {})  # DistillConfig fields (e.g. train_images)
        self._server: nn.Module | None = None
        self.metric = metric or ("cosine" if server == "adapted" else defense.recognizer.metric)
        self.operating: OperatingPoint | None = None

    @property
    def server(self) -> nn.Module:
        if self._server is None:
            if self.server_kind == "frozen":
                self._server = self.defense.frozen_server()
            else:
                from faceveil.train import adapted_server

                with torch.enable_grad():  # first use may come from a no_grad path (embed_protected); training needs grad
                    self._server = adapted_server(self.defense, profile=self.profile, seed=self.seed, data=self.data,
                                                  **self.student_overrides)
            self._server.eval()
        return self._server

    # --- what leaks ---------------------------------------------------------------------------
    def channel(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.defense.protect(x, rng)

    def database(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.defense.protect_stored(self.defense.protect(x, rng), rng)

    def leak(self, x: Tensor, scenario: str, rng: torch.Generator | None = None) -> Tensor:
        if scenario == "channel":
            return self.channel(x, rng)
        if scenario == "database":
            return self.database(x, rng)
        raise ValueError(f"leakage scenario must be 'channel' or 'database', got {scenario!r}")

    # --- recognition ------------------------------------------------------------------------
    @torch.no_grad()
    def embed_protected(self, t: Tensor, stored: bool) -> Tensor:
        """Server-side embedding of transmitted (probe) or stored (enrolled) data."""
        if not stored:
            t = self.defense.probe_transform(t)
        return self.server(self.defense.recover(t)).float()

    def enroll(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Protected templates to store for images ``x`` (only protected data is kept)."""
        with torch.set_grad_enabled(self.defense.needs_grad_to_protect):
            return self.database(x, rng).detach()

    def verify(self, probe: Tensor, stored: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Accept/reject each probe image against the stored template at the operating point."""
        op = self.operating or self.fit_operating_point()
        with torch.set_grad_enabled(self.defense.needs_grad_to_protect):
            t = self.channel(probe, rng).detach()
        d = pairwise_distance(self.embed_protected(t, stored=False), self.embed_protected(stored, stored=True), op.metric)
        return d <= op.threshold

    # --- batched paths over chips -------------------------------------------------------------
    def embed_chips(self, chips: np.ndarray, stored: bool, batch_size: int = 32, salt: int = 0,
                    timing: list | None = None) -> Tensor:
        """Embeddings of uint8 chips through the full protected path (enrolment or probe)."""
        out = []
        for t, client_s in self._protected_batches(chips, stored, batch_size, salt):
            t1 = time.perf_counter()
            out.append(self.embed_protected(t, stored))
            t2 = time.perf_counter()
            if timing is not None:
                timing.append((len(t), client_s, t2 - t1))
        return torch.cat(out)

    def _protected_batches(self, chips: np.ndarray, stored: bool, batch_size: int, salt: int) -> Iterator[tuple[Tensor, float]]:
        """(protected batch, client seconds) per batch, streamed: a fast client's batches are made one
        at a time (64 clean BDCT channels of all 4,500 LFW enrolment faces would be 14 GB at once).
        The client's output does not depend on the server, so for slow clients (``protect_ms_hint`` >=
        ``SLOW_CLIENT_MS``: AdvNoise, DeepBlur, PMT, AdvFace) the batches are cached on disk, keyed by the
        defense, the chips, the seed and the batching, together with the client time measured when they
        were computed: the frozen and adapted utility cells and re-runs reuse them instead of protecting
        the same faces again (their sets are capped, see :func:`faceveil.bench.runner.setting_sizes`);
        a stopped run resumes at the next uncached batch."""
        from faceveil.config import cache_dir, config_hash, load_or_compute_parts

        d = self.defense
        n = -(-len(chips) // batch_size)

        def one(bi: int) -> tuple[Tensor, float]:
            x = to_tensor(chips[bi * batch_size : (bi + 1) * batch_size])
            rng = research_generator(self.seed, bi, salt)
            t0 = time.perf_counter()
            with torch.set_grad_enabled(d.needs_grad_to_protect):
                t = self.database(x, rng) if stored else self.channel(x, rng)
            return t.detach(), time.perf_counter() - t0

        if not d.slow:
            yield from (one(bi) for bi in range(n))
            return

        def part(bi: int) -> dict:
            t, sec = one(bi)
            return {"protected": t, "client_seconds": sec}

        def combine(parts: list[dict]) -> dict:
            return {k: [p[k] for p in parts] for k in ("protected", "client_seconds")}

        digest = hashlib.sha256(np.ascontiguousarray(chips).tobytes()).hexdigest()[:16]
        key = config_hash(d.config(), d.recognizer.name, stored, self.seed, salt, batch_size, chips.shape, digest,
                          "protected-v1")
        c = load_or_compute_parts(cache_dir("protected") / f"{d.name}-{key}.pt", n, part, combine)
        yield from zip(c["protected"], c["client_seconds"], strict=True)

    def pair_embeddings(self, lfw: LFW, pairs, batch_size: int = 32) -> tuple[Tensor, Tensor, Timing]:
        """Enrolment embeddings of pair side A and probe embeddings of side B."""
        ds = lfw.dataset()
        crop = self.defense.recognizer.crop
        ua, ia = np.unique(pairs.a, return_inverse=True)
        ub, ib = np.unique(pairs.b, return_inverse=True)
        ca, _ = ds.subset(ua).chips(crop, progress=False)
        cb, _ = ds.subset(ub).chips(crop, progress=False)
        timing: list = []
        ea = self.embed_chips(ca, stored=True, batch_size=batch_size, salt=1, timing=timing)
        eb = self.embed_chips(cb, stored=False, batch_size=batch_size, salt=2, timing=timing)
        n = sum(t[0] for t in timing)
        tm = Timing(1000 * sum(t[1] for t in timing) / n, 1000 * sum(t[2] for t in timing) / n)
        return ea[ia], eb[ib], tm

    def fit_operating_point(self, lfw: LFW | None = None) -> OperatingPoint:
        """Threshold re-fit on pairsDevTrain through the protected path."""
        lfw = lfw or LFW(self.data)
        pairs = lfw.pairs("devtrain")
        ea, eb, _ = self.pair_embeddings(lfw, pairs)
        d = pairwise_distance(ea, eb, self.metric).double().numpy()
        t, acc = best_threshold(d, pairs.same)
        self.operating = OperatingPoint(self.metric, t, "lfw pairsDevTrain.txt (protected path)", acc)
        return self.operating

    def lfw_utility(self, lfw: LFW | None = None, per_fold: int | None = None, force: bool = False) -> dict:
        """LFW 10-fold accuracy of the protected system (both images protected). Cached on disk, keyed
        by the defense, the server's weights, the seed, the metric and the pairs (all 6,000 pairs of a
        64-channel client take minutes, and benchmarks and experiments re-judge the same systems);
        ``client_ms``/``server_ms`` are those measured when the result was computed."""
        from faceveil.bench.lfw import subset_pairs, verification
        from faceveil.config import cache_dir, config_hash, load_or_compute

        lfw = lfw or LFW(self.data)
        key = config_hash(self.defense.config(), self.defense.recognizer.name, self.server_kind, module_digest(self.server),
                          self.seed, self.metric, per_fold, str(lfw.base), "utility-v1")

        def compute() -> dict:
            pairs = subset_pairs(lfw.pairs("pairs"), per_fold)
            ea, eb, tm = self.pair_embeddings(lfw, pairs)
            res = verification(ea, eb, pairs, f"{self.defense.name}/{self.server_kind}", metrics=(self.metric,))[0]
            return {**asdict(res), "client_ms": tm.client_ms, "server_ms": tm.server_ms}

        out = load_or_compute(cache_dir("utility") / f"{self.defense.name}-{key}.pt", compute, force)
        return {**out, "storage_bytes": self.defense.storage_bytes(), "server": self.server_kind}

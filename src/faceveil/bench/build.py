"""Offline work around a :class:`~faceveil.system.ProtectedSystem`: making its server model (frozen, or a
student distilled on protected inputs), fitting its operating point on LFW ``pairsDevTrain``, and judging
it on LFW pairs. Everything here reads datasets or trains; the system itself does neither.

The protected path over many chips (:func:`embed_chips`) draws its randomness from a research seed, so
benchmark numbers re-run exactly; a slow client's batches are cached on disk.
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
from faceveil.models.embed import module_digest
from faceveil.system.core import ProtectedSystem

SERVER_KINDS = ("frozen", "adapted")


@dataclass
class Timing:
    client_ms: float
    server_ms: float


def server_model(defense: Defense, server: str = "frozen", profile: str = "quick", seed: int = 0, data=None,
                 progress: bool = True, **student_overrides) -> nn.Module:
    """The server model of ``defense``: the deployed recogniser as is (``"frozen"``), or the student
    distilled on its protected inputs (``"adapted"``: trained once with the profile's budget, cached)."""
    if server not in SERVER_KINDS:
        raise ValueError(f"server must be one of {SERVER_KINDS}, got {server!r}")
    if server == "frozen":
        return defense.frozen_server().eval()
    from faceveil.train import adapted_server

    with torch.enable_grad():  # may be called from a no_grad path; training needs grad
        return adapted_server(defense, profile=profile, seed=seed, data=data, progress=progress, **student_overrides).eval()


def bench_system(defense: Defense, server: str = "frozen", profile: str = "quick", seed: int = 0, data=None,
                 model: nn.Module | None = None, metric: str | None = None, progress: bool = True,
                 **student_overrides) -> ProtectedSystem:
    """A system for evaluation: its server model made now (or ``model``), no operating point (LFW's
    10-fold protocol chooses thresholds per fold)."""
    model = model if model is not None else server_model(defense, server, profile, seed, data, progress, **student_overrides)
    return ProtectedSystem(defense, model, None, server, metric,
                           provenance={"profile": profile, "seed": seed, "train_log": getattr(model, "train_log", None)})


def build_system(defense: Defense, server: str = "frozen", profile: str = "quick", seed: int = 0, data=None,
                 progress: bool = True, **student_overrides) -> ProtectedSystem:
    """A ready system: the server model (trained or loaded), the operating point fitted on LFW
    ``pairsDevTrain`` through the protected path, the transmitted and stored shapes, and provenance."""
    t0 = time.perf_counter()
    system = bench_system(defense, server, profile, seed, data, progress=progress, **student_overrides)
    lfw = LFW(data)
    op = fit_operating_point(system, lfw, seed)
    system.operating_point, system.metric = op, op.metric
    chips, _ = lfw.dataset().subset(lfw.pairs("devtrain").a[:2]).chips(defense.recognizer.crop, progress=False)
    with torch.set_grad_enabled(defense.needs_grad_to_protect):
        x = to_tensor(chips)
        t = defense.protect(x, research_generator(seed, 0, 3)).detach()
        s = defense.protect_stored(t, research_generator(seed, 0, 4)).detach()
    system.transmitted_shape, system.stored_shape = tuple(t.shape[1:]), tuple(s.shape[1:])
    log = getattr(system.model, "train_log", None)
    system.provenance = {"profile": profile, "seed": seed, "built_seconds": round(time.perf_counter() - t0, 1),
                         "student_train_log": log if isinstance(log, dict) else None,
                         "student_overrides": student_overrides or None}
    return system


# ---------------------------------------------------------------------------------------------
# The protected path over many chips
# ---------------------------------------------------------------------------------------------


def _protected_batches(system: ProtectedSystem, chips: np.ndarray, stored: bool, batch_size: int, salt: int,
                       seed: int) -> Iterator[tuple[Tensor, float]]:
    """(protected batch, client seconds) per batch, streamed: a fast client's batches are made one
    at a time (64 clean BDCT channels of all 4,500 LFW enrolment faces would be 14 GB at once).
    The client's output does not depend on the server, so for slow clients (``protect_ms_hint`` >=
    ``SLOW_CLIENT_MS``: AdvNoise, DeepBlur, PMT, AdvFace) the batches are cached on disk, keyed by the
    defense, the chips, the seed and the batching, together with the client time measured when they
    were computed: the frozen and adapted utility cells and re-runs reuse them instead of protecting
    the same faces again; a stopped run resumes at the next uncached batch."""
    from faceveil.config import cache_dir, config_hash, load_or_compute_parts

    d = system.defense
    n = -(-len(chips) // batch_size)

    def one(bi: int) -> tuple[Tensor, float]:
        x = to_tensor(chips[bi * batch_size : (bi + 1) * batch_size])
        rng = research_generator(seed, bi, salt)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(d.needs_grad_to_protect):
            t = d.leak(x, "database" if stored else "channel", rng)
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
    key = config_hash(d.config(), d.recognizer.name, stored, seed, salt, batch_size, chips.shape, digest, "protected-v1")
    c = load_or_compute_parts(cache_dir("protected") / f"{d.name}-{key}.pt", n, part, combine)
    yield from zip(c["protected"], c["client_seconds"], strict=True)


def embed_chips(system: ProtectedSystem, chips: np.ndarray, stored: bool, batch_size: int = 32, salt: int = 0,
                seed: int = 0, timing: list | None = None) -> Tensor:
    """Embeddings of uint8 chips through the full protected path (enrolment or probe), with per-batch
    randomness from ``seed``."""
    out = []
    for t, client_s in _protected_batches(system, chips, stored, batch_size, salt, seed):
        t1 = time.perf_counter()
        out.append(system.embed_protected(t, stored))
        if timing is not None:
            timing.append((len(t), client_s, time.perf_counter() - t1))
    return torch.cat(out)


def pair_embeddings(system: ProtectedSystem, lfw: LFW, pairs, seed: int = 0, batch_size: int = 32) -> tuple[Tensor, Tensor, Timing]:
    """Enrolment embeddings of pair side A and probe embeddings of side B."""
    ds = lfw.dataset()
    crop = system.defense.recognizer.crop
    ua, ia = np.unique(pairs.a, return_inverse=True)
    ub, ib = np.unique(pairs.b, return_inverse=True)
    ca, _ = ds.subset(ua).chips(crop, progress=False)
    cb, _ = ds.subset(ub).chips(crop, progress=False)
    timing: list = []
    ea = embed_chips(system, ca, stored=True, batch_size=batch_size, salt=1, seed=seed, timing=timing)
    eb = embed_chips(system, cb, stored=False, batch_size=batch_size, salt=2, seed=seed, timing=timing)
    n = sum(t[0] for t in timing)
    tm = Timing(1000 * sum(t[1] for t in timing) / n, 1000 * sum(t[2] for t in timing) / n)
    return ea[ia], eb[ib], tm


def fit_operating_point(system: ProtectedSystem, lfw: LFW | None = None, seed: int = 0) -> OperatingPoint:
    """The threshold of best accuracy on LFW pairsDevTrain through the protected path."""
    lfw = lfw or LFW()
    pairs = lfw.pairs("devtrain")
    ea, eb, _ = pair_embeddings(system, lfw, pairs, seed)
    d = pairwise_distance(ea, eb, system.metric).double().numpy()
    t, acc = best_threshold(d, pairs.same)
    return OperatingPoint(system.metric, t, "lfw pairsDevTrain.txt (protected path)", acc)


def lfw_utility(system: ProtectedSystem, lfw: LFW | None = None, per_fold: int | None = None, seed: int = 0,
                force: bool = False) -> dict:
    """LFW 10-fold accuracy of the protected system (both images protected). Cached on disk, keyed
    by the defense, the server's weights, the seed, the metric and the pairs (all 6,000 pairs of a
    64-channel client take minutes, and benchmarks and experiments re-judge the same systems);
    ``client_ms``/``server_ms`` are those measured when the result was computed."""
    from faceveil.bench.lfw import subset_pairs, verification
    from faceveil.config import cache_dir, config_hash, load_or_compute

    lfw = lfw or LFW()
    d = system.defense
    digest = module_digest(system.model)
    key = config_hash(d.config(), d.recognizer.name, system.server_kind, digest, seed, system.metric,
                      per_fold, str(lfw.base), "utility-v1")

    def compute() -> dict:
        pairs = subset_pairs(lfw.pairs("pairs"), per_fold)
        ea, eb, tm = pair_embeddings(system, lfw, pairs, seed)
        res = verification(ea, eb, pairs, f"{d.name}/{system.server_kind}", metrics=(system.metric,))[0]
        return {**asdict(res), "client_ms": tm.client_ms, "server_ms": tm.server_ms}

    out = load_or_compute(cache_dir("utility") / f"{d.name}-{key}.pt", compute, force)
    # the server's weights digest: two runs whose students were trained apart (e.g. under another thread count,
    # which changes float rounding) differ in it, and `faceveil report diff` says so beside their accuracies
    return {**out, "storage_bytes": d.storage_bytes(), "server": system.server_kind, "model_digest": digest}

"""The leaked-data sets an attacker trains and attacks with: its black-box client on public faces and on
the LFW evaluation targets (seeded per batch, cached for slow clients), and white-box inversions."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faceveil.attacks.base import (
    Attack,
    Budget,
    OptimizationAttack,
    PairSource,
    ReconstructionAttack,
    ThreatModel,
)
from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute_parts
from faceveil.data.align import to_tensor
from faceveil.defenses.base import Defense
from faceveil.keys import research_generator

log = logging.getLogger(__name__)


def leak_fn(defense: Defense, threat: ThreatModel):
    def leak(x: Tensor, rng: torch.Generator) -> Tensor:
        with torch.set_grad_enabled(defense.needs_grad_to_protect):
            t = defense.population_leak(x, threat.leakage, rng)
            if threat.view is not None:
                t = defense.attacker_view(threat.view, t)
        return t.detach().float()

    return leak


#: the attacker's client protects faces in batches of this size, each with its own seeded draws
LEAK_BATCH = 64


#: salt of the draws that make the held LFW evaluation targets
HELD_SALT = 23


def leak_part(leak, chips: np.ndarray, seed: int, salt: int, i: int) -> Tensor:
    """Batch ``i`` (of :data:`LEAK_BATCH` chips) of what the attacker's client gives for ``chips``."""
    return leak(to_tensor(chips[i * LEAK_BATCH : (i + 1) * LEAK_BATCH]), research_generator(seed, i, salt))


def leak_set(defense: Defense, leak, chips: np.ndarray, seed: int, salt: int, path: Path, progress: bool = False,
              desc: str = "protecting", save: bool = True, cache: bool | None = None) -> Tensor:
    """What the attacker's client gives for ``chips`` (:func:`leak_part` batches); a slow client's set (or any,
    with ``cache``) is cached at ``path`` batch by batch (:meth:`Defense.protected_set`)."""
    return defense.protected_set(path, -(-len(chips) // LEAK_BATCH), lambda i: leak_part(leak, chips, seed, salt, i),
                                 progress, desc, save, cache)


def held_targets(defense: Defense, threat: ThreatModel, leak, chips: np.ndarray, idx: np.ndarray, seed: int, data,
                  progress: bool) -> Tensor:
    """What the attacker holds for the LFW evaluation targets. Cached on disk for slow clients
    (``protect_ms_hint`` >= 100 ms: AdvNoise, DeepBlur, ...): every attack cell of a setting judges the
    same targets and the protection is seeded, so re-runs reuse it exactly."""
    key = config_hash(defense.config(), threat.leakage, threat.view, [int(i) for i in idx], seed, str(data_dir(data)),
                      "held-v1")
    return leak_set(defense, leak, chips, seed + 1, HELD_SALT, cache_dir("held") / f"{defense.name}-{key}.pt", progress,
                     "protecting LFW targets")


def attack_streamed(attack: ReconstructionAttack, leak, chips: np.ndarray, seed: int, keep: np.ndarray,
                     progress: bool) -> tuple[Tensor, Tensor, float]:
    """A fast client's held targets made and attacked batch by batch, with the draws of
    :func:`held_targets` (same batches, so the same reconstructions as attacking the whole set):
    ``(reconstructions, held rows keep, attack ms/face)``; the rows are copies (a view would keep its
    batch alive). Why: the whole held set can be larger than RAM (64 FaceObfuscator channels of 3,000
    targets are 9.6 GB, twice that while concatenated)."""
    from tqdm import tqdm

    recon, rows, seconds = [], {}, 0.0
    want = {int(k) for k in keep}
    for i in tqdm(range(-(-len(chips) // LEAK_BATCH)), desc="attacking LFW targets", disable=not progress, leave=False):
        held = leak_part(leak, chips, seed + 1, HELD_SALT, i)
        t0 = time.perf_counter()
        recon.append(attack.attack(held, batch_size=LEAK_BATCH))
        seconds += time.perf_counter() - t0
        rows |= {i * LEAK_BATCH + j: held[j].clone() for j in range(len(held)) if i * LEAK_BATCH + j in want}
    return torch.cat(recon), torch.stack([rows[int(k)] for k in keep]), 1000 * seconds / len(chips)


def file_stamp(path: Path | None) -> tuple | None:
    """Name, size and modification time of a cached attacker (None for an attack without one)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():  # e.g. a white-box inversion not yet (or no longer) saved
        return (path.name, None, None)
    st = path.stat()
    return (path.name, st.st_size, st.st_mtime_ns)


def inversion_path(attack: Attack, defense: Defense, threat: ThreatModel, budget: Budget, idx: np.ndarray,
                    seed: int, data, attacker: Path | None = None) -> Path:
    """Where :func:`inverted` caches the per-target reconstructions of the targets ``idx`` (``attacker``: the
    trained attacker file a per-target attack starts from, e.g. ganinv's mapping)."""
    extra = () if attacker is None else (file_stamp(attacker),)
    key = config_hash(attack.config(), defense.config(), asdict(threat), asdict(budget), [int(i) for i in idx], seed,
                      str(data_dir(data)), "whitebox-v1", *extra)
    return cache_dir("whitebox") / f"{defense.name}-{key}.pt"


def inverted(attack: Attack, defense: Defense, threat: ThreatModel, budget: Budget, held: Tensor,
              idx: np.ndarray, seed: int, data, force: bool, attacker: Path | None = None) -> tuple[Tensor, float, dict]:
    """Per-target reconstructions of the evaluation targets (:attr:`Attack.per_target`: white-box inversion,
    latent refinement, query search), their ms/face and the attack's per-face counts (e.g. queries), cached
    on disk like a trained attacker: the optimisation is seeded (150 steps through the client, ~4.5 s/face on
    one core for a white-box dlib map) and determined by the key, so a re-run reuses it; ``force`` recomputes.
    Each batch of 64 is cached as it finishes, so a stopped run resumes at the next batch. A white-box
    inversion matches :meth:`Defense.whitebox_target` of the held data; other attacks get it as held."""
    path = inversion_path(attack, defense, threat, budget, idx, seed, data, attacker)

    whitebox = isinstance(attack, OptimizationAttack) and "forward_map" in attack.needs
    target = defense.whitebox_target(held) if whitebox else held
    bs = 64  # the attack's batch: samples are inverted independently, so a batch is a resumable part

    def one(i: int) -> dict:
        t0 = time.perf_counter()
        recon = attack.attack(target[i * bs : (i + 1) * bs], batch_size=bs)
        return {"recon": recon, "seconds": time.perf_counter() - t0, "stats": attack.attack_stats()}

    def combine(parts: list[dict]) -> dict:
        stats: dict[str, float] = {}
        for c in parts:
            for k, v in c.get("stats", {}).items():
                stats[k] = stats.get(k, 0.0) + float(v)
        return {"recon": torch.cat([c["recon"] for c in parts]),
                "ms_per_face": 1000 * sum(float(c["seconds"]) for c in parts) / len(held),
                "per_face": {k: v / len(held) for k, v in stats.items()}}

    c = load_or_compute_parts(path, -(-len(target) // bs), one, combine, force)
    return c["recon"], float(c["ms_per_face"]), dict(c.get("per_face", {}))


#: a fast deterministic client's attacker set larger than this is made batch by batch during
#: training instead of held in memory (64 FaceObfuscator channels of 13,566 public faces: 43 GB)
ATTACKER_SET_MAX_BYTES = 4 * 2**30
#: a deterministic client whose output is at most this per face (embeddings, templates: 0.5-8 KB) has its attacker
#: set cached on disk like a slow client's: every attacker of the setting (ridge, dn, cgan, ...) trains on the same
#: set, and a recogniser forward per public face (~25 ms) is most of a cheap cell's time
SMALL_LEAK_BYTES = 64 * 2**10


def attacker_source(defense: Defense, threat: ThreatModel, leak, chips: np.ndarray, targets: Tensor, seed: int,
                    train_images: int | None = None, data=None, progress: bool = False,
                    max_bytes: int = ATTACKER_SET_MAX_BYTES, synthetic=None) -> PairSource:
    """The attacker's (protected, target) pairs. A stochastic client redraws every epoch; a fast
    deterministic client whose set would exceed ``max_bytes`` is run on each batch as it is drawn
    (the same values as the precomputed set: its output does not depend on the draws); otherwise the
    set is made once (:func:`leak_set`, cached on disk for slow clients; ``train_images`` keys it, and
    ``synthetic``, the description of GAN faces appended to ``chips`` (:meth:`Attack.synthetic_chips`))."""
    on_the_fly = defense.stochastic and not defense.needs_grad_to_protect
    small = False
    if not (defense.stochastic or defense.needs_grad_to_protect or defense.slow):
        one = leak(to_tensor(chips[:1]), research_generator(seed, 0, 11))
        on_the_fly = one.numel() * 4 * len(chips) > max_bytes
        small = one.numel() * 4 <= SMALL_LEAK_BYTES
    if on_the_fly:
        u8 = torch.from_numpy(chips)

        def redraw(c: Tensor, g: torch.Generator) -> Tensor:
            return leak(c.permute(0, 3, 1, 2).float().div(255), g)

        return PairSource(targets, inputs=u8, redraw=redraw, seed=seed)
    # keyed by what makes the set, not by the attack: dn and cgan of a setting share it
    key = config_hash(defense.config(), str(defense.recognizer.crop), asdict(threat), train_images, seed,
                      str(data_dir(data)), "attacker-set-v1", *(() if synthetic is None else (synthetic,)))
    protected = leak_set(defense, leak, chips, seed, 11, cache_dir("protected") / f"{defense.name}-attacker-{key}.pt",
                          progress, "attacker protects public faces", save=False, cache=defense.slow or small)
    return PairSource(targets, protected=protected, seed=seed)

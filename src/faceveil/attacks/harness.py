"""Run an attack against a defense under an explicit threat model and judge it.

The attacker (black-box client) protects public faces himself — CelebA aligned + wild + LFW
identities absent from pairs.txt — and trains a reconstruction network on (leaked data, face)
pairs ("adversarial training" in FaceObfuscator's words). Targets are LFW images from pairs.txt
(identity-disjoint). The reconstruction is judged by

- pixel metrics against the target chip: MSE (in [0,1] units), PSNR (dB, range 1), SSIM;
- COS: cosine between an *independent* recogniser's embeddings of reconstruction and original
  (faceres / mobilefacenet when installed; otherwise dlib, and the result says so), centred on the
  judge's mean embedding over public faces so that unrelated faces score ~0;
- SRRA: the reconstruction replayed to the deployed dlib recogniser, accepted as the victim at
  the saved operating threshold (from pairsDevTrain); two variants: against the template of the
  same image, and against the other image of an LFW same-pair (the realistic one);

- closer-to-own: the fraction of reconstructions closer (deployed recogniser) to their own source
  than to a random other target (0.5 = no identity information);

next to two "no information" baselines: the attacker's mean face, and a random other person.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.attacks.base import (
    Budget,
    OptimizationAttack,
    PairSource,
    ReconstructionAttack,
    ThreatModel,
    attack_cache_path,
    check_trained,
    get_attack,
    profile_budget,
)
from faceveil.bench.lfw import operating_point, subset_pairs
from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute, load_or_compute_parts
from faceveil.data.align import to_tensor
from faceveil.data.datasets import LFW
from faceveil.defenses.base import Defense
from faceveil.keys import research_generator
from faceveil.metrics.identity import closer_to_own, cosine, srra
from faceveil.metrics.image import mse, psnr, ssim
from faceveil.models.base import CropSpec, Recognizer
from faceveil.storage import load_cache, save_torch, torch_load, write_json_atomic

#: best first: faceres fed BGR scores 97.2 % on LFW (cosine), faceres as Human feeds it (RGB) 95.6 %,
#: (mobilefacenet, 61.7 %, is degenerate and never judges; see README, "Recognisers")
INDEPENDENT_JUDGES = ("faceres-bgr", "faceres")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Geometry and judges
# ---------------------------------------------------------------------------------------------


def recrop(x: Tensor, src: CropSpec, dst: CropSpec) -> Tensor:
    """Re-map chips aligned with ``src`` geometry to ``dst`` geometry. Both are dlib 5-point
    template crops: template point u sits at pixel ``q = a u + b`` with ``a = S/(2 pad + 1)``,
    ``b = pad a``, so dst pixel q maps to src pixel ``k q + c`` (``k = a_s/a_d``, ``c = b_s - k b_d``).
    Area outside ``src`` is black."""
    if src == dst:
        return x
    a_s, a_d = src.size / (2 * src.padding + 1), dst.size / (2 * dst.padding + 1)
    b_s, b_d = src.padding * a_s, dst.padding * a_d
    k = a_s / a_d
    c = b_s - k * b_d
    # grid_sample, align_corners=False: n = (2 q + 1) / S - 1
    scale = k * dst.size / src.size
    offset = (k * dst.size - k + 2 * c + 1) / src.size - 1
    theta = torch.tensor([[scale, 0, offset], [0, scale, offset]], dtype=x.dtype).unsqueeze(0).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, [len(x), x.shape[1], dst.size, dst.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cos_judge(exclude: str = "dlib") -> tuple[Recognizer, bool]:
    """The recogniser that judges COS: an independent one when installed, else dlib (flagged)."""
    from faceveil.models import get_recognizer, recognizer_names

    for name in INDEPENDENT_JUDGES:
        if name in recognizer_names() and name != exclude:
            try:
                return get_recognizer(name), True
            except Exception:  # not installed / no npm: fall back, and say so in the result
                continue
    return get_recognizer("dlib"), False


def judge_centre(judge: Recognizer, data=None, n: int = 1000, seed: int = 0) -> Tensor:
    """Mean embedding of the judge over public faces (cached): COS is computed on embeddings minus
    this mean, so unrelated faces score ~0 (as with ArcFace) even for recognisers whose raw
    embeddings share a large common component (faceres: ~0.4 between different people)."""
    from faceveil.models.embed import model_fingerprint
    from faceveil.train.distill import public_chips

    path = cache_dir("embeddings") / f"centre-{judge.name}-{config_hash(model_fingerprint(judge), n, seed, str(data_dir(data)))}.pt"
    crop = CropSpec(150, 0.25)
    return load_or_compute(path, lambda: embed_images(judge, to_tensor(public_chips(data, crop, n, seed, False)), crop).mean(0))


def embed_images(model: Recognizer, x: Tensor, crop: CropSpec, batch_size: int = 64) -> Tensor:
    """Embeddings of images aligned with ``crop`` geometry, re-cropped to the model's geometry."""
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size]
            xb = F.interpolate(xb, size=(crop.size, crop.size), mode="bilinear", align_corners=False, antialias=True) \
                if xb.shape[-1] != crop.size else xb
            out.append(model.embed(recrop(xb, crop, model.crop).clamp(0, 1)))
    return torch.cat(out)


def resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def chip_images(chips: np.ndarray, size: int, chunk: int = 256) -> Tensor:
    """``resize(to_tensor(chips), size)`` made ``chunk`` chips at a time (the same values: both are
    per image): 13,566 public chips as float at 150 px are 3.7 GB, at the 112-px target 2.0 GB."""
    out = torch.empty((len(chips), 3, size, size))
    for s in range(0, len(chips), chunk):
        out[s : s + chunk] = resize(to_tensor(chips[s : s + chunk]), size)
    return out


# ---------------------------------------------------------------------------------------------
# Visualisation
# ---------------------------------------------------------------------------------------------


def visualise_held(t: Tensor, size: int) -> Tensor:
    """Render what the attacker holds as ``[B,3,size,size]``: images as they are (min-max scaled if
    outside [0,1]), feature/frequency maps as the first channel (grey, min-max), vectors as a
    heat-map grid."""
    t = t.detach().float()
    if t.ndim == 2:
        d = t.shape[1]
        w = int(np.ceil(np.sqrt(d)))
        v = F.pad(t, (0, w * w - d)).view(-1, 1, w, w)
    elif t.ndim == 4 and t.shape[1] == 3:
        v = t
    else:
        v = t[:, :1]
    lo = v.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = v.flatten(1).max(1).values.view(-1, 1, 1, 1)
    if v.shape[1] != 3 or lo.min() < 0 or hi.max() > 1:
        v = (v - lo) / (hi - lo).clamp_min(1e-12)
    v = F.interpolate(v, size=(size, size), mode="nearest" if t.ndim == 2 else "bilinear")
    return v.expand(-1, 3, -1, -1).clamp(0, 1)


def image_grid(rows: list[Tensor], path: Path, pad: int = 2) -> Path:
    """Save rows of equally sized images ``[N,3,S,S]`` as one PNG (atomically)."""
    from faceveil.data.io import write_image

    n, s = rows[0].shape[0], rows[0].shape[-1]
    canvas = torch.ones(3, len(rows) * (s + pad) + pad, n * (s + pad) + pad)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (s + pad), pad + c * (s + pad)
            canvas[:, y : y + s, x : x + s] = resize(row[c : c + 1], s)[0]
    arr = (canvas.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    write_image(path, arr)
    return path


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _leak_fn(defense: Defense, threat: ThreatModel):
    def leak(x: Tensor, rng: torch.Generator) -> Tensor:
        with torch.set_grad_enabled(defense.needs_grad_to_protect):
            t = defense.leak(x, threat.leakage, rng)
            if threat.view is not None:
                t = defense.attacker_view(threat.view, t)
        return t.detach().float()

    return leak


#: the attacker's client protects faces in batches of this size, each with its own seeded draws
LEAK_BATCH = 64
#: salt of the draws that make the held LFW evaluation targets
HELD_SALT = 23


def _leak_part(leak, chips: np.ndarray, seed: int, salt: int, i: int) -> Tensor:
    """Batch ``i`` (of :data:`LEAK_BATCH` chips) of what the attacker's client gives for ``chips``."""
    return leak(to_tensor(chips[i * LEAK_BATCH : (i + 1) * LEAK_BATCH]), research_generator(seed, i, salt))


def _leak_set(defense: Defense, leak, chips: np.ndarray, seed: int, salt: int, path: Path, progress: bool = False,
              desc: str = "protecting", save: bool = True) -> Tensor:
    """What the attacker's client gives for ``chips`` (:func:`_leak_part` batches); a slow client's set
    is cached at ``path`` batch by batch (:meth:`Defense.protected_set`)."""
    return defense.protected_set(path, -(-len(chips) // LEAK_BATCH), lambda i: _leak_part(leak, chips, seed, salt, i),
                                 progress, desc, save)


def _held_targets(defense: Defense, threat: ThreatModel, leak, chips: np.ndarray, idx: np.ndarray, seed: int, data,
                  progress: bool) -> Tensor:
    """What the attacker holds for the LFW evaluation targets. Cached on disk for slow clients
    (``protect_ms_hint`` >= 100 ms: AdvNoise, DeepBlur, ...): every attack cell of a setting judges the
    same targets and the protection is seeded, so re-runs reuse it exactly."""
    key = config_hash(defense.config(), threat.leakage, threat.view, [int(i) for i in idx], seed, str(data_dir(data)),
                      "held-v1")
    return _leak_set(defense, leak, chips, seed + 1, HELD_SALT, cache_dir("held") / f"{defense.name}-{key}.pt", progress,
                     "protecting LFW targets")


def _attack_streamed(attack: ReconstructionAttack, leak, chips: np.ndarray, seed: int, keep: np.ndarray,
                     progress: bool) -> tuple[Tensor, Tensor, float]:
    """A fast client's held targets made and attacked batch by batch, with the draws of
    :func:`_held_targets` (same batches, so the same reconstructions as attacking the whole set):
    ``(reconstructions, held rows keep, attack ms/face)``; the rows are copies (a view would keep its
    batch alive). Why: the whole held set can be larger than RAM (64 FaceObfuscator channels of 3,000
    targets are 9.6 GB, twice that while concatenated)."""
    from tqdm import tqdm

    recon, rows, seconds = [], {}, 0.0
    want = {int(k) for k in keep}
    for i in tqdm(range(-(-len(chips) // LEAK_BATCH)), desc="attacking LFW targets", disable=not progress, leave=False):
        held = _leak_part(leak, chips, seed + 1, HELD_SALT, i)
        t0 = time.perf_counter()
        recon.append(attack.attack(held, batch_size=LEAK_BATCH))
        seconds += time.perf_counter() - t0
        rows |= {i * LEAK_BATCH + j: held[j].clone() for j in range(len(held)) if i * LEAK_BATCH + j in want}
    return torch.cat(recon), torch.stack([rows[int(k)] for k in keep]), 1000 * seconds / len(chips)


def _inversion_path(attack: OptimizationAttack, defense: Defense, threat: ThreatModel, budget: Budget, idx: np.ndarray,
                    seed: int, data) -> Path:
    """Where :func:`_inverted` caches the white-box reconstructions of the targets ``idx``."""
    key = config_hash(attack.config(), defense.config(), asdict(threat), asdict(budget), [int(i) for i in idx], seed,
                      str(data_dir(data)), "whitebox-v1")
    return cache_dir("whitebox") / f"{defense.name}-{key}.pt"


def _inverted(attack: OptimizationAttack, defense: Defense, threat: ThreatModel, budget: Budget, held: Tensor,
              idx: np.ndarray, seed: int, data, force: bool) -> tuple[Tensor, float]:
    """White-box reconstructions of the evaluation targets and their ms/face, cached on disk like a
    trained attacker: the inversion is a seeded optimisation (150 steps through the client, ~4.5 s/face
    on one core for a dlib map) determined by the key, so a re-run reuses it; ``force`` recomputes.
    Each batch of 64 is cached as it finishes, so a stopped run resumes at the next batch."""
    path = _inversion_path(attack, defense, threat, budget, idx, seed, data)

    target = defense.whitebox_target(held)
    bs = 64  # the attack's batch: samples are inverted independently, so a batch is a resumable part

    def one(i: int) -> dict:
        t0 = time.perf_counter()
        return {"recon": attack.attack(target[i * bs : (i + 1) * bs], batch_size=bs), "seconds": time.perf_counter() - t0}

    def combine(parts: list[dict]) -> dict:
        return {"recon": torch.cat([c["recon"] for c in parts]),
                "ms_per_face": 1000 * sum(float(c["seconds"]) for c in parts) / len(held)}

    c = load_or_compute_parts(path, -(-len(target) // bs), one, combine, force)
    return c["recon"], float(c["ms_per_face"])


_MEMO: dict = {}


def _target_embeddings(key: tuple, model: Recognizer, fn) -> Tensor:
    """``fn()``: embeddings by ``model`` of an evaluation-target set named by ``key``, memoised per
    process (bounded: a bench run has a few keys) and cached on disk, keyed by the model's weights
    (``faceveil bench --jobs`` judges every defense in its own process)."""
    from faceveil.models.embed import model_fingerprint

    k = config_hash(key, model.name, "targets-v1")
    if k not in _MEMO:
        if len(_MEMO) > 64:
            _MEMO.clear()
        _MEMO[k] = load_or_compute(cache_dir("embeddings") / f"targets-{model.name}-{config_hash(k, model_fingerprint(model))}.pt",
                                   fn)
    return _MEMO[k]


def eval_pairs(lfw: LFW, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into LFW) of both images of the first ``n`` same-pairs, spread over the folds."""
    p = lfw.pairs("pairs")
    if n is not None:
        p = subset_pairs(p, max(1, int(np.ceil(n / 10))))
    a, b = p.a[p.same], p.b[p.same]
    if n is not None:
        a, b = a[:n], b[:n]
    return a, b


def grid_positions(lfw: LFW, ia: np.ndarray, k: int = 8) -> np.ndarray:
    """Positions in ``ia`` of the faces shown in grids: the first same-pair of folds 1..k, so that every
    cell shows the same faces whatever its number of evaluation pairs (those of a capped set too);
    the first ``k`` if a set lacks them."""
    canon = eval_pairs(lfw, 10)[0][:k]
    pos = {int(v): i for i, v in enumerate(ia)}
    if all(int(c) in pos for c in canon):
        return np.array([pos[int(c)] for c in canon])
    return np.arange(min(k, len(ia)))


def train_attacker(defense: Defense, attack_name: str, threat: ThreatModel, budget: Budget, seed: int = 0,
                   data=None, attack_kwargs: dict | None = None, force: bool = False, progress: bool = True):
    """Build the attacker's training pairs with the black-box client of ``defense`` and fit (or load) the attack."""
    from faceveil.train.distill import public_chips

    kwargs = dict(attack_kwargs or {})
    if attack_name == "transrec" and "client" not in kwargs and hasattr(defense, "client_network"):
        kwargs["client"] = defense.client_network()
    if attack_name == "whitebox":
        return whitebox_attack(defense, threat, budget, seed, data, kwargs), None
    attack = get_attack(attack_name, target_size=budget.target_size, seed=seed, **kwargs)
    assert isinstance(attack, ReconstructionAttack)
    leak = _leak_fn(defense, threat)
    path = attack_cache_path(attack, defense.config(), asdict(threat), asdict(budget), str(data_dir(data)), "harness-v2")
    if not force and attack.load_cached(path):
        if attack.healthy():
            check_trained(attack_name, attack.log, budget)
            return attack, path
        log.warning("%s: cached attacker %s has non-finite statistics (float32 overflow); retraining", attack_name, path.name)
    chips = public_chips(data, defense.recognizer.crop, budget.train_images, seed, progress)
    targets = chip_images(chips, budget.target_size)
    source = attacker_source(defense, threat, leak, chips, targets, seed, budget.train_images, data, progress)
    attack.fit_and_save(source, budget, path, progress, force)  # resumable: outlives a stopped process
    check_trained(attack_name, attack.log, budget)
    return attack, path


#: a fast deterministic client's attacker set larger than this is made batch by batch during
#: training instead of held in memory (64 FaceObfuscator channels of 13,566 public faces: 43 GB)
ATTACKER_SET_MAX_BYTES = 4 * 2**30


def attacker_source(defense: Defense, threat: ThreatModel, leak, chips: np.ndarray, targets: Tensor, seed: int,
                    train_images: int | None = None, data=None, progress: bool = False,
                    max_bytes: int = ATTACKER_SET_MAX_BYTES) -> PairSource:
    """The attacker's (protected, target) pairs. A stochastic client redraws every epoch; a fast
    deterministic client whose set would exceed ``max_bytes`` is run on each batch as it is drawn
    (the same values as the precomputed set: its output does not depend on the draws); otherwise the
    set is made once (:func:`_leak_set`, cached on disk for slow clients; ``train_images`` keys it)."""
    on_the_fly = defense.stochastic and not defense.needs_grad_to_protect
    if not (defense.stochastic or defense.needs_grad_to_protect or defense.slow):
        one = leak(to_tensor(chips[:1]), research_generator(seed, 0, 11))
        on_the_fly = one.numel() * 4 * len(chips) > max_bytes
    if on_the_fly:
        u8 = torch.from_numpy(chips)

        def redraw(c: Tensor, g: torch.Generator) -> Tensor:
            return leak(c.permute(0, 3, 1, 2).float().div(255), g)

        return PairSource(targets, inputs=u8, redraw=redraw, seed=seed)
    # keyed by what makes the set, not by the attack: dn and cgan of a setting share it
    key = config_hash(defense.config(), str(defense.recognizer.crop), asdict(threat), train_images, seed,
                      str(data_dir(data)), "attacker-set-v1")
    protected = _leak_set(defense, leak, chips, seed, 11, cache_dir("protected") / f"{defense.name}-attacker-{key}.pt",
                          progress, "attacker protects public faces", save=False)
    return PairSource(targets, protected=protected, seed=seed)


def whitebox_attack(defense: Defense, threat: ThreatModel, budget: Budget, seed: int, data, kwargs: dict):
    """White-box inversion (PMT eqs. 2-4) of the defense's differentiable forward map, from the
    attacker's mean face."""
    from faceveil.train.distill import public_chips

    crop = defense.recognizer.crop

    def forward(x: Tensor) -> Tensor:
        t = defense.whitebox_forward(x, threat.leakage)
        if threat.view is not None:
            t = defense.attacker_view(threat.view, t)
        return defense.whitebox_target(t)

    pub = public_chips(data, crop, min(budget.train_images or 2000, 2000), seed, False)
    init = chip_images(pub, budget.target_size).mean(0)
    kw = {"steps": budget.whitebox_steps, **kwargs}
    return get_attack("whitebox", forward=lambda x: forward(x), target_size=budget.target_size, input_size=crop.size,
                      init=init, **kw)


def run_attack(defense: Defense, attack_name: str, threat: ThreatModel | None = None, profile: str = "quick",
               seed: int = 0, data=None, attack_kwargs: dict | None = None, force: bool = False,
               out_dir: Path | None = None, progress: bool = True, budget: Budget | None = None,
               server: str = "frozen", return_images: bool = False, eval_pairs_n: int | None = None) -> dict:
    """Train (or load) an attack on the defense and evaluate it on LFW pair images
    (``eval_pairs_n`` overrides the budget's number of evaluated same-pairs without changing the
    cached attacker's key)."""
    t_start = time.perf_counter()
    threat = threat or ThreatModel()
    budget = budget or profile_budget(profile)
    attack, cache_path = train_attacker(defense, attack_name, threat, budget, seed, data, attack_kwargs, force, progress)
    return judge_attack(attack, cache_path, defense, threat, budget, profile=profile, seed=seed, data=data, force=force,
                        out_dir=out_dir, progress=progress, server=server, return_images=return_images,
                        eval_pairs_n=eval_pairs_n, t_start=t_start)


def judge_attack(attack, attacker_path: Path | None, defense: Defense, threat: ThreatModel, budget: Budget,
                 profile: str = "quick", seed: int = 0, data=None, force: bool = False, out_dir: Path | None = None,
                 progress: bool = True, server: str = "frozen", return_images: bool = False,
                 eval_pairs_n: int | None = None, stem: str | None = None, t_start: float | None = None) -> dict:
    """Evaluate a trained ``attack`` (cached at ``attacker_path``) on what ``threat`` leaks of
    ``defense`` for LFW pair images (see :func:`_judged`); the attacker may have been trained on another
    system (the paper-style non-adaptive attacker of AdvFace). Writes ``<stem>.json/.png`` in ``out_dir``.

    The judged result is cached like the attacker it judges: a resumed bench re-reads its finished
    cells instead of re-embedding thousands of reconstructions with two recognisers (3-5 min a cell
    on one core). Keyed by the attacker file's identity (a retrained attacker is a new key) and
    everything that picks the evaluation; EVAL_VERSION is bumped when the metrics change."""
    t_start = time.perf_counter() if t_start is None else t_start
    lfw = LFW(data)
    ia, ib = eval_pairs(lfw, eval_pairs_n or budget.eval_pairs)
    # A white-box cell's "attacker" is its cached inversion, (re)written while judging: the judged result
    # is saved under the key of the file as it is afterwards.
    source = _inversion_path(attack, defense, threat, budget, ia, seed, data) if isinstance(attack, OptimizationAttack) \
        else attacker_path
    name = attack.name

    def eval_path() -> tuple[str, Path]:
        k = config_hash(_file_stamp(source), attack.config(), defense.config(), asdict(threat), asdict(budget),
                        [int(i) for i in ia], [int(i) for i in ib], seed, str(data_dir(data)), server, EVAL_VERSION)
        return k, cache_dir("evals") / f"{defense.name}-{name}-{k}.pt"

    ekey, path = eval_path()
    if force or (cached := load_cache(path, torch_load, "judged attack result")) is None:
        cached = _judged(attack, defense, threat, budget, lfw, ia, ib, seed, data, force, attacker_path, profile,
                         progress)
        ekey, path = eval_path()
        save_torch(path, cached)
    result, rows = json.loads(cached["result"]), list(cached["rows"])
    result["wall_seconds"] = time.perf_counter() - t_start
    result["eval_cache"] = ekey
    if out_dir is not None:
        out_dir = Path(out_dir)
        stem = stem or f"{defense.name}-{config_hash(defense.config(), length=6)}-{name}-{threat.leakage}" + \
            (f"-{threat.view}" if threat.view else "")
        result["grid"] = str(image_grid(rows, out_dir / f"{stem}.png"))
        write_json_atomic(out_dir / f"{stem}.json", result, indent=2)
    if return_images:
        result["images"] = {"original": rows[0], "held": rows[1], "reconstruction": rows[2]}
    return result


#: version of the judged-result cache of :func:`run_attack` (bump when a metric or the judge changes)
EVAL_VERSION = "eval-v1"


def _file_stamp(path: Path | None) -> tuple | None:
    """Name, size and modification time of a cached attacker (None for an attack without one)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():  # e.g. a white-box inversion not yet (or no longer) saved
        return (path.name, None, None)
    st = path.stat()
    return (path.name, st.st_size, st.st_mtime_ns)


def _judged(attack, defense: Defense, threat: ThreatModel, budget: Budget, lfw: LFW,
            ia: np.ndarray, ib: np.ndarray, seed: int, data, force: bool, cache_path: Path | None, profile: str, progress: bool) -> dict:
    """Reconstruct the held data of LFW pair images ``ia`` with a trained ``attack`` and judge it:
    image metrics against the targets, COS by an independent recogniser, SRRA against the same image
    and the pair partner ``ib`` at the deployed model's LFW operating point, with the mean-face and
    random-person baselines. Returns ``{"result": JSON text, "rows": [targets, held, recon] of the grid}``."""
    t_start = time.perf_counter()
    ds = lfw.dataset()
    crop = defense.recognizer.crop
    chips_a, _ = ds.subset(ia).chips(crop, progress=False)
    chips_b, _ = ds.subset(ib).chips(crop, progress=False)
    x_a = to_tensor(chips_a)
    targets = resize(x_a, budget.target_size)
    leak = _leak_fn(defense, threat)
    grid = grid_positions(lfw, ia)
    if isinstance(attack, ReconstructionAttack) and not defense.slow:  # a slow client's set is cached, read whole
        recon, held_grid, attack_ms = _attack_streamed(attack, leak, chips_a, seed, grid, progress)
    else:
        held = _held_targets(defense, threat, leak, chips_a, ia, seed, data, progress)
        held_grid = held[grid]
        if isinstance(attack, OptimizationAttack):
            recon, attack_ms = _inverted(attack, defense, threat, budget, held, ia, seed, data, force)
        else:
            t0 = time.perf_counter()
            recon = attack.attack(held, batch_size=LEAK_BATCH)
            attack_ms = 1000 * (time.perf_counter() - t0) / len(held)

    # baselines: the attacker's mean face, and a random other person
    from faceveil.train.distill import public_chips

    pub = public_chips(data, crop, min(budget.train_images or 2000, 2000), seed, False)
    mean_face = chip_images(pub, budget.target_size).mean(0)
    names = np.array([ds.files[i].split("/")[0] for i in ia])
    g = np.random.default_rng(seed)
    perm = g.permutation(len(ia))
    for _ in range(10):  # re-draw positions that picked the same person
        bad = names[perm] == names
        if not bad.any():
            break
        perm[bad] = g.permutation(len(ia))[: bad.sum()]
    candidates = {"reconstruction": recon, "mean face": mean_face.expand_as(targets), "random person": targets[perm]}

    deployed = defense.recognizer
    op = operating_point(deployed, lfw, progress=False)
    judge, independent = cos_judge()
    centre = judge_centre(judge, data)
    # the targets' embeddings are the same for every attack on this evaluation set (a bench run
    # judges dozens of cells; the 224-px judge dominates their cost)
    key = (str(data_dir(data)), crop, budget.target_size, [int(i) for i in ia], [int(i) for i in ib])
    e_a = _target_embeddings(("a", key), deployed, lambda: embed_images(deployed, x_a, crop))
    e_b = _target_embeddings(("b", key), deployed, lambda: embed_images(deployed, to_tensor(chips_b), crop))
    j_a = _target_embeddings(("a", key), judge, lambda: embed_images(judge, x_a, crop)) - centre
    # baselines: the mean face is one image, the random person a permutation of the resized targets
    up_t = resize(targets, crop.size)
    up_m = resize(mean_face[None], crop.size)
    emb = {
        "reconstruction": (lambda m: embed_images(m, resize(recon, crop.size), crop)),
        "mean face": (lambda m: embed_images(m, up_m, crop).expand(len(ia), -1)),
        "random person": (lambda m: _target_embeddings(("t", key), m, lambda: embed_images(m, up_t, crop))[perm]),
    }
    metrics = {}
    for name, imgs in candidates.items():
        e = emb[name](deployed)
        metrics[name] = {
            "MSE": float(mse(imgs, targets).mean()),
            "PSNR": float(psnr(imgs, targets, 1.0).mean()),
            "SSIM": float(ssim(imgs, targets, 1.0).mean()),
            "COS": float(cosine(emb[name](judge) - centre, j_a).mean()),
            "SRRA_same_image": float(srra(e, e_a, op).float().mean()),
            "SRRA_pair": float(srra(e, e_b, op).float().mean()),
            "closer_to_own": float(closer_to_own(e, e_a, deployed.metric, seed).float().mean()),
        }
    result = {
        "defense": defense.describe(),
        "attack": attack.config(),
        "threat": asdict(threat),
        "profile": profile,
        "budget": asdict(budget),
        "seed": seed,
        "eval": {"dataset": "LFW pairs.txt same-pairs", "n": len(ia)},
        "judge": {"cos": judge.name, "independent": independent, "srra": deployed.name, "operating_point": asdict(op)},
        "metrics": metrics,
        "train_log": ({k: v for k, v in asdict(attack.log).items() if k != "losses"}
                      | {"final_loss": float(np.mean(attack.log.losses[-20:])) if attack.log.losses else None})
        if isinstance(attack, ReconstructionAttack) else None,
        "attack_ms_per_face": attack_ms,
        "judge_seconds": time.perf_counter() - t_start,
        "cache": str(cache_path) if cache_path else None,
        "versions": {"torch": torch.__version__},
    }
    # the result as JSON text: the cache loads with weights_only=True, which refuses e.g. TorchVersion
    return {"result": json.dumps(result), "rows": [targets[grid], visualise_held(held_grid, budget.target_size), recon[grid]]}


def format_result(r: dict) -> str:
    """A small table of the metrics of one attack run."""
    t = r["threat"]
    lines = [
        f"defense {r['defense']['name']} | attack {r['attack']['name']} | leakage {t['leakage']}"
        + (f" | adaptive view {t['view']}" if t.get("view") else "") + f" | profile {r['profile']} | n={r['eval']['n']}",
        f"COS judged by {r['judge']['cos']}" + ("" if r["judge"]["independent"] else " (NOT independent: install faceres)"),
        f"{'':<16}{'MSE↑':>8}{'PSNR↓':>8}{'SSIM↓':>8}{'COS↓':>8}{'SRRA same':>11}{'SRRA pair':>11}",
    ]
    for name, m in r["metrics"].items():
        lines.append(f"{name:<16}{m['MSE']:>8.4f}{m['PSNR']:>8.2f}{m['SSIM']:>8.3f}{m['COS']:>8.3f}"
                     f"{100 * m['SRRA_same_image']:>10.1f}%{100 * m['SRRA_pair']:>10.1f}%")
    return "\n".join(lines)

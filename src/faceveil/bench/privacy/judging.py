"""Judging reconstructions: the independent COS judge and its centre, embeddings of evaluation targets, the LFW
evaluation pairs, and the metrics of one attack cell (:func:`judged`)."""

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
    ReconstructionAttack,
    ThreatModel,
)
from faceveil.bench.lfw import FMR_VERSION, SAR_FMRS, fmr_label, fmr_thresholds, operating_point, subset_pairs
from faceveil.bench.privacy.figures import visualise_held
from faceveil.bench.privacy.leaks import LEAK_BATCH, attack_streamed, held_targets, inverted, leak_fn
from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute
from faceveil.context import RunContext
from faceveil.data.align import to_tensor
from faceveil.data.chips import chip_images, recrop, resize
from faceveil.data.datasets import LFW, public_chips
from faceveil.defenses.base import Defense
from faceveil.devices import current_device
from faceveil.metrics.identity import closer_to_own, cosine, sar, srra
from faceveil.metrics.image import mse, psnr, ssim
from faceveil.models.base import CropSpec, Recognizer

log = logging.getLogger(__name__)


#: best first: faceres fed BGR scores 97.2 % on LFW (cosine), faceres as Human feeds it (RGB) 95.6 %,
#: (mobilefacenet, 61.7 %, is degenerate and never judges; see README, "Recognisers")
INDEPENDENT_JUDGES = ("faceres-bgr", "faceres")


def cos_judge(exclude: str = "dlib") -> tuple[Recognizer, bool]:
    """The recogniser that judges COS: an independent one when installed, else dlib (flagged)."""
    from faceveil.models import get_recognizer, recognizer_names

    for name in INDEPENDENT_JUDGES:
        if name in recognizer_names() and name != exclude:
            try:
                return get_recognizer(name, current_device()), True
            except Exception:  # not installed / no npm: fall back, and say so in the result
                continue
    from faceveil.models import deployed_recognizer

    return deployed_recognizer(current_device()), False


def judge_centre(judge: Recognizer, data=None, n: int = 1000, seed: int = 0) -> Tensor:
    """Mean embedding of the judge over public faces (cached): COS is computed on embeddings minus
    this mean, so unrelated faces score ~0 (as with ArcFace) even for recognisers whose raw
    embeddings share a large common component (faceres: ~0.4 between different people)."""
    from faceveil.models.embed import model_fingerprint

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


_MEMO: dict = {}


def target_embeddings(key: tuple, model: Recognizer, fn) -> Tensor:
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


#: version of the judged-result cache of :func:`run_attack` (bump when a metric or the judge changes)
EVAL_VERSION = "eval-v2"  # v2: SAR type I/II at FMR 1e-3/1e-4 (deployed) and 1e-3 (judge)

#: the false match rate of the independent judge's own SAR threshold
JUDGE_SAR_FMR = 1e-3
#: LFW images the SAR thresholds are fitted on, per attack profile (a seeded subset; other profiles: all
#: 13,233). 1,000 images still give > 2 x 10^5 impostor pairs (1e-4 measurable) and keep the ci profile's
#: first judged attack from embedding all of LFW with the 224-px judge (~14 min of one core); fast's 600 give
#: ~1.8 x 10^5 (its whole run is 15 minutes).
SAR_IMAGES = {"ci": 1000, "fast": 600, "quick": 4000}


def sar_config(profile: str) -> tuple:
    """What picks the SAR thresholds of a judged result (part of its cache key): the threshold fit's version
    and the LFW images it uses at ``profile``."""
    return FMR_VERSION, SAR_IMAGES.get(profile), JUDGE_SAR_FMR


def sar_metrics(e: Tensor, e_a: Tensor, e_b: Tensor, fit: dict, fmrs: tuple[float, ...], metric: str,
                prefix: str = "") -> dict:
    """SAR type I (vs the source image's template ``e_a``) and type II (vs the pair partner's ``e_b``) at
    each FMR of ``fmrs``, with the thresholds of ``fit`` (:func:`faceveil.bench.lfw.fmr_thresholds`):
    keys ``{prefix}SAR_I@1e-3``, ``{prefix}SAR_II@1e-3``, ..."""
    out = {}
    for f in fmrs:
        lab = fmr_label(f)
        t = fit["thresholds"][lab]
        out[f"{prefix}SAR_I@{lab}"] = sar(e, e_a, t, metric)
        out[f"{prefix}SAR_II@{lab}"] = sar(e, e_b, t, metric)
    return out


def score_reconstructions(recon: Tensor, x_a: Tensor, x_b: Tensor, people, deployed: Recognizer, crop: CropSpec,
                          budget: Budget, lfw: LFW, data, profile: str, seed: int, key: tuple,
                          progress: bool = False) -> tuple[dict, dict]:
    """The harness's metrics of reconstructions ``recon`` (at ``budget.target_size``) of target chips ``x_a`` whose
    pair partners (another image of the same person, ``people[i]``) are ``x_b``, beside the attacker's mean face and
    a random other person: image metrics, the judge's centred COS, SRRA at the deployed model's operating point,
    closer-to-own, SAR type I / II at the deployed model's and the judge's FMR thresholds (fitted on LFW impostor
    pairs in ``crop``'s geometry). ``key`` names the target set (its embeddings are memoised and cached). Returns
    ``(metrics per candidate, {"operating_point", "judge", "independent", "sar"})``."""
    targets = resize(x_a, budget.target_size)
    # baselines: the attacker's mean face, and a random other person
    pub = public_chips(data, crop, min(budget.train_images or 2000, 2000), seed, False)
    mean_face = chip_images(pub, budget.target_size).mean(0)
    names = np.asarray(people)
    g = np.random.default_rng(seed)
    perm = g.permutation(len(names))
    for _ in range(10):  # re-draw positions that picked the same person
        bad = names[perm] == names
        if not bad.any():
            break
        perm[bad] = g.permutation(len(names))[: bad.sum()]
    candidates = {"reconstruction": recon, "mean face": mean_face.expand_as(targets), "random person": targets[perm]}

    op = operating_point(deployed, lfw, progress=False)
    judge, independent = cos_judge()
    centre = judge_centre(judge, data)
    # SAR thresholds: the deployed recogniser's at FMR 1e-3 and 1e-4, the judge's at 1e-3, both fitted on LFW
    # impostor pairs of images in the geometry this harness gives them (the judge: dlib chips re-cropped)
    n_sar = SAR_IMAGES.get(profile)
    sar_dep = fmr_thresholds(deployed, lfw, SAR_FMRS, seed=0, align=crop, progress=progress, images=n_sar)
    sar_judge = fmr_thresholds(judge, lfw, (JUDGE_SAR_FMR,), seed=0, align=crop, progress=progress, images=n_sar)
    # the targets' embeddings are the same for every attack on this evaluation set (a bench run
    # judges dozens of cells; the 224-px judge dominates their cost)
    e_a = target_embeddings(("a", key), deployed, lambda: embed_images(deployed, x_a, crop))
    e_b = target_embeddings(("b", key), deployed, lambda: embed_images(deployed, x_b, crop))
    j_a = target_embeddings(("a", key), judge, lambda: embed_images(judge, x_a, crop))
    j_b = target_embeddings(("b", key), judge, lambda: embed_images(judge, x_b, crop))
    # baselines: the mean face is one image, the random person a permutation of the resized targets
    up_t = resize(targets, crop.size)
    up_m = resize(mean_face[None], crop.size)
    emb = {
        "reconstruction": (lambda m: embed_images(m, resize(recon, crop.size), crop)),
        "mean face": (lambda m: embed_images(m, up_m, crop).expand(len(x_a), -1)),
        "random person": (lambda m: target_embeddings(("t", key), m, lambda: embed_images(m, up_t, crop))[perm]),
    }
    metrics = {}
    for name, imgs in candidates.items():
        e, ej = emb[name](deployed), emb[name](judge)
        metrics[name] = {
            "MSE": float(mse(imgs, targets).mean()),
            "PSNR": float(psnr(imgs, targets, 1.0).mean()),
            "SSIM": float(ssim(imgs, targets, 1.0).mean()),
            "COS": float(cosine(ej - centre, j_a - centre).mean()),
            "SRRA_same_image": float(srra(e, e_a, op).float().mean()),
            "SRRA_pair": float(srra(e, e_b, op).float().mean()),
            "closer_to_own": float(closer_to_own(e, e_a, deployed.metric, seed).float().mean()),
            **sar_metrics(e, e_a, e_b, sar_dep, SAR_FMRS, deployed.metric),
            **sar_metrics(ej, j_a, j_b, sar_judge, (JUDGE_SAR_FMR,), judge.metric, "judge_"),
        }
    return metrics, {"operating_point": op, "judge": judge.name, "independent": independent,
                     "sar": {"deployed": sar_dep, "judge": sar_judge}}


def judged(attack, defense: Defense, threat: ThreatModel, budget: Budget, lfw: LFW, ia: np.ndarray, ib: np.ndarray,
           ctx: RunContext, cache_path: Path | None) -> dict:
    """Reconstruct the held data of LFW pair images ``ia`` with a trained ``attack`` and judge it:
    image metrics against the targets, COS by an independent recogniser, SRRA against the same image
    and the pair partner ``ib`` at the deployed model's LFW operating point, SAR type I (same image) and
    type II (pair partner) at the deployed model's FMR 1e-3 and 1e-4 thresholds and at the judge's FMR 1e-3
    threshold, with the mean-face and random-person baselines. Returns ``{"result": JSON text, "rows": [targets,
    held, recon] of the grid}``."""
    t_start = time.perf_counter()
    seed, data, force, progress, profile = ctx.seed, ctx.data, ctx.force, ctx.progress, ctx.profile
    ds = lfw.dataset()
    crop = defense.recognizer.crop
    chips_a, _ = ds.subset(ia).chips(crop, progress=False)
    chips_b, _ = ds.subset(ib).chips(crop, progress=False)
    x_a = to_tensor(chips_a)
    targets = resize(x_a, budget.target_size)
    leak = leak_fn(defense, threat)
    grid = grid_positions(lfw, ia)
    per_face: dict = {}
    if isinstance(attack, ReconstructionAttack) and not defense.slow and not attack.per_target:
        # a slow client's set is cached, read whole; a per-target attack's reconstructions are cached
        recon, held_grid, attack_ms = attack_streamed(attack, leak, chips_a, seed, grid, progress)
    else:
        held = held_targets(defense, threat, leak, chips_a, ia, seed, data, progress)
        held_grid = held[grid]
        if attack.per_target:
            recon, attack_ms, per_face = inverted(attack, defense, threat, budget, held, ia, seed, data, force,
                                                  cache_path if isinstance(attack, ReconstructionAttack) else None)
        else:
            t0 = time.perf_counter()
            recon = attack.attack(held, batch_size=LEAK_BATCH)
            attack_ms = 1000 * (time.perf_counter() - t0) / len(held)

    key = (str(data_dir(data)), crop, budget.target_size, [int(i) for i in ia], [int(i) for i in ib])
    names = [ds.files[i].split("/")[0] for i in ia]
    metrics, how = score_reconstructions(recon, x_a, to_tensor(chips_b), names, defense.recognizer, crop, budget, lfw,
                                         data, profile, seed, key, progress)
    deployed, op = defense.recognizer, how["operating_point"]
    result = {
        "defense": defense.describe(),
        "attack": attack.config(),
        "threat": asdict(threat),
        "profile": profile,
        "budget": asdict(budget),
        "seed": seed,
        "eval": {"dataset": "LFW pairs.txt same-pairs", "n": len(ia)},
        "judge": {"cos": how["judge"], "independent": how["independent"], "srra": deployed.name,
                  "operating_point": asdict(op), "sar": how["sar"]},
        "metrics": metrics,
        "train_log": ({k: v for k, v in asdict(attack.log).items() if k != "losses"}
                      | {"final_loss": float(np.mean(attack.log.losses[-20:])) if attack.log.losses else None})
        if isinstance(attack, ReconstructionAttack) else None,
        "attack_ms_per_face": attack_ms,
        "attack_per_face": per_face,  # e.g. {"queries": n} of a query attack
        "judge_seconds": time.perf_counter() - t_start,
        "cache": str(cache_path) if cache_path else None,
        "versions": {"torch": torch.__version__},
    }
    # the result as JSON text: the cache loads with weights_only=True, which refuses e.g. TorchVersion
    return {"result": json.dumps(result), "rows": [targets[grid], visualise_held(held_grid, budget.target_size), recon[grid]]}

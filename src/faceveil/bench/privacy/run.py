"""Orchestration of one attack cell: train (or load) the attacker, judge it, write its grid and JSON."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faceveil.attacks.base import (
    Budget,
    OptimizationAttack,
    ReconstructionAttack,
    ThreatModel,
    attack_cache_path,
    attack_class,
    check_trained,
    get_attack,
    profile_budget,
)
from faceveil.attacks.ganinv import QueryOracle
from faceveil.bench.privacy.figures import image_grid
from faceveil.bench.privacy.judging import EVAL_VERSION, eval_pairs, judged, sar_config
from faceveil.bench.privacy.leaks import attacker_source, file_stamp, inversion_path, leak_fn
from faceveil.config import cache_dir, config_hash, data_dir
from faceveil.context import RunContext
from faceveil.data.chips import chip_images
from faceveil.data.datasets import LFW, public_chips
from faceveil.defenses.base import Defense
from faceveil.devices import device_record
from faceveil.keys import research_generator
from faceveil.models.base import pairwise_distance
from faceveil.storage import load_cache, save_torch, torch_load, write_json_atomic
from faceveil.system.core import ProtectedSystem

log = logging.getLogger(__name__)


def train_attacker(defense: Defense, attack_name: str, threat: ThreatModel, budget: Budget, ctx: RunContext | None = None,
                   attack_kwargs: dict | None = None):
    """Build the attacker's training pairs with the black-box client of ``defense`` and fit (or load) the
    attack; what it is given follows what it declares it needs (:attr:`faceveil.attacks.base.Attack.needs`)."""
    ctx = ctx or RunContext()
    seed, data = ctx.seed, ctx.data
    kwargs = dict(attack_kwargs or {})
    needs = attack_class(attack_name).needs
    if "client_network" in needs and "client" not in kwargs and hasattr(defense, "client_network"):
        kwargs["client"] = defense.client_network()
    if "queries" in needs:
        return query_attack(defense, threat, budget, ctx, kwargs, attack_name), None
    if "forward_map" in needs and "pairs" not in needs:
        return whitebox_attack(defense, threat, budget, ctx, kwargs, attack_name), None
    if "defense" in needs:  # a defense-specific attack reads the defense's public constants: nothing to train
        if threat.view is not None:
            raise ValueError(f"{attack_name} attacks what {defense.name} transmits; it takes no attacker view "
                             f"(got {threat.view!r})")
        return get_attack(attack_name, defense=kwargs.pop("defense", defense), target_size=budget.target_size,
                          seed=seed, **kwargs), None
    if "forward_map" in needs:  # learned, then refined per target through the forward map (ganinv)
        kwargs = {"forward": whitebox_map(defense, threat), "target_map": defense.whitebox_target,
                  "input_size": defense.recognizer.crop.size, **kwargs}
    attack = get_attack(attack_name, target_size=budget.target_size, seed=seed, **kwargs)
    assert isinstance(attack, ReconstructionAttack)
    leak = leak_fn(defense, threat)
    attack.use_client(leak, defense.recognizer.crop)
    path = attack_cache_path(attack, defense.config(), asdict(threat), asdict(budget), str(data_dir(data)), "harness-v2")
    if not ctx.force and attack.load_cached(path):
        if attack.healthy():
            check_trained(attack_name, attack.log, budget)
            return attack, path
        log.warning("%s: cached attacker %s has non-finite statistics (float32 overflow); retraining", attack_name, path.name)
    n_public = budget.train_images
    if "synthetic" in needs and defense.protect_ms_hint > 0 and n_public:
        n_public = attack.public_share(n_public)  # an expensive client: GAN faces share its protection budget
    chips = public_chips(data, defense.recognizer.crop, n_public, seed, ctx.progress)
    extra = attack.synthetic_chips(defense.recognizer.crop, len(chips), seed) if "synthetic" in needs else None
    if extra is not None:  # GAN faces, protected by the attacker's client like his public faces
        extra = extra[0], {**extra[1], "public": len(chips)}
        chips = np.concatenate([chips, extra[0]])
    targets = chip_images(chips, budget.target_size)
    source = attacker_source(defense, threat, leak, chips, targets, seed, budget.train_images, data, ctx.progress,
                             synthetic=None if extra is None else extra[1])
    attack.fit_and_save(source, budget, path, ctx.progress, ctx.force)  # resumable: outlives a stopped process
    check_trained(attack_name, attack.log, budget)
    return attack, path


def whitebox_map(defense: Defense, threat: ThreatModel):
    """The differentiable map a white-box attacker matches: chips (the recogniser's crop geometry) ->
    :meth:`Defense.whitebox_target` of what ``threat`` leaks (:meth:`Defense.whitebox_forward`)."""

    def forward(x: Tensor) -> Tensor:
        t = defense.whitebox_forward(x, threat.leakage)
        if threat.view is not None:
            t = defense.attacker_view(threat.view, t)
        return defense.whitebox_target(t)

    return forward


def whitebox_attack(defense: Defense, threat: ThreatModel, budget: Budget, ctx: RunContext, kwargs: dict,
                    name: str = "whitebox"):
    """White-box inversion (PMT eqs. 2-4) of the defense's differentiable forward map, from the
    attacker's mean face."""
    crop = defense.recognizer.crop
    forward = whitebox_map(defense, threat)
    pub = public_chips(ctx.data, crop, min(budget.train_images or 2000, 2000), ctx.seed, False)
    init = chip_images(pub, budget.target_size).mean(0)
    kw = {"steps": budget.whitebox_steps, **kwargs}
    return get_attack(name, forward=lambda x: forward(x), target_size=budget.target_size, input_size=crop.size,
                      init=init, **kw)


def query_oracle(defense: Defense, threat: ThreatModel, seed: int = 0) -> QueryOracle:
    """The deployed (frozen) system's match API for a query-only attacker: he submits a probe face through the
    client (fresh seeded draws per call) and reads the server's distance between its embedding and that of the
    leaked record (a stored template for database leakage, a transmitted probe for channel leakage)."""
    system = ProtectedSystem.frozen(defense)
    stored = threat.leakage == "database"
    crop = defense.recognizer.crop
    calls = [0]

    def score(x: Tensor, records: Tensor) -> Tensor:
        calls[0] += 1
        with torch.set_grad_enabled(defense.needs_grad_to_protect):
            probe = defense.protect(x, research_generator(seed, calls[0], 37)).detach()
        e = system.embed_protected(probe.float(), stored=False)
        r = system.embed_protected(records, stored=stored)
        return pairwise_distance(e, r, system.metric)

    with torch.set_grad_enabled(defense.needs_grad_to_protect):
        one = defense.leak(torch.full((1, 3, crop.size, crop.size), 0.5), threat.leakage, research_generator(seed, 0, 37))
    return QueryOracle(score, tuple(one.shape[1:]), crop.size, crop.padding)


def query_attack(defense: Defense, threat: ThreatModel, budget: Budget, ctx: RunContext, kwargs: dict, name: str):
    """A query-only attack (``needs = {"queries"}``) against :func:`query_oracle`."""
    return get_attack(name, oracle=query_oracle(defense, threat, ctx.seed), target_size=budget.target_size,
                      seed=ctx.seed, **kwargs)


def run_attack(defense: Defense, attack_name: str, threat: ThreatModel | None = None, ctx: RunContext | None = None, *,
               budget: Budget | None = None, attack_kwargs: dict | None = None, server: str = "frozen",
               return_images: bool = False, eval_pairs_n: int | None = None) -> dict:
    """Train (or load) an attack on the defense and evaluate it on LFW pair images; the grid and JSON go
    to ``ctx.out_dir`` (``eval_pairs_n`` overrides the budget's number of evaluated same-pairs without
    changing the cached attacker's key)."""
    t_start = time.perf_counter()
    ctx = ctx or RunContext()
    threat = threat or ThreatModel()
    budget = budget or profile_budget(ctx.profile)
    attack, cache_path = train_attacker(defense, attack_name, threat, budget, ctx, attack_kwargs)
    return judge_attack(attack, cache_path, defense, threat, budget, ctx, server=server, return_images=return_images,
                        eval_pairs_n=eval_pairs_n, t_start=t_start)


def judge_attack(attack, attacker_path: Path | None, defense: Defense, threat: ThreatModel, budget: Budget,
                 ctx: RunContext | None = None, *, server: str = "frozen", return_images: bool = False,
                 eval_pairs_n: int | None = None, stem: str | None = None, t_start: float | None = None) -> dict:
    """Evaluate a trained ``attack`` (cached at ``attacker_path``) on what ``threat`` leaks of
    ``defense`` for LFW pair images (see :func:`judged`); the attacker may have been trained on another
    system (the paper-style non-adaptive attacker of AdvFace). Writes ``<stem>.json/.png`` in ``ctx.out_dir``.

    The judged result is cached like the attacker it judges: a resumed bench re-reads its finished
    cells instead of re-embedding thousands of reconstructions with two recognisers (3-5 min a cell
    on one core). Keyed by the attacker file's identity (a retrained attacker is a new key) and
    everything that picks the evaluation; EVAL_VERSION is bumped when the metrics change."""
    t_start = time.perf_counter() if t_start is None else t_start
    ctx = ctx or RunContext()
    seed, data = ctx.seed, ctx.data
    lfw = LFW(data)
    ia, ib = eval_pairs(lfw, eval_pairs_n or budget.eval_pairs)
    # A white-box cell's "attacker" is its cached inversion, (re)written while judging: the judged result
    # is saved under the key of the file as it is afterwards.
    source = inversion_path(attack, defense, threat, budget, ia, seed, data) if isinstance(attack, OptimizationAttack) \
        else attacker_path
    name = attack.name

    def eval_path() -> tuple[str, Path]:
        k = config_hash(file_stamp(source), attack.config(), defense.config(), asdict(threat), asdict(budget),
                        [int(i) for i in ia], [int(i) for i in ib], seed, str(data_dir(data)), server, EVAL_VERSION,
                        sar_config(ctx.profile))
        return k, cache_dir("evals") / f"{defense.name}-{name}-{k}.pt"

    ekey, path = eval_path()
    if ctx.force or (cached := load_cache(path, torch_load, "judged attack result")) is None:
        cached = judged(attack, defense, threat, budget, lfw, ia, ib, ctx, attacker_path)
        ekey, path = eval_path()
        save_torch(path, cached)
    result, rows = json.loads(cached["result"]), list(cached["rows"])
    result["wall_seconds"] = time.perf_counter() - t_start
    result["eval_cache"] = ekey
    result["run_on"] = device_record(ctx.device)  # where this run ran (a cached judgement may come from another)
    if ctx.out_dir is not None:
        out_dir = Path(ctx.out_dir)
        stem = stem or f"{defense.name}-{config_hash(defense.config(), length=6)}-{name}-{threat.leakage}" + \
            (f"-{threat.view}" if threat.view else "")
        result["grid"] = str(image_grid(rows, out_dir / f"{stem}.png"))
        write_json_atomic(out_dir / f"{stem}.json", result, indent=2)
    if return_images:
        result["images"] = {"original": rows[0], "held": rows[1], "reconstruction": rows[2]}
    return result


def format_result(r: dict) -> str:
    """A small table of the metrics of one attack run: image metrics, COS, SRRA and closer-to-own, then the
    successful attack rates (SAR) at the deployed recogniser's and the judge's FMR thresholds."""
    t = r["threat"]
    lines = [
        f"defense {r['defense']['name']} | attack {r['attack']['name']} | leakage {t['leakage']}"
        + (f" | adaptive view {t['view']}" if t.get("view") else "") + f" | profile {r['profile']} | n={r['eval']['n']}",
        f"COS judged by {r['judge']['cos']}" + ("" if r["judge"]["independent"] else " (NOT independent: install faceres)"),
        f"{'':<16}{'MSE↑':>8}{'PSNR↓':>8}{'SSIM↓':>8}{'COS↓':>8}{'SRRA same':>11}{'SRRA pair':>11}{'closer-to-own':>15}",
    ]
    for name, m in r["metrics"].items():
        lines.append(f"{name:<16}{m['MSE']:>8.4f}{m['PSNR']:>8.2f}{m['SSIM']:>8.3f}{m['COS']:>8.3f}"
                     f"{100 * m['SRRA_same_image']:>10.1f}%{100 * m['SRRA_pair']:>10.1f}%{100 * m['closer_to_own']:>14.1f}%")
    if r.get("attack_ms_per_face") is not None:  # the attack's cost per target (a refinement, a query search)
        lines.append(f"attack: {r['attack_ms_per_face'] / 1000:.3g} s/face" + "".join(
            f", {v:.4g} {k}/face" for k, v in (r.get("attack_per_face") or {}).items()))
    sar = r["judge"].get("sar")
    if not sar:  # a result judged before SAR was measured
        return "\n".join(lines)
    dep, jud = sar["deployed"], sar["judge"]
    cols = [(f"{dep['model']} {kind} @{lab}", f"SAR_{kind}@{lab}") for lab in dep["thresholds"] for kind in ("I", "II")]
    cols += [(f"{jud['model']} {kind} @{lab}", f"judge_SAR_{kind}@{lab}") for lab in jud["thresholds"] for kind in ("I", "II")]
    lines.append("SAR (successful attack rate; type I: vs the source image's template, type II: vs another image "
                 "of the same person) at FMR thresholds fitted on LFW impostor pairs:")
    lines.append(f"{'':<16}" + "".join(f"{h:>{max(len(h) + 2, 10)}}" for h, _ in cols))
    for name, m in r["metrics"].items():
        lines.append(f"{name:<16}" + "".join(f"{100 * m[k]:>{max(len(h) + 2, 10) - 1}.1f}%" if k in m else
                                            f"{'—':>{max(len(h) + 2, 10)}}" for h, k in cols))
    for fit in (dep, jud):
        lines.append(f"  {fit['model']} {fit['metric']} thresholds: " + ", ".join(
            f"FMR {lab}: {t:.4f} (held-out FMR {fit['held_out_fmr'][lab]:.2g})" for lab, t in fit["thresholds"].items())
            + f"; {fit['n_fit']:,} + {fit['n_held_out']:,} impostor pairs of {fit['images']:,} LFW images")
    return "\n".join(lines)

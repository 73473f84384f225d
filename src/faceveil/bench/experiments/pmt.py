"""PMT's paper tables (Pu, Chen et al., "Facial Data Minimization: Shallow Model as Your Privacy
Filter") measured with faceveil's CPU stand-ins: the recognisers dlib ResNet, Human's faceres and
mobilefacenet instead of the paper's ArcFace/CosFace/... family, LFW pairs.txt, one CPU core.

Probes. The first images of the first ``probes`` LFW pairs.txt same-pairs (spread over the folds)
are obfuscated with PMT for an authorised model A (in A's aligned crop); the genuine reference of
each probe is the *other* image of its pair, the impostor reference the second image of another
same-pair of a different person; references are clean chips in each evaluated model's own crop.
An evaluated model B sees the obfuscated image re-cropped to B's geometry (the most favourable
alignment an abuser could have: he cannot detect a face in noise).

Strict accuracy (eq. 10, :func:`strict_accuracy`). A probe counts as correctly recognised by model
B only if B's embedding of the upload stays the person's own — cos(f(x~_i), f(x_i)) > kappa, the term
eq. 10 adds to a pair decision — AND B accepts it against its genuine reference AND rejects it
against the impostor reference::

    strict = mean_i [ cos(f_B(x~_i), f_B(x_i)) > kappa
                      AND accept_B(x~_i, x_gen(i)) AND NOT accept_B(x~_i, x_imp(i)) ]

so a model that rejects everything (garbage embeddings) or accepts everything scores 0, and a
perfect one 100 %. The pair decisions alone (the reading used before the own term was added:
``strict_pairs``) are kept beside it. The paper's text itself is not on this machine (only its
abstract is reachable); the form of eq. 10 and of eq. 9 below follows the issue that quotes them.
Two acceptance rules: the paper's cosine threshold kappa = 0.2 — on embeddings
centred on the model's mean over public faces (:func:`faceveil.bench.privacy.judge_centre`),
because dlib and faceres embeddings share a large common component (raw cosines of different
people are ~0.9 for dlib) where ArcFace-style ones are centred — and each model's own operating
threshold (fit on pairsDevTrain with the model's metric). The genuine-accept rate (TAR) and
impostor-accept rate (FAR) are reported beside.

Tables:

- Table 7 analogue (data abuse): strict accuracy for every (authorised A, evaluated B) pair, plus
  clean rows (no PMT, the same re-cropping) as the reference each cell should be read against.
- Table 9 analogue (MR-PMT, eq. 8): every combination of >= 2 available models.
- Table 6 analogue (reconstruction): the paper's reference rows — unprotected (the face itself, and
  ``urec`` trained on unprotected E_c(x) features) and random noise (x plus Gaussian noise of the
  upload's RMS amplitude) — then the obfuscated upload as is, a 2-px Gaussian low-pass of it (a
  trivial adaptive attacker), the white-box inversion of eqs. 2-4 (image and feature uploads) and
  a U-Net (``urec``) trained on obfuscated features of public faces; SSIM/PSNR/COS/SRRA as the
  attack harness defines them, read two ways (PMT's: low SSIM/PSNR = visual privacy, high
  COS/SRRA = utility; identity privacy: high COS/SRRA = the identity is available to anyone with
  the shared E_c, by design).
- Table 8 analogue (attributes): face-api expression/gender/age and Human GEAR race on PMT(x) vs
  x, and on x + delta with Gaussian delta of the same RMS amplitude as PMT(x) - x.
- UP(sigma, kappa) (our reading of eq. 9): the fraction of probes that are both visually private
  (perceptual distance to x above sigma) and useful (centred cosine of the authorised embeddings
  above kappa). LPIPS needs ImageNet-trained weights that cannot be installed here; the substitute
  is an LPIPS-style distance without learned weights on the four dense blocks of face-api's
  expression network (unit-normalised channels, squared differences, spatial mean, mean over
  blocks) — an independent face model; the distances of reference degradations are reported so
  sigma can be read.
- Ablations (Tables 3, 4, 5, 10): initialisation (3), augmentation (4), the TI kernel (5) and
  Algorithm 2's three enhancements — augmentation, layer aggregation, TI kernel — on and off in all
  2^3 combinations (10) — authorised / unauthorised strict accuracy, SSIM of x~ and of its
  low-pass, and robustness to server-side preprocessing (8-bit PNG, JPEG q75, x0.5 resize,
  Gaussian noise 0.03).

Columns: every authorisable model plus ``faceres-bgr`` (evaluated only: faceres's weights fed BGR,
cosine distance). mobilefacenet is weak on LFW here even on clean faces (Human's preprocessing is
under investigation), so its rows/columns carry little signal; read them against the clean rows.

Budgets per bench profile: :data:`PMT_BUDGETS` (each PMT face costs K forward/backward passes of
the shallow models; see ``bench/pmt.py`` for ms/face).

Run on its own (writes ``pmt.md``/``pmt.json`` and figures)::

    OMP_NUM_THREADS=1 python -m faceveil.bench.experiments.pmt --profile ci --out results/pmt-ci
"""

from __future__ import annotations

import io
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.bench.experiments.common import ExperimentContext, attempt, experiment_context, experiment_parser
from faceveil.bench.experiments.pmt_tables import cut_depth_md, render
from faceveil.bench.plan import EXPERIMENTS, SETTINGS, Setting
from faceveil.config import cache_dir, config_hash, load_or_compute_parts
from faceveil.defenses import get_defense
from faceveil.defenses.pmt import PMT, gaussian_blur
from faceveil.models.base import CropSpec, Recognizer
from faceveil.storage import ensure_dir, write_json_atomic, write_text_atomic

#: generic cells in the first report (`make run`, the fast profile) and at the quick profile (PMT on the same axes as
#: the other defenses in a combined run), on the capped sets of a slow client (:func:`faceveil.bench.plan.setting_sizes`)
#: and with K = 20 steps of twice the step size (1 s per face instead of 5); the full profile would PMT every LFW pair
#: image (and, for attacks, thousands of public faces) at ~1-3 s per face on this CPU, so there this module's
#: experiment alone runs the white-box and urec reconstructions (Table 6) at :data:`PMT_BUDGETS`.
#: (the cut layer alone, ``aggregate=""``: the configuration the committed default run measured before layer
#: aggregation became PMT's default; K and the matched layers are both cut for the first report's CPU budget)
SETTINGS["pmt"] = [Setting("PMT (image upload; K=20, α=0.02)", "pmt", {"iterations": 20, "alpha": 0.02, "aggregate": ""},
                           profiles=("fast", "quick"))]

KAPPA = 0.2
#: recognisers that can be authorised (they have a shallow model / default cut)
MODELS = ("dlib", "mobilefacenet", "faceres")
#: evaluated only: Human's faceres fed BGR with cosine distance — the same weights as ``faceres``
#: (so, for PMT authorised on faceres, an unauthorised model that shares E_c's weights but sees the
#: channels swapped), and the strongest Human recogniser on LFW here
EVAL_ONLY = ("faceres-bgr",)
LOWPASS_SIGMA = 2.0  # px at the chip's resolution


@dataclass(frozen=True)
class PMTBudget:
    """Caps of the PMT measurements per bench profile."""

    probes: int  # LFW same-pairs for Tables 7/8 and UP
    mr_probes: int  # ... for MR-PMT (Table 9)
    ablation_probes: int  # ... for the ablations
    attack_train: int  # public faces obfuscated to train the urec attacker
    attack_eval: int  # LFW same-pairs judged by the reconstruction attacks
    whitebox_steps: int | None  # None: the attack profile's default
    iterations: int | None = None  # None: the defense default (K = 100)


#: measured: ``quick`` took 65 min with Tables 7/9's obfuscations already cached, on one core shared
#: ~3x (about 3.7-7 s per face for K = 100, see ``bench/pmt.py``); ``full`` is ~5,800 PMT faces plus
#: 300 white-box inversions of 600 steps: ~9 h at that load, roughly 3-5 h on a dedicated core.
PMT_BUDGETS: dict[str, PMTBudget] = {
    "ci": PMTBudget(8, 4, 4, 48, 8, 40, 20),
    "quick": PMTBudget(50, 24, 24, 300, 30, 150),
    "full": PMTBudget(300, 100, 100, 2000, 300, None),
}


def pmt(budget: PMTBudget, **kw) -> PMT:
    if budget.iterations is not None and "iterations" not in kw:
        kw["iterations"] = budget.iterations
    d = get_defense("pmt", **kw)
    assert isinstance(d, PMT)
    return d


def available_models(wanted: tuple[str, ...] = MODELS) -> tuple[list[str], dict[str, str]]:
    """The recognisers that load here (npm-installed ones may be missing) and why others do not."""
    from faceveil.defenses.pmt import _shared_recognizer

    ok, missing = [], {}
    for m in wanted:
        try:
            _shared_recognizer(m)
            ok.append(m)
        except Exception as e:  # not installable here: reported
            missing[m] = f"{type(e).__name__}: {e}"
    return ok, missing


# ---------------------------------------------------------------------------------------------
# Probes, obfuscation cache, evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class Probes:
    """LFW indices: probe images, their genuine and impostor references."""

    a: np.ndarray
    gen: np.ndarray
    imp: np.ndarray


def probe_set(lfw, n: int, seed: int) -> Probes:
    from faceveil.bench.privacy import eval_pairs

    ia, ib = eval_pairs(lfw, n)
    names = np.array([lfw.dataset().files[i].split("/")[0] for i in ib])
    g = np.random.default_rng(seed)
    perm = g.permutation(len(ib))
    for _ in range(20):
        bad = (names[perm] == names) | (perm == np.arange(len(ib)))
        if not bad.any():
            break
        perm[bad] = g.permutation(len(ib))[: bad.sum()]
    return Probes(ia, ib, ib[perm])


def chips(lfw, idx: np.ndarray, crop: CropSpec) -> Tensor:
    from faceveil.data.align import to_tensor

    c, _ = lfw.dataset().subset(idx).chips(crop, progress=False)
    return to_tensor(c)


def obfuscate_lfw(defense: PMT, lfw, idx: np.ndarray, seed: int, progress: bool = True, batch: int = 16) -> Tensor:
    """x~ of LFW images ``idx`` (the defense's crop), cached on disk by config, images and seed, batch by
    batch while it is computed (a stopped run resumes)."""
    from faceveil.keys import research_generator

    cfg = {k: v for k, v in defense.config().items() if k != "upload"}
    path = cache_dir("pmt") / f"lfw-{config_hash(cfg, [int(i) for i in idx], seed, 'pmt-exp-v1')}.pt"

    x: list[Tensor] = []  # the chips, loaded by the first part computed (none if the set is cached)

    def part(bi: int) -> Tensor:
        if not x:
            x.append(chips(lfw, idx, defense.recognizer.crop))
        return defense.obfuscate(x[0][bi * batch : (bi + 1) * batch], research_generator(seed, bi, 31))[0]

    label = f"PMT {','.join(defense.authorised)} on {len(idx)} LFW faces"
    return load_or_compute_parts(path, -(-len(idx) // batch), part, torch.cat, progress=progress, desc=label)


def strict_accuracy(cos_own: Tensor | None, genuine: Tensor, impostor: Tensor, kappa: float = KAPPA) -> float:
    """Eq. 10: the fraction of probes whose upload's embedding stays its own (``cos_own > kappa``: the centred
    cosine of f(x~_i) to f(x_i)), that are accepted against their genuine reference and rejected against
    their impostor one (boolean ``[N]`` decisions); ``cos_own=None`` drops the first term (the pair decisions
    alone)."""
    ok = genuine.bool() & ~impostor.bool()
    if cos_own is not None:
        ok = ok & (cos_own > kappa)
    return float(ok.float().mean())


class Evaluator:
    """One evaluated recogniser: its centre (for the centred cosine), operating point, references."""

    def __init__(self, model: Recognizer, lfw, data) -> None:
        from faceveil.bench.lfw import operating_point
        from faceveil.bench.privacy import judge_centre

        self.model, self.lfw = model, lfw
        self.centre = judge_centre(model, data)
        self.op = operating_point(model, lfw, progress=False)
        self._refs: dict[tuple[int, ...], Tensor] = {}

    def embed(self, images: Tensor, crop: CropSpec) -> Tensor:
        from faceveil.bench.privacy import embed_images

        return embed_images(self.model, images, crop)

    def refs(self, idx: np.ndarray) -> Tensor:
        key = tuple(int(i) for i in idx)
        if key not in self._refs:
            self._refs[key] = self.model.embed(chips(self.lfw, idx, self.model.crop))
        return self._refs[key]

    def accept(self, a: Tensor, b: Tensor, rule: str) -> Tensor:
        if rule == "kappa":
            return F.cosine_similarity(a - self.centre, b - self.centre) > KAPPA
        return self.model.distance(a, b) <= self.op.threshold

    def centred_cos(self, a: Tensor, b: Tensor) -> Tensor:
        return F.cosine_similarity(a - self.centre, b - self.centre)

    def scores(self, probe_emb: Tensor, probes: Probes, own: Tensor) -> dict:
        """Strict accuracy (eq. 10) and the pair decisions alone, TAR, FAR for both rules; the centred cosine of
        the probes' embeddings to those of their own originals ``own``."""
        gen, imp = self.refs(probes.gen), self.refs(probes.imp)
        cos_own = self.centred_cos(probe_emb, own)
        out: dict = {}
        for rule in ("kappa", "op"):
            g, i = self.accept(probe_emb, gen, rule), self.accept(probe_emb, imp, rule)
            out[rule] = {"strict": strict_accuracy(cos_own, g, i), "strict_pairs": strict_accuracy(None, g, i),
                         "tar": float(g.float().mean()), "far": float(i.float().mean())}
        out["cos_own"] = float(cos_own.mean())
        return out




# ---------------------------------------------------------------------------------------------
# Table 7 (data abuse) and Table 9 (MR-PMT)
# ---------------------------------------------------------------------------------------------


def data_abuse(ctx: ExperimentContext, budget: PMTBudget, models: list[str], evals: dict[str, Evaluator]) -> tuple[dict, dict[str, Tensor]]:
    """Strict accuracy of every evaluated model on PMT(x) for every authorised model, and clean."""
    lfw, seed = ctx.lfw, ctx.seed
    probes = probe_set(lfw, budget.probes, seed)
    res: dict = {"n": len(probes.a), "pmt": {}, "clean": {}}
    xts: dict[str, Tensor] = {}
    for a in models:
        d = pmt(budget, model=a)
        crop = d.recognizer.crop
        x = chips(lfw, probes.a, crop)
        xt = obfuscate_lfw(d, lfw, probes.a, seed, ctx.progress)
        xts[a] = xt
        res["pmt"][a], res["clean"][a] = {}, {}
        for b, ev in evals.items():
            own = ev.embed(x, crop)
            res["pmt"][a][b] = ev.scores(ev.embed(xt, crop), probes, own)
            res["clean"][a][b] = ev.scores(own, probes, own)
    return res, xts




def mr_pmt(ctx: ExperimentContext, budget: PMTBudget, models: list[str], evals: dict[str, Evaluator]) -> dict:
    lfw, seed = ctx.lfw, ctx.seed
    probes = probe_set(lfw, budget.mr_probes, seed)
    out: dict = {"n": len(probes.a), "combos": {}}
    combos = [c for r in range(2, len(models) + 1) for c in itertools.combinations(models, r)]
    for combo in combos:
        d = pmt(budget, model=combo[0], models=",".join(combo))
        crop = d.recognizer.crop
        xt = obfuscate_lfw(d, lfw, probes.a, seed, ctx.progress)
        x = chips(lfw, probes.a, crop)
        out["combos"]["+".join(combo)] = {b: ev.scores(ev.embed(xt, crop), probes, ev.embed(x, crop))
                                          for b, ev in evals.items()}
    return out




# ---------------------------------------------------------------------------------------------
# Table 6 (reconstruction)
# ---------------------------------------------------------------------------------------------


def judge_images(cands: dict[str, Tensor], x_a: Tensor, x_b: Tensor, deployed: Recognizer, crop: CropSpec,
                 target_size: int, lfw, data, seed: int) -> dict:
    """The harness's metrics (MSE, PSNR, SSIM at ``target_size``; COS by the independent judge,
    centred; SRRA against the same image and the pair image at the deployed model's operating
    point; closer-to-own) for arbitrary candidate images of the targets ``x_a``."""
    from faceveil.bench.lfw import operating_point
    from faceveil.bench.privacy import cos_judge, embed_images, judge_centre
    from faceveil.data.chips import resize
    from faceveil.metrics.identity import closer_to_own, cosine, srra
    from faceveil.metrics.image import mse, psnr, ssim

    targets = resize(x_a, target_size)
    op = operating_point(deployed, lfw, progress=False)
    e_a, e_b = embed_images(deployed, x_a, crop), embed_images(deployed, x_b, crop)
    judge, independent = cos_judge()
    centre = judge_centre(judge, data)
    j_a = embed_images(judge, x_a, crop) - centre
    out = {}
    for name, imgs in cands.items():
        small = resize(imgs, target_size)
        up = resize(small, crop.size)
        e = embed_images(deployed, up, crop)
        out[name] = {
            "MSE": float(mse(small, targets).mean()), "PSNR": float(psnr(small, targets, 1.0).mean()),
            "SSIM": float(ssim(small, targets, 1.0).mean()),
            "SSIM_native": float(ssim(imgs.clamp(0, 1), x_a, 1.0).mean()) if imgs.shape == x_a.shape else None,
            "COS": float(cosine(embed_images(judge, up, crop) - centre, j_a).mean()),
            "SRRA_same_image": float(srra(e, e_a, op).float().mean()), "SRRA_pair": float(srra(e, e_b, op).float().mean()),
            "closer_to_own": float(closer_to_own(e, e_a, deployed.metric, seed).float().mean()),
        }
    return {"metrics": out, "judge": judge.name, "independent": independent}


def reconstruction(ctx: ExperimentContext, budget: PMTBudget) -> dict:
    from faceveil.attacks.base import ThreatModel, attack_class, profile_budget
    from faceveil.bench.privacy import eval_pairs, run_attack
    from faceveil.context import RunContext

    lfw, seed, data = ctx.lfw, ctx.seed, ctx.data
    prof = ctx.bench_profile.attack_profile
    ab = profile_budget(prof, train_images=budget.attack_train, eval_pairs=budget.attack_eval,
                        **({"whitebox_steps": budget.whitebox_steps} if budget.whitebox_steps else {}))
    out: dict = {"budget": asdict(ab), "rows": {}, "errors": {}}
    img = pmt(budget)
    ia, ib = eval_pairs(lfw, ab.eval_pairs)
    crop = img.recognizer.crop
    x_a, x_b = chips(lfw, ia, crop), chips(lfw, ib, crop)
    xt = obfuscate_lfw(img, lfw, ia, seed, ctx.progress)
    j = judge_images({"unprotected: the face itself (x)": x_a,
                      "random noise: x + Gaussian noise of the upload's RMS": same_amplitude_noise(x_a, xt, seed),
                      "upload as is (x~)": xt, f"low-pass x~ (Gaussian σ={LOWPASS_SIGMA:g} px)": gaussian_blur(xt, LOWPASS_SIGMA)},
                     x_a, x_b, img.recognizer, crop, ab.target_size, lfw, data, seed)
    out["rows"].update(j["metrics"])
    out["judge"] = {"cos": j["judge"], "independent": j["independent"]}
    # the paper's "unprotected" attack row: the same feature attacker on the clean E_c(x) of the deployed cut
    plain = get_defense("none", transmit=img.cut)
    threat = ThreatModel(leakage="channel", knowledge=attack_class("urec").knowledge())
    r, err = attempt(run_attack, plain, "urec", threat, RunContext(prof, seed, data, ctx.device, ctx.force, ctx.progress,
                                                                   ctx.cells()), budget=ab)
    key = "unprotected: urec on clean features E_c(x)"
    if r is None:
        out["errors"][key] = err
    else:
        out["rows"][key] = r["metrics"]["reconstruction"]
    # E_c(x~) of an image upload is exactly the feature upload z~, so one white-box run covers both
    for upload, attack in (("image", "whitebox"), ("features", "urec")):
        d = pmt(budget, upload=upload)
        threat = ThreatModel(leakage="channel", knowledge=attack_class(attack).knowledge())
        r, err = attempt(run_attack, d, attack, threat, RunContext(prof, seed, data, ctx.device, ctx.force, ctx.progress,
                                                                   ctx.cells()), budget=ab)
        key = ("white-box inversion of E_c(x~) = z~ (eqs. 2-4)" if "forward_map" in attack_class(attack).needs
               else "urec on uploaded features z~")
        if r is None:
            out["errors"][key] = err
            continue
        out["rows"][key] = r["metrics"]["reconstruction"]
        out["rows"].setdefault("*baseline: mean face*", r["metrics"]["mean face"])
        out["rows"].setdefault("*baseline: random person*", r["metrics"]["random person"])
        if r.get("grid"):
            out.setdefault("grids", []).append(r["grid"])
    return out




# ---------------------------------------------------------------------------------------------
# Table 8 (attributes) and UP (eq. 9)
# ---------------------------------------------------------------------------------------------


def _noisy(x: Tensor, std: float, seed: int) -> Tensor:
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def same_amplitude_noise(x: Tensor, xt: Tensor, seed: int) -> Tensor:
    """x + delta, delta Gaussian with the per-image RMS of ``xt - x`` (clipped to [0,1])."""
    rms = (xt - x).pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    return (x + rms * torch.randn(x.shape, generator=g)).clamp(0, 1)


def attributes(x: Tensor, variants: dict[str, Tensor], crop: CropSpec) -> dict:
    """Cosine of expression / gender / race probability vectors and |age difference| between the
    predictions on each variant and on ``x``."""
    from faceveil.data.chips import recrop
    from faceveil.models.faceapi import get_attribute_model

    out: dict = {v: {} for v in variants}
    for name in ("faceapi", "gear"):
        try:
            m = get_attribute_model(name)
        except Exception as e:  # gear is optional
            out.setdefault("_errors", {})[name] = f"{type(e).__name__}: {e}"
            continue
        ref = m.predict(recrop(x, crop, m.crop).clamp(0, 1))
        for v, imgs in variants.items():
            p = m.predict(recrop(imgs, crop, m.crop).clamp(0, 1))
            for key in ("expression", "gender", "race"):
                if key in p:
                    out[v][f"{name}:{key} cos"] = float(F.cosine_similarity(p[key], ref[key]).mean())
            out[v][f"{name}:age abs. diff. (y)"] = float((p["age"] - ref["age"]).abs().mean())
    return out


class PerceptualDistance:
    """LPIPS-style distance without learned weights on face-api's expression backbone (4 dense
    blocks): per block, unit-normalise channel vectors, squared difference, spatial mean; mean
    over blocks. In [0, 4]; 0 = identical features. An independent face model (not a recogniser)."""

    def __init__(self) -> None:
        from faceveil.models.faceapi import faceapi_expression

        self.fe = faceapi_expression().features

    @torch.no_grad()
    def blocks(self, x: Tensor) -> list[Tensor]:
        h = self.fe.input(F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True))
        out = []
        for blk in (self.fe.dense0, self.fe.dense1, self.fe.dense2, self.fe.dense3):
            h = blk(h)
            out.append(h / h.norm(dim=1, keepdim=True).clamp_min(1e-10))
        return out

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.stack([(p - q).pow(2).sum(1).mean((1, 2)) for p, q in zip(self.blocks(a), self.blocks(b), strict=True)]).mean(0)


def up_scores(ctx: ExperimentContext, budget: PMTBudget, xts: dict[str, Tensor], evals: dict[str, Evaluator]) -> dict:
    """UP(sigma, kappa) per authorised model, and the perceptual distance of reference images."""
    lfw, seed = ctx.lfw, ctx.seed
    probes = probe_set(lfw, budget.probes, seed)
    pd = PerceptualDistance()
    out: dict = {"reference_distance": {}, "up": {}}
    sigmas = (0.3, 0.6, 0.9, 1.2)
    for a, xt in xts.items():
        crop = evals[a].model.crop
        x = chips(lfw, probes.a, crop)
        d_pmt = pd(xt, x)
        ev = evals[a]
        cos = ev.centred_cos(ev.embed(xt, crop), ev.embed(x, crop))
        accept_op = ev.model.distance(ev.embed(xt, crop), ev.embed(x, crop)) <= ev.op.threshold
        out["up"][a] = {"d_mean": float(d_pmt.mean()), "cos_mean": float(cos.mean())}
        for s in sigmas:
            out["up"][a][f"UP(σ={s},κ={KAPPA})"] = float(((d_pmt > s) & (cos > KAPPA)).float().mean())
            out["up"][a][f"UP(σ={s},own thr)"] = float(((d_pmt > s) & accept_op).float().mean())
        if a == "dlib" or not out["reference_distance"]:
            other = chips(lfw, probes.imp, crop)
            out["reference_distance"] = {
                "PMT(x)": float(d_pmt.mean()),
                f"low-pass PMT(x), σ={LOWPASS_SIGMA:g} px": float(pd(gaussian_blur(xt, LOWPASS_SIGMA), x).mean()),
                "x + Gaussian noise of PMT's RMS": float(pd(same_amplitude_noise(x, xt, seed), x).mean()),
                "x + Gaussian noise, std 0.05": float(pd(_noisy(x, 0.05, seed), x).mean()),
                "x blurred, σ=3 px": float(pd(gaussian_blur(x, 3.0), x).mean()),
                "another person": float(pd(other, x).mean()),
                "_on": a,
            }
    return out


# ---------------------------------------------------------------------------------------------
# Ablations (Tables 3, 4, 5, 10)
# ---------------------------------------------------------------------------------------------


def jpeg(x: Tensor, quality: int = 75) -> Tensor:
    from PIL import Image

    from faceveil.data.align import to_tensor, to_uint8

    out = []
    for a in to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return to_tensor(np.stack(out))


def server_preprocessing(x: Tensor, seed: int) -> dict[str, Tensor]:
    s = x.shape[-1]
    half = F.interpolate(x, size=(s // 2, s // 2), mode="bilinear", align_corners=False, antialias=True)
    return {
        "8-bit PNG": x.mul(255).round().div(255),
        "JPEG q75": jpeg(x, 75),
        "x0.5 resize": F.interpolate(half, size=(s, s), mode="bilinear", align_corners=False),
        "noise 0.03": _noisy(x, 0.03, seed),
    }


ABLATIONS: dict[str, list[tuple[str, dict]]] = {
    "Table 3 analogue: initialisation": [("Gaussian noise (default)", {}), ("random pixel shuffle", {"init": "shuffle"}),
                                         ("heavy Gaussian blur", {"init": "blur"})],
    "Table 4 analogue: augmentation T": [("none (aggregation + TI only)", {"augment": "none"}), ("random noise (default)", {}),
                                         ("random affine", {"augment": "affine"}), ("mix (affine + noise)", {"augment": "mix"})],
    "Table 5 analogue: TI kernel": [("none", {"kernel": "none"}), ("Gaussian, k=1 (default)", {}),
                                    ("Gaussian, k=3", {"kernel_length": 3}), ("linear, k=3", {"kernel": "linear", "kernel_length": 3})],
    "Table 10 analogue: Algorithm 2's enhancements, all 2³ combinations": [
        (f"augmentation {'on' if t else 'off'}, aggregation {'on' if a else 'off'}, TI {'on' if k else 'off'}"
         + (" (default)" if t and a and k else "" if t or a or k else " (Algorithm 1)"),
         {"augment": "noise" if t else "none", "aggregate": "default" if a else "", "kernel": "gaussian" if k else "none"})
        for t, a, k in itertools.product((False, True), repeat=3)],
}


#: shallow-model depth per authorised model (shallow to deep; the first is the default cut): the
#: paper's E_c is "the first five layers"; how deep the cut is decides how invertible E_c is
DEPTH_CUTS: dict[str, tuple[str, ...]] = {
    "faceres": ("conv_dw_1_bn/batchnorm_1/add_1", "conv_pw_1_bn/batchnorm_1/add_1", "conv_pw_2_bn/batchnorm_1/add_1",
                "conv_pw_3_bn/batchnorm_1/add_1"),
    "dlib": ("res1", "res4"),
}


def cut_depth(ctx: ExperimentContext, budget: PMTBudget, models: list[str], evals: dict[str, Evaluator]) -> dict:
    """Ablation: PMT at deeper cuts of the authorised model (strict accuracy of every evaluated model,
    SSIM of the upload and of its low-pass), on the ablation probes."""
    from faceveil.metrics.image import ssim

    lfw, seed = ctx.lfw, ctx.seed
    probes = probe_set(lfw, budget.ablation_probes, seed)
    out: dict = {"n": len(probes.a), "rows": []}
    for m in (m for m in DEPTH_CUTS if m in models):
        for i, at in enumerate(DEPTH_CUTS[m]):
            d = pmt(budget, model=m, at=at if i else "")  # "" = the default cut (its cached uploads are reused)
            crop = d.recognizer.crop
            x = chips(lfw, probes.a, crop)
            with torch.no_grad():
                shape = tuple(d.recognizer.features(d.shallow[0].view(x[:1]), [d.cut])[d.cut][0].shape)
            xt = obfuscate_lfw(d, lfw, probes.a, seed, ctx.progress)
            row = {"model": m, "cut": d.cut, "default": i == 0, "shape": shape,
                   "ssim": float(ssim(xt, x, 1.0).mean()),
                   "ssim_lowpass": float(ssim(gaussian_blur(xt, LOWPASS_SIGMA), x, 1.0).mean()),
                   "strict": {b: ev.scores(ev.embed(xt, crop), probes, ev.embed(x, crop))["op"]["strict"]
                              for b, ev in evals.items()}}
            out["rows"].append(row)
    return out




def ablations(ctx: ExperimentContext, budget: PMTBudget, models: list[str], evals: dict[str, Evaluator]) -> dict:
    from faceveil.metrics.image import ssim

    lfw, seed = ctx.lfw, ctx.seed
    probes = probe_set(lfw, budget.ablation_probes, seed)
    out: dict = {"n": len(probes.a), "tables": {}}
    memo: dict[str, dict] = {}
    for title, variants in ABLATIONS.items():
        out["tables"][title] = {}
        for label, kw in variants:
            d = pmt(budget, model="dlib", **kw)
            key = json.dumps(d.config(), sort_keys=True, default=str)  # the same PMT named twice is measured once
            if key not in memo:
                crop = d.recognizer.crop
                x = chips(lfw, probes.a, crop)
                xt = obfuscate_lfw(d, lfw, probes.a, seed, ctx.progress)
                row: dict = {"ssim": float(ssim(xt, x, 1.0).mean()),
                             "ssim_lowpass": float(ssim(gaussian_blur(xt, LOWPASS_SIGMA), x, 1.0).mean())}
                for b, ev in evals.items():
                    row[b] = ev.scores(ev.embed(xt, crop), probes, ev.embed(x, crop))["op"]["strict"]
                ev = evals["dlib"]
                own = ev.embed(x, crop)
                row["robust"] = {name: ev.scores(ev.embed(v, crop), probes, own)["op"]["strict"]
                                 for name, v in server_preprocessing(xt, seed).items()}
                memo[key] = row
            out["tables"][title][label] = memo[key]
    return out




# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def grid_figure(ctx: ExperimentContext, xts: dict[str, Tensor], budget: PMTBudget) -> Path | None:
    from faceveil.bench.privacy import image_grid
    from faceveil.data.chips import recrop

    lfw = ctx.lfw
    probes = probe_set(lfw, budget.probes, ctx.seed)
    k = min(6, len(probes.a))
    crop = CropSpec(150, 0.25)
    x = chips(lfw, probes.a[:k], crop)
    rows = [x]
    for a, xt in xts.items():
        src = pmt(budget, model=a).recognizer.crop
        v = recrop(F.interpolate(xt[:k], size=(src.size, src.size), mode="bilinear", align_corners=False), src, crop).clamp(0, 1)
        rows += [v, gaussian_blur(v, LOWPASS_SIGMA)]
    return image_grid(rows, Path(ctx.out_dir) / "pmt_grid.png")


def evaluators(ctx: ExperimentContext) -> tuple[list[str], dict[str, str], list[str], dict[str, Evaluator]]:
    """The authorised models available here, the missing ones, the evaluated ones (authorised + the
    evaluated-only models) and their evaluators."""
    from faceveil.defenses.pmt import _shared_recognizer

    models, missing = available_models(tuple(ctx.options.get("models") or MODELS))
    extra, missing_extra = available_models(tuple(m for m in ctx.options.get("eval_only", EVAL_ONLY) if m not in models))
    missing.update(missing_extra)
    evaluated = models + extra
    return models, missing, evaluated, {m: Evaluator(_shared_recognizer(m), ctx.lfw, ctx.data) for m in evaluated}


def compute(ctx: ExperimentContext, checkpoint=None) -> tuple[dict, list[str]]:
    """Every table's data (and the grid figure); ``checkpoint(out)`` is called after each table, so a long
    run stopped early still leaves what it finished."""
    t0 = time.perf_counter()
    budget = PMT_BUDGETS[ctx.profile]
    lfw = ctx.lfw
    models, missing, evaluated, evals = evaluators(ctx)
    out: dict = {"budget": asdict(budget), "models": models, "evaluated": evaluated, "missing_models": missing, "errors": {},
                 "kappa": KAPPA, "defaults": pmt(budget).config(), "cuts": {m: pmt(budget, model=m).cut for m in models}}
    checkpoint = checkpoint or (lambda out: None)

    res, xts = data_abuse(ctx, budget, models, evals)
    out["table7"] = res
    checkpoint(out)
    if len(models) >= 2:
        r, err = attempt(mr_pmt, ctx, budget, models, evals)
        out["table9"] = r or {"error": err}
        checkpoint(out)
    r, err = attempt(reconstruction, ctx, budget)
    out["table6"] = r or {"error": err}
    checkpoint(out)
    x_d = chips(lfw, probe_set(lfw, budget.probes, ctx.seed).a, CropSpec(150, 0.25))
    if "dlib" in xts:
        xt = xts["dlib"]
        variants = {"PMT(x) (for dlib)": xt, "x + δ (same RMS, Gaussian)": same_amplitude_noise(x_d, xt, ctx.seed),
                    f"low-pass PMT(x), σ={LOWPASS_SIGMA:g}": gaussian_blur(xt, LOWPASS_SIGMA)}
        r, err = attempt(attributes, x_d, variants, CropSpec(150, 0.25))
        out["table8"] = r or {"error": err}
    checkpoint(out)
    r, err = attempt(up_scores, ctx, budget, xts, evals)
    out["up"] = r or {"error": err}
    r, err = attempt(ablations, ctx, budget, models, evals)
    out["ablations"] = r or {"error": err}
    checkpoint(out)
    r, err = attempt(cut_depth, ctx, budget, models, evals)
    out["cut_depth"] = r or {"error": err}
    fig, err = attempt(grid_figure, ctx, xts, budget)
    out["seconds"] = time.perf_counter() - t0
    return out, [str(fig)] if fig else []


def run(ctx: ExperimentContext) -> dict:
    """The experiment: :func:`compute`, then :func:`~faceveil.bench.experiments.pmt_tables.render`."""

    def checkpoint(out: dict) -> None:
        """Partial results after every table."""
        d = Path(ctx.out_dir)
        ensure_dir(d)
        write_text_atomic(d / "pmt_partial.md", render(out) + "\n")
        write_json_atomic(d / "pmt_partial.json", out, indent=2, default=str)

    out, figs = compute(ctx, checkpoint)
    return {"markdown": render(out, figs), "data": out, "figures": figs}


if __name__ != "__main__":  # run as a script, the package import below registers it
    EXPERIMENTS.register("pmt")(run)


def main() -> None:
    """Run the PMT experiment alone: ``python -m faceveil.bench.experiments.pmt --profile ci --out DIR``."""
    ap = experiment_parser(__doc__.split("\n\n")[0], PMT_BUDGETS, "results/pmt")
    ap.add_argument("--models", default=",".join(MODELS), help="recognisers to use (comma-separated)")
    ap.add_argument("--only", choices=("cut_depth",), help="run one table alone (written to pmt_ONLY.md/json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = experiment_context(args.profile, args.out, args.data_dir, args.seed, args.force,
                             models=[m for m in args.models.split(",") if m])
    if args.only == "cut_depth":
        models, _, evaluated, evals = evaluators(ctx)
        res = cut_depth(ctx, PMT_BUDGETS[args.profile], models, evals)
        md = "\n".join(cut_depth_md(res, evaluated))
        write_text_atomic(args.out / "pmt_cut_depth.md", md + "\n")
        write_json_atomic(args.out / "pmt_cut_depth.json", res, indent=2, default=str)
        print(md)
        return
    r = run(ctx)
    write_text_atomic(args.out / "pmt.md", f"# PMT experiment ({args.profile})\n\n" + r["markdown"] + "\n")
    write_json_atomic(args.out / "pmt.json", r["data"], indent=2, default=str)
    print(r["markdown"])


if __name__ == "__main__":
    from faceveil.bench.experiments import pmt as _module

    _module.main()

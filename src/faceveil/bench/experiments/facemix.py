"""FaceMix's paper experiment, measured with faceveil's CPU stand-ins.

The paper evaluates a GAN reconstruction attack on CelebA and on LFW against FaceMix, against Gaussian
noise N(0, 8) and against blur with an 8×8 (CelebA) / 16×16 (LFW) kernel (its Figs. 1-4), and uses the
mixed faces for attribute classification in the cloud. Here:

- **Reconstruction (Figs. 1-4 analogues).** For each data set and each protection (unprotected chips as the
  reference; FaceMix with faceveil's defaults, k = 3; ``noise`` σ = 8 grey levels, i.e. 8/255 on faceveil's
  [0, 1] images; ``blur`` as a k×k box (mean) filter on the 150-px dlib chip, k = 8 for CelebA and 16 for
  LFW), a ``cgan`` (pix2pix) attacker is trained on the attacker's public faces protected by his own
  black-box client (channel leakage, the bench's threat model), and judged on held-out targets with the
  bench's metrics: SSIM, PSNR, COS of the independent judge, type-II SAR at the deployed recogniser's and at
  the judge's FMR 1e-3 thresholds, closer-to-own. A labelled grid per data set shows original /
  protected / reconstruction rows.

  *LFW targets*: the bench's own cells (:func:`faceveil.bench.privacy.run_attack`): the attacker trains on
  the public faces (CelebA aligned and wild, LFW identities absent from ``pairs.txt``) and is judged on LFW
  ``pairs.txt`` same-pairs (identity-disjoint by construction).

  *CelebA targets*: every attacker of the bench has CelebA aligned in its training set, so CelebA targets
  need identities it never saw. The experiment holds out the CelebA-aligned identities that have no image in
  FaceMix's public pool (the seed-0 pool of 256 CelebA-aligned chips: a held-out person is never a mixing
  partner either) and none in CelebA wild (six identities are in both folders): 55 of the 200. A second
  ``cgan`` per protection trains on the same public faces minus every image of those identities (same
  budget, same seed), and is judged on pairs of two different images of held-out identities (type II: the
  reconstruction of image a against image b). The SAR thresholds are the bench's (fitted on LFW impostor
  pairs).

- **Attribute utility.** ``celeba-aligned/labels.csv`` has the 40 CelebA attributes for 548 images of 149
  identities. Each image is protected once (seeded), embedded by the frozen deployed dlib ResNet (128-D), and
  a linear probe (L2 logistic regression, :mod:`faceveil.metrics.attributes`) is trained on protected images
  of some identities and tested on protected images of the others (5 identity-disjoint folds): the cloud's
  attribute classifier trained on protected data, FaceMix's task, with a frozen feature extractor instead
  of the paper's network trained on mixed faces. Attributes: those of :data:`ATTRIBUTES` whose minority
  class is at least :data:`MIN_MINORITY` of the labelled images, next to the majority-class baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from faceveil.bench.experiments.common import (
    ExperimentContext,
    attempt,
    experiment_context,
    experiment_parser,
    md_table,
    pct,
)
from faceveil.bench.plan import EXPERIMENTS
from faceveil.defenses import Defense, get_defense
from faceveil.storage import write_json_atomic, write_text_atomic

#: the reconstruction attack of the paper's figures
ATTACK = "cgan"
DATASETS = ("celeba", "lfw")
#: the paper's blur kernel per data set (box filter of that size on the 150-px chip)
BLUR_K = {"celeba": 8, "lfw": 16}
#: attribute candidates (CelebA names), kept when balanced enough (:data:`MIN_MINORITY`)
ATTRIBUTES = ("Male", "Smiling", "Young", "Eyeglasses", "Wearing_Lipstick", "Heavy_Makeup", "Mouth_Slightly_Open",
              "High_Cheekbones", "Attractive", "Wavy_Hair", "Arched_Eyebrows")
#: least share of the minority class for an attribute to be probed (Eyeglasses: 6 % of the labelled images)
MIN_MINORITY = 0.2
#: salts of the seeded protection draws of this experiment's own sets
ATTR_SALT, CELEBA_HELD_SALT = 41, 43
#: bump when the experiment's own cached artefacts change meaning: the held-out attackers and attribute features
VERSION = "facemix-exp-v1"
#: ... the judged CelebA cells (v2: grid faces from eight identities)
JUDGE_VERSION = "facemix-judge-v2"


@dataclass(frozen=True)
class MixBudget:
    """Budgets of the experiment per profile (None: the bench profile's attack budget)."""

    train_images: int | None  # public faces of each attacker
    max_steps: int | None  # cgan training steps
    epochs: int | None
    batch_size: int | None
    max_seconds: float | None  # the training's wall-time guard
    lfw_pairs: int | None  # LFW same-pairs judged
    celeba_ids: int | None  # held-out CelebA identities judged (None: all)
    celeba_per_id: int  # judged pairs per held-out identity (two different images each; <= 15)
    #: cgan's Adam learning rate (None: pix2pix's 2e-4, the attack's default); ci's 40 steps need 2e-3 to train
    cgan_lr: float | None = None
    probe_folds: int = 5


MIX_BUDGETS: dict[str, MixBudget] = {
    # a test's few minutes on a shared 2-core machine: 8 attackers of 40 steps of 32 on 512 faces
    # (at pix2pix's 2e-4, 40 steps leave the unprotected reconstruction below the mean face's SSIM)
    "ci": MixBudget(512, 40, 100, 32, 300.0, 32, 8, 4, cgan_lr=2e-3),
    # the bench's quick cgan budget (600 steps of 64, every public face): the LFW attackers are the bench's cells
    "quick": MixBudget(None, None, None, None, None, None, 24, 8),
    "full": MixBudget(None, None, None, None, None, None, None, 15),
}


def mix_budget(ctx: ExperimentContext) -> MixBudget:
    return MIX_BUDGETS.get(ctx.profile, MIX_BUDGETS["quick"])


def attack_budget(ctx: ExperimentContext):
    """The attackers' budget: the bench profile's attack profile with this experiment's caps."""
    from faceveil.attacks.base import profile_budget

    mb = mix_budget(ctx)
    caps = {"train_images": mb.train_images, "max_steps": mb.max_steps, "epochs": mb.epochs,
            "batch_size": mb.batch_size, "max_seconds": mb.max_seconds, "eval_pairs": mb.lfw_pairs}
    return profile_budget(ctx.bench_profile.attack_profile, **{k: v for k, v in caps.items() if v is not None})


def protections(dataset: str, data=None) -> list[tuple[str, Defense]]:
    """(label, defense) of the compared protections for ``dataset`` ("celeba" | "lfw")."""
    return [("unprotected", get_defense("none", transmit="image")),
            ("FaceMix k=3", get_defense("facemix", data=data)),
            ("noise σ=8", get_defense("noise", sigma=8.0)),
            (f"blur {BLUR_K[dataset]}×{BLUR_K[dataset]} box", get_defense("blur", kind="box", k=BLUR_K[dataset]))]


def attack_kwargs(ctx: ExperimentContext) -> dict:
    """The cgan's constructor arguments (the attack's defaults but ci's learning rate)."""
    lr = mix_budget(ctx).cgan_lr
    return {} if lr is None else {"lr": lr}


def threat():
    from faceveil.attacks.base import ThreatModel, attack_class

    return ThreatModel(leakage="channel", knowledge=attack_class(ATTACK).knowledge())


# ---------------------------------------------------------------------------------------------
# CelebA: held-out identities and the attacker that never saw them
# ---------------------------------------------------------------------------------------------


def pool_files(data=None) -> list[str]:
    """The CelebA-aligned files of FaceMix's default public pool, in pool order (what
    :func:`faceveil.defenses.pool.public_pool` picks: its seeded order, undetected faces skipped)."""
    from faceveil.data.align import STATUS_FALLBACK
    from faceveil.data.datasets import celeba

    d = get_defense("facemix", data=data)
    assert d.pool_source == "celeba-aligned"
    ds = celeba(data, "aligned")
    crop = d.recognizer.crop
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(d.pool_seed)).numpy()
    files: list[str] = []
    pos = 0
    while len(files) < d.pool_size and pos < len(order):
        take = np.sort(order[pos : pos + (d.pool_size - len(files)) + 8])
        pos += len(take)
        status = ds.subset(take).chips(crop, progress=False)[1]
        files += [ds.files[i] for i in take[status != STATUS_FALLBACK][: d.pool_size - len(files)]]
    return files


def heldout_identities(data=None) -> list[str]:
    """CelebA-aligned identities held out of the CelebA attackers' training: none of their images is in
    FaceMix's public pool, and they are not in CelebA wild (sorted)."""
    from faceveil.data.datasets import celeba
    from faceveil.errors import FaceveilDataError

    ds = celeba(data, "aligned")
    try:
        wild = set(celeba(data, "wild").identities)
    except FaceveilDataError:  # CelebA wild is optional
        wild = set()
    return sorted(set(ds.identities) - {f.split("/")[0] for f in pool_files(data)} - wild)


def public_faces_excluding(data, limit: int | None, seed: int, exclude: set[str]):
    """The bench's public training faces (:func:`faceveil.data.datasets.public_training_faces`) without any image
    of the CelebA identities ``exclude`` (by CelebA identity number, in either CelebA folder); with ``limit``, a
    seeded random subset of that size as :func:`faceveil.data.datasets.public_chips` draws it. A list of
    dataset subsets."""
    from faceveil.data.datasets import public_training_faces, seeded_subsets

    sets = []
    for ds in public_training_faces(data):
        keep = [i for i, f in enumerate(ds.files) if not (ds.name.startswith("celeba") and f.split("/")[0] in exclude)]
        sets.append(ds.subset(keep))
    return seeded_subsets(sets, limit, seed)


def celeba_attacker(defense: Defense, budget, ctx: ExperimentContext, exclude: list[str]):
    """The ``cgan`` attacker of ``defense`` trained on the public faces minus the held-out CelebA identities
    (cached like the bench's attackers, keyed by the excluded identities too): ``(attack, path)``."""
    from faceveil.attacks.base import ReconstructionAttack, attack_cache_path, check_trained, get_attack
    from faceveil.bench.privacy.leaks import attacker_source, leak_fn
    from faceveil.config import data_dir
    from faceveil.data.chips import chip_images

    if defense.slow:  # attacker_source caches a slow client's set under a key that does not name the faces
        raise ValueError(f"{defense.name}: the CelebA held-out attacker supports fast clients only")
    tm = threat()
    attack = get_attack(ATTACK, target_size=budget.target_size, seed=ctx.seed, **attack_kwargs(ctx))
    assert isinstance(attack, ReconstructionAttack)
    leak = leak_fn(defense, tm)
    attack.use_client(leak, defense.recognizer.crop)
    path = attack_cache_path(attack, defense.config(), asdict(tm), asdict(budget), str(data_dir(ctx.data)), "harness-v2",
                             {"celeba held out": sorted(exclude)}, VERSION)
    if not ctx.force and attack.load_cached(path) and attack.healthy():
        check_trained(ATTACK, attack.log, budget)
        return attack, path
    parts = public_faces_excluding(ctx.data, budget.train_images, ctx.seed, set(exclude))
    chips = np.concatenate([p.chips(defense.recognizer.crop, progress=ctx.progress)[0] for p in parts])
    targets = chip_images(chips, budget.target_size)
    source = attacker_source(defense, tm, leak, chips, targets, ctx.seed, budget.train_images, ctx.data, ctx.progress)
    attack.fit_and_save(source, budget, path, ctx.progress, ctx.force)
    check_trained(ATTACK, attack.log, budget)
    return attack, path


@dataclass(frozen=True)
class CelebAEval:
    """The CelebA evaluation pairs: two different images ``a`` / ``b`` (files of ``celeba-aligned``) of a
    held-out identity each."""

    a: list[str]
    b: list[str]
    identity: list[str]


def celeba_eval(data, heldout: list[str], n_ids: int | None, per_id: int, seed: int) -> CelebAEval:
    """``per_id`` pairs of distinct detected images for each of ``n_ids`` held-out identities (a seeded choice)."""
    from faceveil.data.align import STATUS_FALLBACK
    from faceveil.data.datasets import celeba
    from faceveil.models import deployed_recognizer

    ds = celeba(data, "aligned")
    rng = np.random.default_rng(seed)
    ids = [heldout[i] for i in rng.permutation(len(heldout))][: n_ids or len(heldout)]
    a, b, who = [], [], []
    for ident in ids:
        idx = np.array([i for i, f in enumerate(ds.files) if f.split("/")[0] == ident])
        status = ds.subset(idx).chips(deployed_recognizer().crop, progress=False)[1]
        idx = idx[status != STATUS_FALLBACK]
        idx = idx[rng.permutation(len(idx))]
        m = min(per_id, len(idx) // 2)
        a += [ds.files[i] for i in idx[:m]]
        b += [ds.files[i] for i in idx[m : 2 * m]]
        who += [ident] * m
    return CelebAEval(a, b, who)


def grid_positions(identity: list[str], k: int = 8) -> np.ndarray:
    """Positions of the faces a grid shows: the first pair of each of the first ``k`` identities (then further
    pairs if there are fewer identities)."""
    first = list(dict.fromkeys(identity))
    pos = [identity.index(i) for i in first[:k]]
    pos += [j for j in range(len(identity)) if j not in pos][: k - len(pos)]
    return np.array(pos, dtype=np.int64)


def _files_chips(data, files: list[str], crop) -> np.ndarray:
    from faceveil.data.datasets import celeba

    ds = celeba(data, "aligned")
    pos = {f: i for i, f in enumerate(ds.files)}
    return ds.subset([pos[f] for f in files]).chips(crop, progress=False)[0]


def judge_celeba(attack, attacker_path: Path, defense: Defense, budget, ev: CelebAEval, ctx: ExperimentContext) -> dict:
    """The bench's metrics (:func:`faceveil.bench.privacy.judging.judged`) on CelebA pairs: ``{"metrics": {
    reconstruction / mean face / random person: {...}}, "rows": grid rows, "n"}``; the judged result is cached
    (keyed by the attacker file, the pairs and everything that picks the thresholds)."""
    import json

    from faceveil.bench.privacy.figures import visualise_held
    from faceveil.bench.privacy.judging import EVAL_VERSION, sar_config, score_reconstructions
    from faceveil.bench.privacy.leaks import HELD_SALT, LEAK_BATCH, file_stamp, leak_fn, leak_part
    from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute
    from faceveil.data.align import to_tensor
    from faceveil.data.chips import resize
    from faceveil.data.datasets import LFW

    tm = threat()
    profile = ctx.bench_profile.attack_profile
    seed, data = ctx.seed, ctx.data
    key = config_hash(file_stamp(attacker_path), attack.config(), defense.config(), asdict(tm), asdict(budget), ev.a, ev.b,
                      seed, str(data_dir(data)), EVAL_VERSION, sar_config(profile), JUDGE_VERSION)
    path = cache_dir("evals") / f"facemix-celeba-{defense.name}-{key}.pt"

    def compute() -> dict:
        crop = defense.recognizer.crop
        chips_a, chips_b = _files_chips(data, ev.a, crop), _files_chips(data, ev.b, crop)
        x_a = to_tensor(chips_a)
        targets = resize(x_a, budget.target_size)
        leak = leak_fn(defense, tm)
        grid = grid_positions(ev.identity)
        recon, held = [], {}
        for i in range(-(-len(chips_a) // LEAK_BATCH)):
            h = leak_part(leak, chips_a, seed + 1, HELD_SALT + CELEBA_HELD_SALT, i)
            recon.append(attack.attack(h, batch_size=LEAK_BATCH))
            held |= {int(k): h[int(k) - i * LEAK_BATCH].clone() for k in grid if 0 <= int(k) - i * LEAK_BATCH < len(h)}
        recon = torch.cat(recon)
        # the targets' embeddings are the same for every protection's cell (memoised and cached on disk)
        tkey = ("facemix-celeba", str(data_dir(data)), crop, budget.target_size, ev.a, ev.b, VERSION)
        metrics, how = score_reconstructions(recon, x_a, to_tensor(chips_b), ev.identity, defense.recognizer, crop,
                                             budget, LFW(data), data, profile, seed, tkey, ctx.progress)
        result = {"metrics": metrics, "n": len(ev.a), "identities": len(set(ev.identity)),
                  "judge": {"cos": how["judge"], "independent": how["independent"]}}
        held_grid = torch.stack([held[int(k)] for k in grid])
        rows = [targets[grid], visualise_held(held_grid, budget.target_size), recon[grid]]
        return {"result": json.dumps(result), "rows": rows}

    cached = load_or_compute(path, compute, force=ctx.force)
    out = json.loads(cached["result"])
    out["rows"] = list(cached["rows"])
    return out


# ---------------------------------------------------------------------------------------------
# Attribute utility
# ---------------------------------------------------------------------------------------------


def labelled_images(data=None):
    """The CelebA-aligned images with attribute labels (and a detected face): ``(dataset subset, chips)``."""
    from faceveil.data.align import STATUS_FALLBACK
    from faceveil.data.datasets import celeba
    from faceveil.models import deployed_recognizer

    ds = celeba(data, "aligned")
    known = np.all([v != 0 for v in ds.attributes.values()], axis=0) if ds.attributes else np.zeros(len(ds), bool)
    sub = ds.subset(np.flatnonzero(known))
    chips, status = sub.chips(deployed_recognizer().crop, progress=False)
    ok = status != STATUS_FALLBACK
    return sub.subset(np.flatnonzero(ok)), chips[ok]


def protected_features(defense: Defense, files: list[str], chips: np.ndarray, ctx: ExperimentContext) -> np.ndarray:
    """The deployed recogniser's embeddings of ``chips`` protected once each by ``defense`` (seeded per batch of
    64), cached."""
    from faceveil.bench.privacy.judging import embed_images
    from faceveil.config import cache_dir, config_hash, data_dir, load_or_compute
    from faceveil.data.align import to_tensor
    from faceveil.keys import research_generator
    from faceveil.models.embed import model_fingerprint

    rec = defense.recognizer
    key = config_hash(defense.config(), files, ctx.seed, str(data_dir(ctx.data)), str(rec.crop), model_fingerprint(rec),
                      VERSION, "attributes")
    path = cache_dir("embeddings") / f"facemix-attr-{defense.name}-{key}.pt"

    def compute() -> torch.Tensor:
        out = []
        for i, s in enumerate(range(0, len(chips), 64)):
            x = to_tensor(chips[s : s + 64])
            with torch.no_grad():
                p = defense.protect(x, research_generator(ctx.seed, i, ATTR_SALT)).float()
            out.append(embed_images(rec, p, rec.crop))
        return torch.cat(out)

    return load_or_compute(path, compute, force=ctx.force).double().numpy()


def attribute_utility(ctx: ExperimentContext) -> dict:
    """Linear-probe attribute accuracy on protected CelebA images, identity-disjoint folds (module docstring)."""
    from faceveil.metrics.attributes import identity_folds, probe_accuracy

    sub, chips = labelled_images(ctx.data)
    labels = {a: sub.attributes[a] > 0 for a in ATTRIBUTES}
    chosen = [a for a in ATTRIBUTES if min(labels[a].mean(), 1 - labels[a].mean()) >= MIN_MINORITY]
    folds = identity_folds(sub.labels, mix_budget(ctx).probe_folds, ctx.seed)
    out: dict = {"images": len(sub), "identities": int(len(np.unique(sub.labels))), "folds": int(folds.max() + 1),
                 "attributes": chosen, "dropped": {a: float(labels[a].mean()) for a in ATTRIBUTES if a not in chosen},
                 "positive": {a: float(labels[a].mean()) for a in chosen}, "protections": {}}
    for label, d in protections("celeba", ctx.data):
        f = protected_features(d, sub.files, chips, ctx)
        res = {a: asdict(probe_accuracy(f, labels[a], folds)) for a in chosen}
        out["protections"][label] = res
    return out


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def _row(m: dict) -> dict:
    keys = ("SSIM", "PSNR", "MSE", "COS", "SRRA_pair", "SAR_II@1e-3", "SAR_I@1e-3", "judge_SAR_II@1e-3", "closer_to_own")
    return {k: m.get(k) for k in keys}


def reconstruction(ctx: ExperimentContext, dataset: str, data: dict) -> list:
    """The cgan cells of ``dataset`` (``data[dataset]`` filled); the grid rows ``[(label, images)]``."""
    from faceveil.bench.privacy import run_attack

    budget = attack_budget(ctx)
    out = data[dataset] = {"cells": {}, "baselines": {}}
    rows: list = []
    heldout = ev = None
    if dataset == "celeba":
        heldout = heldout_identities(ctx.data)
        mb = mix_budget(ctx)
        ev = celeba_eval(ctx.data, heldout, mb.celeba_ids, mb.celeba_per_id, ctx.seed)
        out["heldout_identities"] = len(heldout)
    for label, d in protections(dataset, ctx.data):
        if dataset == "lfw":
            r, err = attempt(run_attack, d, ATTACK, threat(), ctx.attack_ctx(ctx.cells()), budget=budget,
                             attack_kwargs=attack_kwargs(ctx), return_images=True)
            if r:
                imgs = r.pop("images")
                grid = [imgs["original"], imgs["held"], imgs["reconstruction"]]
                res = {"metrics": r["metrics"], "n": r["eval"]["n"], "judge": r["judge"]["cos"],
                       "train_log": r.get("train_log"), "cell_grid": Path(r["grid"]).name}
        else:
            def one(d=d):
                attack, path = celeba_attacker(d, budget, ctx, heldout)
                j = judge_celeba(attack, path, d, budget, ev, ctx)
                return j | {"train_log": {k: v for k, v in asdict(attack.log).items() if k != "losses"}}

            r, err = attempt(one)
            if r:
                grid = r.pop("rows")
                res = {"metrics": r["metrics"], "n": r["n"], "judge": r["judge"]["cos"], "train_log": r["train_log"],
                       "identities": r["identities"]}
        if err:
            out["cells"][label] = {"error": err}
            continue
        out["cells"][label] = {"defense": d.config(), "n": res["n"], "judge": res["judge"],
                               **{k: v for k, v in res.items() if k in ("train_log", "cell_grid", "identities")},
                               "reconstruction": _row(res["metrics"]["reconstruction"])}
        for who in ("random person", "mean face"):
            out["baselines"].setdefault(who, _row(res["metrics"][who]))
        if not rows:
            rows.append(("original (target)", grid[0]))
        if label != "unprotected":
            rows.append((f"{label}: protected", grid[1]))
        rows.append((f"{label}: cgan reconstruction", grid[2]))
    return rows


def _grid(rows: list, path: Path) -> Path | None:
    from faceveil.bench.privacy import image_grid

    if not rows:
        return None
    n = min(len(r[1]) for r in rows)
    # the grid's bitmap font has no σ or ×
    labels = [r[0].replace("σ=", "sigma ").replace("×", "x") for r in rows]
    return image_grid([r[1][:n] for r in rows], path, labels=labels, label_width=200)


def run(ctx: ExperimentContext) -> dict:
    out_dir = Path(ctx.out_dir)
    budget = attack_budget(ctx)
    data: dict = {"budget": asdict(mix_budget(ctx)), "attack_budget": asdict(budget), "profile": ctx.profile,
                  "bench_profile": ctx.bench_profile.name, "seed": ctx.seed, "errors": {}}
    figs = []
    for ds in DATASETS:
        rows, err = attempt(reconstruction, ctx, ds, data)
        if err:
            data["errors"][f"{ds} reconstruction"] = err
            continue
        g = _grid(rows, out_dir / f"facemix-grid-{ds}.png")
        if g:
            figs.append(g)
            data[ds]["grid"] = g.name
    attrs, err = attempt(attribute_utility, ctx)
    data["attributes"] = attrs
    if err:
        data["errors"]["attributes"] = err
    write_json_atomic(out_dir / "facemix.json", data, indent=2, default=str)
    return {"markdown": markdown(data), "data": data, "figures": [str(f) for f in figs]}


def _f(v, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def _p(v) -> str:
    return "—" if v is None else pct(v)


def markdown(data: dict, prefix: str = "") -> str:
    """The experiment's section (figures linked as ``prefix`` + file name)."""
    ab = data["attack_budget"]
    md = [f"FaceMix's paper experiment (profile {data['profile']}, bench profile {data['bench_profile']}, seed "
          f"{data['seed']}): a `{ATTACK}` (pix2pix) attacker per protection, trained on the attacker's public faces "
          f"protected by his own client ({ab['train_images'] or 'all'} faces, {ab['max_steps'] or ab['epochs']} "
          f"{'steps' if ab['max_steps'] else 'epochs'} of {ab['batch_size']}, {ab['target_size']} px, Adam lr "
          f"{data['budget']['cgan_lr'] or 2e-4:g}), channel leakage. "
          "noise: N(0, σ=8 grey levels) = 8/255 on [0, 1] images; blur: k×k box (mean) filter on the 150-px dlib "
          "chip, reflect borders (8×8 for CelebA, 16×16 for LFW, the paper's kernels).", ""]
    heads = ["protection", "n", "SSIM↓", "PSNR↓", "COS↓", "SAR II @1e-3 %↓", "judge SAR II @1e-3 %↓", "SRRA pair %↓",
             "closer-to-own %↓"]
    for ds in DATASETS:
        d = data.get(ds)
        if not d:
            continue
        rows = []
        for label, c in d["cells"].items():
            if "error" in c:
                rows.append([label, f"FAILED: {c['error']}", "", "", "", "", "", "", ""])
                continue
            m = c["reconstruction"]
            rows.append([label, c["n"], _f(m["SSIM"]), _f(m["PSNR"], "{:.2f}"), _f(m["COS"]), _p(m["SAR_II@1e-3"]),
                         _p(m["judge_SAR_II@1e-3"]), _p(m["SRRA_pair"]), _p(m["closer_to_own"])])
        for who, m in d["baselines"].items():
            rows.append([f"*baseline: {who}*", "", _f(m["SSIM"]), _f(m["PSNR"], "{:.2f}"), _f(m["COS"]),
                         _p(m["SAR_II@1e-3"]), _p(m["judge_SAR_II@1e-3"]), _p(m["SRRA_pair"]), _p(m["closer_to_own"])])
        if ds == "lfw":
            title = "LFW targets (pairs.txt same-pairs; the bench's cgan cells)"
        else:
            cell = next((c for c in d["cells"].values() if "identities" in c), {})
            title = (f"CelebA targets ({cell.get('identities', '?')} of the {d.get('heldout_identities', '?')} held-out "
                     "identities; pairs of two different images; attackers trained without any image of a held-out "
                     "identity)")
        md += [f"### Figs. 1-4 analogue: {title}", "", md_table(heads, rows), ""]
        if d.get("grid"):
            md += [f"![FaceMix reconstructions, {ds}]({prefix}{d['grid']})", ""]
    md += ["SAR: the reconstruction of image a accepted against image b of the same person (type II) at the FMR "
           "1e-3 threshold of the deployed dlib ResNet, or of the independent judge, both fitted on LFW impostor "
           "pairs; COS: the judge's centred cosine to the target; closer-to-own: closer (dlib) to its own target "
           "than to a random other target (50 % = no identity information). Baselines: another person's image and "
           "the attacker's mean face, judged the same way.", ""]
    a = data.get("attributes")
    if a:
        chosen = a["attributes"]
        rows = []
        for label, res in a["protections"].items():
            accs = [res[x]["accuracy"] for x in chosen]
            bal = [res[x]["balanced_accuracy"] for x in chosen]
            rows.append([label, *(pct(v) for v in accs), pct(float(np.mean(accs))), pct(float(np.mean(bal)))])
        first = next(iter(a["protections"].values()))
        maj = [first[x]["majority"] for x in chosen]
        rows.append(["*majority class*", *(pct(v) for v in maj), pct(float(np.mean(maj))), "50.00"])
        md += ["### Attribute utility (FaceMix's cloud task): linear probe on protected CelebA images", "",
               md_table(["protection", *(f"{x} %" for x in chosen), "mean %", "mean balanced %"], rows), "",
               f"{a['images']} labelled CelebA-aligned images of {a['identities']} identities, each protected once "
               "(seeded; CelebA blur 8×8), embedded by the frozen deployed dlib ResNet (128-D); L2 logistic regression "
               f"(C = 1, standardised features) trained on protected images of some identities and tested on "
               f"protected images of the others ({a['folds']} identity-disjoint folds; every image predicted once). "
               "Majority class: the training fold's majority predicted for every test image; balanced: the mean of the "
               "accuracies on positives and on negatives (50 % for any constant answer). Attributes kept when "
               f"their minority class is ≥ {100 * MIN_MINORITY:.0f} % of the images (positives: "
               + ", ".join(f"{x} {100 * v:.0f} %" for x, v in a["positive"].items()) + "; left out: "
               + ", ".join(f"{x} {100 * v:.0f} %" for x, v in a["dropped"].items()) + ").", ""]
    md += ["What is faceveil's and not the paper's: the paper describes the mixing scheme without fixing its "
           "parameters, so the FaceMix defense's choices are faceveil's own (see `faceveil.defenses.facemix`): k = 3 "
           "faces per mix (the private face and 2 distinct public faces), the private face's weight drawn from "
           "U[0.6, 0.8), the remaining weight split among the public faces by a flat Dirichlet, fresh every call, "
           "and a public pool of 256 CelebA-aligned chips (seed 0); the mix is a convex combination in [0, 1] pixel "
           "space. The attacker (pix2pix at CPU widths), the CelebA hold-out and the frozen-feature attribute probe "
           "are this experiment's stand-ins for the paper's GAN attacker and cloud classifier.", "",
           f"Commands: `faceveil bench --profile {data['bench_profile']} --defenses facemix` (the bench's facemix cells, "
           "then this experiment), or this experiment alone: "
           f"`python -m faceveil.bench.experiments.facemix --profile {data['profile']} --out DIR`.", ""]
    if data["errors"]:
        md += ["Errors: " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items()), ""]
    return "\n".join(md)


if __name__ != "__main__":  # run as a script, the package import below registers it
    EXPERIMENTS.register("facemix")(run)


def main() -> None:
    """Run the experiment alone: ``python -m faceveil.bench.experiments.facemix --profile ci --out DIR``."""
    from faceveil.bench.plan import BENCH_PROFILES

    ap = experiment_parser(__doc__.split("\n\n")[0], [p for p in BENCH_PROFILES if p in MIX_BUDGETS],
                           "results/facemix")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = experiment_context(args.profile, args.out, args.data_dir, args.seed, args.force)
    r = run(ctx)
    write_text_atomic(args.out / "facemix.md", f"# FaceMix experiment ({args.profile})\n\n" + r["markdown"] + "\n")
    print(r["markdown"])


if __name__ == "__main__":
    from faceveil.bench.experiments import facemix as _module

    _module.main()


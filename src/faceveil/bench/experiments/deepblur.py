"""DeepBlur's paper tables (Li & Choi, arXiv:2104.02655), measured with faceveil's CPU stand-ins.

- Table 1 analogue (image quality and identity change): SSIM and MS-SSIM between each original
  chip and its obfuscation, and an identity distance: the Frechet distance between the Gaussian
  fits of an *independent* recogniser's embeddings (faceres, 1024-D; dlib if faceres is missing)
  of the originals and of the obfuscated images. The paper's FID uses Inception-v3 features, whose
  ImageNet weights cannot be installed here; this is FID computed on face-embedding space instead
  (so it measures identity shift, not only image realism), with the mean per-face cosine of the
  centred embeddings beside it.
- Table 2 analogue (re-identification, :mod:`faceveil.attacks.reid`): CelebA aligned, ``n_ids``
  identities x ``per_id`` images split 7/1/2 (the paper: 100 x 10), scenarios T1 / T2 / T3,
  attackers VGG-style and ResNet-18 classifiers trained from scratch (CPU budget) and the
  "commercial" stand-ins: dlib and faceres embeddings with a nearest-centroid or linear classifier.

Methods: blurring, pixelation, masking and AdvNoise (the project's baselines at their defaults)
and DeepBlur at several sigma from ONE latent search per image. Every stage (latents, obfuscated
chips, embeddings) is cached per identity (:class:`Blocks`) in ``cache_dir("deepblur")``; since
:func:`~faceveil.attacks.reid.make_split` is nested, the quick profile's 50 identities are the first
50 of the paper profile's 100 and their work is shared (an interrupted run resumes block by block).

Profiles (:data:`EXPERIMENT_PROFILES`): ``ci`` 5x10; ``quick`` 50x10 (dlib attackers; faceres as the
Table 1 judge on 20 identities); ``paper`` 100x10 (dlib and faceres attackers); ``celeba200`` 200x30
(21/3/6). ``faceveil bench --profile full`` runs ``paper`` then ``celeba200`` (:data:`BENCH_RUNS`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faceveil.attacks.reid import ReidBudget, ReidSplit, cnn_attack, embedding_attack, make_split
from faceveil.bench.experiments.common import ExperimentContext, md_table
from faceveil.bench.plan import EXPERIMENTS, SETTINGS, Setting
from faceveil.config import cache_dir, config_hash, data_dir
from faceveil.defenses import Defense, get_defense
from faceveil.models.base import CropSpec
from faceveil.storage import ensure_dir, load_cache, save_torch, torch_load, write_json_atomic, write_text_atomic

CHIP = CropSpec(150, 0.25)

SETTINGS["deepblur"] = [
    # At ~0.5-0.9 s per face for the latent search the generic cells run on capped sets (``setting_sizes``:
    # ~270 faces per set at the quick profile) with the frozen server only; the paper's privacy
    # evaluation (re-identification T1-T3) is this module's experiment.
    Setting("DeepBlur σ=2 (feature space, L-BFGS x10)", "deepblur", {"sigma": 2.0}, utility_servers=("frozen",)),
]

#: numbers quoted from the paper (Table 2, CelebA 100 x 10, VGG attacker)
PAPER_T2 = {("original", "vgg", "T1"): 0.208, ("deepblur σ=1", "vgg", "T1"): 0.016}


#: row label prefix of the literal eq. 2 (reflect border) rows
REFLECT_PREFIX = "deepblur reflect σ="
#: blur levels of the sigma grid figure (0 = the plain inversion, 100 = the average face)
GRID_SIGMAS = (0.0, 0.5, 1.0, 2.0, 5.0, 100.0)


@dataclass(frozen=True)
class DeepBlurExperiment:
    """What one run measures."""

    n_ids: int = 100
    per_id: int = 10
    split: tuple[int, int, int] = (7, 1, 2)
    sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
    #: sigmas also measured with the literal eq. 2 (``border="reflect"``), from the same latents
    reflect_sigmas: tuple[float, ...] = (2.0, 5.0)
    deepblur: dict = field(default_factory=dict)  # DeepBlur parameters besides sigma (and border)
    baselines: tuple[str, ...] = ("blur", "pixelate", "mask", "advnoise")
    cnn_archs: tuple[str, ...] = ("vgg", "resnet18")
    cnn_budget: ReidBudget = ReidBudget()
    embedders: tuple[str, ...] = ("dlib", "faceres")
    classifiers: tuple[str, ...] = ("centroid", "linear")
    judge: str = "faceres"
    table1_ids: int | None = None  # Table 1 on the first identities only (None: all); the judge is the slow part
    seed: int = 0


#: CPU budget of the from-scratch attackers: 32x32 inputs, width 16 (a 64x64 / width-32 net
#: manages only 2-5 epochs in a minute here)
CNN_CPU = ReidBudget(epochs=40, max_seconds=60, size=32, width=16, batch_size=32, lr=3e-3)

EXPERIMENT_PROFILES: dict[str, DeepBlurExperiment] = {
    "ci": DeepBlurExperiment(n_ids=5, per_id=10, sigmas=(1.0, 2.0), reflect_sigmas=(2.0,),
                             cnn_budget=replace(CNN_CPU, epochs=5, max_seconds=20),
                             deepblur={"steps": 3}, baselines=("blur", "pixelate", "mask"), embedders=("dlib",), judge="dlib"),
    # ~40-60 min on one (shared) CPU thread from an empty cache; faceres (~0.25-0.5 s/face) only as the
    # Table 1 judge on the first 20 identities. Its identities are the first 50 of "paper" (caches shared).
    "quick": DeepBlurExperiment(n_ids=50, per_id=10, cnn_budget=replace(CNN_CPU, epochs=30, max_seconds=40), embedders=("dlib",),
                                table1_ids=20),
    # the paper's CelebA subset: 100 identities x 10 images, 7/1/2
    "paper": DeepBlurExperiment(n_ids=100, per_id=10, cnn_budget=CNN_CPU),
    # the whole CelebA identity set of the paper (200 x 30; here: every image of data/celeba aligned)
    "celeba200": DeepBlurExperiment(n_ids=200, per_id=30, split=(21, 3, 6), cnn_budget=replace(CNN_CPU, max_seconds=300)),
}
#: what ``faceveil bench --profile P`` runs (in order)
BENCH_RUNS = {"ci": ("ci",), "quick": ("quick",), "full": ("paper", "celeba200")}


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussian fits of two embedding sets (the FID formula,
    ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``), in float64."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    ca, cb = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------------------------
# Cached stages
# ---------------------------------------------------------------------------------------------


def _files_key(files: list[str], root: str) -> str:
    return config_hash(files, root)


def _cache(kind: str, *parts) -> Path:
    return cache_dir("deepblur") / f"{kind}-{config_hash(*parts)}"


@dataclass
class Blocks:
    """The image set cut into per-identity blocks; every cached stage is stored per block, keyed by
    the block's files, so nested subsets (:func:`~faceveil.attacks.reid.make_split`: the quick
    profile's identities are a prefix of the full profile's) share their work."""

    index: list[np.ndarray]  # positions into the image set, one array per identity
    keys: list[str]  # content key per block (its files and the data root)
    seeds: list[int]  # per-block randomness index (the source identity label)

    @classmethod
    def per_identity(cls, files: list[str], labels: np.ndarray, source_labels: np.ndarray, root: str) -> Blocks:
        index = [np.flatnonzero(labels == k) for k in np.unique(labels)]
        return cls(index, [_files_key([files[i] for i in b], root) for b in index], [int(source_labels[b[0]]) for b in index])

    def head(self, k: int) -> Blocks:
        """The first ``k`` blocks (they must cover the first positions: make_split lays identities out in order)."""
        n = sum(len(b) for b in self.index[:k])
        if not np.array_equal(np.sort(np.concatenate(self.index[:k])), np.arange(n)):
            raise ValueError("blocks are not laid out in order")
        return Blocks(self.index[:k], self.keys[:k], self.seeds[:k])

    def map(self, kind: str, parts: tuple, x: Tensor, fn, desc: str = "", progress: bool = True) -> tuple[Tensor, float, list[dict]]:
        """``fn(x_block, block_seed) -> (tensor [n,...], extra dict)`` per block, cached as
        ``{kind}-hash(parts, block key).pt``. Returns the tensors in image order, the mean ms per
        image (as measured when each block was computed) and the per-block extras."""
        from tqdm import tqdm

        outs, extras, ms_total = [None] * len(self.index), [], 0.0
        for b, (blk, key) in enumerate(tqdm(list(zip(self.index, self.keys, strict=True)), desc=desc, disable=not progress,
                                            leave=False)):
            path = _cache(kind, *parts, key).with_suffix(".pt")
            if (st := load_cache(path, torch_load)) is None:
                xb = x[torch.as_tensor(blk)]
                t0 = time.perf_counter()
                y, extra = fn(_f(xb), self.seeds[b])
                st = {"y": y, "ms": 1000 * (time.perf_counter() - t0) / len(blk), "extra": extra}
                save_torch(path, st)
            outs[b] = st["y"]
            extras.append(st.get("extra", {}))
            ms_total += float(st["ms"]) * len(blk)
        first = outs[0]
        y = torch.empty(len(x), *first.shape[1:], dtype=first.dtype)
        for blk, o in zip(self.index, outs, strict=True):
            y[torch.as_tensor(blk)] = o
        return y, ms_total / max(1, len(x)), extras


def deepblur_latents(d, x: Tensor, blocks: Blocks, progress: bool = True) -> tuple[Tensor, float, Tensor]:
    """Latents of ``x`` (cached per block by the inversion config), ms per face, per-face search loss."""

    def fn(xb: Tensor, _seed: int) -> tuple[Tensor, dict]:
        w = d.invert(xb)
        return w, {"loss": d.inversion_loss(xb, w)}

    w, ms, extras = blocks.map("latents", (d.inversion_config(), d.gen.source), x, fn, "DeepBlur latent search", progress)
    loss = torch.empty(len(x))
    for blk, e in zip(blocks.index, extras, strict=True):
        loss[torch.as_tensor(blk)] = e["loss"]
    return w, ms, loss


def protect_cached(defense: Defense, x: Tensor, blocks: Blocks, seed: int, progress: bool = True) -> tuple[Tensor, float]:
    """Obfuscated chips (uint8 ``[N,3,S,S]``, cached per block) and ms per face of a baseline defense."""
    from faceveil.keys import research_generator

    def fn(xb: Tensor, bseed: int) -> tuple[Tensor, dict]:
        with torch.set_grad_enabled(defense.needs_grad_to_protect):
            y = defense.protect(xb, research_generator(seed, bseed, 31)).detach()
        return _u8(y), {}

    return blocks.map("protected", (defense.config(), seed), x, fn, f"protecting ({defense.name})", progress)[:2]


def embeddings_cached(model_name: str, x: Tensor, blocks: Blocks, method_key: str, progress: bool = False) -> Tensor:
    """Embeddings by a registered recogniser of chips in :data:`CHIP` geometry (cached per block;
    ``method_key`` names what ``x`` is: the originals or one obfuscation)."""
    from faceveil.bench.privacy import embed_images
    from faceveil.models import get_recognizer
    from faceveil.models.embed import model_fingerprint

    model = get_recognizer(model_name)
    e, _, _ = blocks.map("emb", (model_name, model_fingerprint(model), method_key), x,
                         lambda xb, _s: (embed_images(model, xb, CHIP), {}), f"embedding ({model_name})", progress)
    return e


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def obfuscations(cfg: DeepBlurExperiment, x: Tensor, blocks: Blocks, progress: bool = True) -> tuple[dict[str, Tensor], dict, tuple]:
    """Every method's obfuscated chips ``{label: uint8 [N,3,150,150]}``, per-method info (config,
    ms/face) and ``(the DeepBlur defense, its latents)``."""
    out: dict[str, Tensor] = {}
    info: dict[str, dict] = {}
    for name in cfg.baselines:
        d = get_defense(name)
        t, ms = protect_cached(d, x, blocks, cfg.seed, progress)
        out[name], info[name] = t, {"config": d.config(), "ms_per_face": ms, "key": config_hash(d.config(), cfg.seed)}
    db = get_defense("deepblur", **cfg.deepblur)
    w, ms, loss = deepblur_latents(db, x, blocks, progress)
    # one latent search for every sigma and both borders (the inversion does not depend on either): the default
    # average border, and the literal eq. 2 with mirrored borders
    dbr = get_defense("deepblur", **{**cfg.deepblur, "border": "reflect"})
    for d, sigmas, prefix, note in (
            (db, cfg.sigmas, "deepblur σ=", "one latent search shared by every sigma"),
            (dbr, cfg.reflect_sigmas, REFLECT_PREFIX, "the literal eq. 2 (border reflect); latents shared with the average border")):
        for s in sigmas:
            label = f"{prefix}{s:g}"
            out[label] = torch.cat([_u8(d.protect_sigmas(_f(x[i : i + 64]), [s], w[i : i + 64])[float(s)])
                                    for i in range(0, len(x), 64)])
            conf = d.config() | {"sigma": float(s)}
            info[label] = {"config": conf, "ms_per_face": ms, "key": config_hash(conf, db.gen.source), "note": note}
    with torch.no_grad():
        loss0 = db.inversion_loss(_f(x[:16]), db.average_latent().expand(min(16, len(x)), *w.shape[1:]))
    info["deepblur inversion"] = {"loss_mean": float(loss.mean()), "loss_at_average_face_first16": float(loss0.mean()),
                                  "ms_per_face": ms, "generator": db.gen.source}
    return out, info, (db, w)


def table1(cfg: DeepBlurExperiment, x: Tensor, obf: dict[str, Tensor], blocks: Blocks, info: dict) -> tuple[dict, str, bool]:
    """SSIM, MS-SSIM, embedding-FID and mean centred cosine per method."""
    from faceveil.bench.privacy import cos_judge
    from faceveil.metrics.image import ms_ssim, ssim
    from faceveil.models import get_recognizer

    if cfg.table1_ids is not None and cfg.table1_ids < len(blocks.index):
        blocks = blocks.head(cfg.table1_ids)
        n = sum(len(b) for b in blocks.index)
        x, obf = x[:n], {k: v[:n] for k, v in obf.items()}
    judge_name = cfg.judge
    independent = judge_name != "dlib"  # the deployed recogniser (and DeepBlur's search loss)
    try:
        get_recognizer(judge_name)
    except Exception:
        judge, independent = cos_judge()
        judge_name = judge.name
    e0 = embeddings_cached(judge_name, x, blocks, "original")
    centre = e0.mean(0)
    rows: dict[str, dict] = {}
    for label, t in obf.items():
        e = embeddings_cached(judge_name, t, blocks, info[label]["key"])
        cos = torch.nn.functional.cosine_similarity(e - centre, e0 - centre, dim=1)
        rows[label] = {
            "SSIM": float(torch.cat([ssim(_f(x[s : s + 64]), _f(t[s : s + 64]), 1.0) for s in range(0, len(x), 64)]).mean()),
            "MS-SSIM": float(torch.cat([ms_ssim(_f(x[s : s + 64]), _f(t[s : s + 64]), 1.0)
                                        for s in range(0, len(x), 64)]).mean()),
            "FID_emb": frechet_distance(e0, e),
            "cos_centred": float(cos.mean()),
        }
    return rows, judge_name, independent


def table2(cfg: DeepBlurExperiment, x: Tensor, obf: dict[str, Tensor], split: ReidSplit, blocks: Blocks, info: dict,
           progress: bool = True) -> dict:
    """Top-1 / top-5 per (method, attacker, scenario); ``original`` is the no-obfuscation baseline."""
    from tqdm import tqdm

    res: dict = {}
    t1_models: dict = {}
    emb0 = {m: e for m in cfg.embedders if (e := _try_emb(m, x, blocks)) is not None}
    methods = ["original", *obf]
    bar = tqdm(total=len(methods) * (len(cfg.cnn_archs) + len(emb0) * len(cfg.classifiers)), desc="re-identification",
               disable=not progress, leave=False)
    size = cfg.cnn_budget.size
    x_small = _small(x, size)
    # each trained classifier (minutes) is cached: the T1 model on originals (weights: every method's T1
    # reuses it) and each method's row (JSON, read back so fresh and cached rows are alike), keyed by the
    # images, the split, the budget and the method
    split_key = (blocks.keys, [split.train.tolist(), split.val.tolist(), split.test.tolist()], asdict(cfg.cnn_budget),
                 "reid-v1")
    for label in methods:
        t = x if label == "original" else obf[label]
        t_small = x_small if label == "original" else _small(t, size)
        res[label] = {}
        for arch in cfg.cnn_archs:
            def row(arch: str = arch, label: str = label, t_small: Tensor = t_small) -> dict:
                if arch not in t1_models:  # trained (or loaded) only when a row is computed
                    t1_models[arch] = _t1_model(arch, x_small, split, cfg, split_key)
                model0, t1_log = t1_models[arch]
                if label == "original":
                    acc, _, _ = cnn_attack(arch, x_small, x_small, split, "T1", cfg.cnn_budget, model=model0)
                    return {sc: acc for sc in ("T1", "T2", "T3")} | {"train_log": t1_log}
                r = {"T1": cnn_attack(arch, x_small, t_small, split, "T1", cfg.cnn_budget, model=model0)[0]}
                r["T2"], model, r["train_log"] = cnn_attack(arch, x_small, t_small, split, "T2", cfg.cnn_budget)
                r["T3"], _, _ = cnn_attack(arch, x_small, t_small, split, "T3", cfg.cnn_budget, model=model)
                return r

            method_key = "original" if label == "original" else info[label]["key"]
            path = _cache("reid", arch, method_key, *split_key).with_suffix(".json")
            if (r := load_cache(path, lambda p: json.loads(p.read_text()))) is None:
                r = json.loads(json.dumps(row(), default=str))
                write_json_atomic(path, r, checksum=True)
            res[label][arch] = r
            bar.update()
        for m, e0 in emb0.items():
            e = e0 if label == "original" else embeddings_cached(m, t, blocks, info[label]["key"])
            for kind in cfg.classifiers:
                res[label][f"{m}/{kind}"] = {sc: embedding_attack(e0, e, split, sc, kind) for sc in ("T1", "T2", "T3")}
                bar.update()
    bar.close()
    return res


def _t1_model(arch: str, x_small: Tensor, split: ReidSplit, cfg: DeepBlurExperiment, split_key: tuple):
    """The from-scratch classifier trained on original faces (T1) and its log, cached (weights + log)."""
    from faceveil.attacks.reid import make_cnn

    path = _cache("reid-t1", arch, *split_key).with_suffix(".pt")
    if (st := load_cache(path, torch_load, "trained re-identification model")) is not None:
        model = make_cnn(arch, split.n_ids, cfg.cnn_budget.width)
        model.load_state_dict(st["state"])
        return model.eval(), json.loads(st["log"])
    _, model, log = cnn_attack(arch, x_small, x_small, split, "T1", cfg.cnn_budget)
    save_torch(path, {"state": model.state_dict(), "log": json.dumps(log, default=str)})
    return model, log


def _f(t: Tensor) -> Tensor:
    """uint8 images -> float in [0,1] (float images pass through)."""
    return t.float().div_(255) if t.dtype == torch.uint8 else t


def _u8(t: Tensor) -> Tensor:
    return (t.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def _small(t: Tensor, size: int) -> Tensor:
    """Images (uint8 or float) -> float ``[N,3,size,size]`` (antialiased), in chunks."""
    from faceveil.attacks.reid import _resize

    return torch.cat([_resize(_f(t[s : s + 256]), size) for s in range(0, len(t), 256)])


def _try_emb(name: str, x: Tensor, blocks: Blocks) -> Tensor | None:
    try:
        return embeddings_cached(name, x, blocks, "original")
    except Exception:  # recogniser not installed: that attacker is skipped (reported as missing)
        return None


def run_experiment(cfg: DeepBlurExperiment, data=None, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Tables 1 and 2 on a CelebA-aligned subset; returns {"markdown", "data", "figures"}."""
    from faceveil.bench.privacy import image_grid
    from faceveil.data.datasets import celeba

    t_start = time.perf_counter()
    tag = f"{cfg.n_ids}x{cfg.per_id}"
    ds = celeba(data, "aligned")
    split = make_split(ds.labels, cfg.n_ids, cfg.per_id, cfg.split, cfg.seed)
    sub = ds.subset(split.index)
    chips, status = sub.chips(CHIP, progress=progress)
    x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).contiguous()  # uint8; floats per chunk
    blocks = Blocks.per_identity(sub.files, split.labels, np.asarray(sub.labels), str(data_dir(data)))
    obf, info, (db, w) = obfuscations(cfg, x, blocks, progress)
    t1, judge_name, independent = table1(cfg, x, obf, blocks, info)
    t2 = table2(cfg, x, obf, split, blocks, info, progress)
    n_table1 = cfg.per_id * min(cfg.table1_ids or split.n_ids, split.n_ids)
    figures = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        ensure_dir(out_dir)
        k = torch.as_tensor(split.test[:: max(1, len(split.test) // 8)][:8])
        figures.append(str(image_grid([_f(x[k])] + [_f(obf[m][k]) for m in obf], out_dir / f"deepblur_methods_{tag}.png")))
        by_sigma = db.protect_sigmas(_f(x[k]), list(GRID_SIGMAS), w[k])
        figures.append(str(image_grid([_f(x[k]), *by_sigma.values()], out_dir / f"deepblur_sigma_grid_{tag}.png")))
        dbr = get_defense("deepblur", **{**cfg.deepblur, "border": "reflect"})
        by_sigma = dbr.protect_sigmas(_f(x[k]), list(GRID_SIGMAS), w[k])
        figures.append(str(image_grid([_f(x[k]), *by_sigma.values()], out_dir / f"deepblur_sigma_grid_reflect_{tag}.png")))
    data_out = {
        "config": asdict(cfg) | {"cnn_budget": asdict(cfg.cnn_budget)},
        "dataset": {"name": "celeba-aligned", "images": len(x), "identities": split.n_ids, "train": len(split.train),
                    "val": len(split.val), "test": len(split.test), "fallback_alignments": int((status == 2).sum())},
        "methods": info, "table1": t1, "table1_images": n_table1, "table1_judge": {"name": judge_name, "independent": independent},
        "table2": t2,
        "wall_seconds": time.perf_counter() - t_start,
    }
    md = markdown(cfg, data_out)
    if figures:
        md += (f"\nFigures: `{Path(figures[0]).name}` (rows: original, then each method's obfuscation of 8 test faces) and "
               f"`{Path(figures[1]).name}` (rows: original, DeepBlur at sigma {', '.join(f'{v:g}' for v in GRID_SIGMAS)}; "
               "0 = the plain inversion, 100 = the average face) and "
               f"`{Path(figures[2]).name}` (the same with the literal eq. 2, border reflect).\n")
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / f"deepblur_experiment_{tag}.json", data_out, indent=2, default=str)
        write_text_atomic(Path(out_dir) / f"deepblur_experiment_{tag}.md", md)
    return {"markdown": md, "data": data_out, "figures": figures}


BORDER_NOTE = (
    "Borders: `deepblur σ=…` rows filter the latent's deviation from the average latent (border average, the "
    "default); `deepblur reflect σ=…` rows apply eq. 2 literally to the latent with mirrored borders. The paper's "
    "figures correspond to the average border: as σ grows its faces converge to one average face (Fig. 9), which "
    "only the average border gives (σ = 100: the same face for every input); with mirrored borders a large σ makes "
    "each channel of the 4x4 latent constant, which regenerates a face-less texture (the reflect sigma grid).")


def markdown(cfg: DeepBlurExperiment, d: dict) -> str:
    ds = d["dataset"]
    j = d["table1_judge"]
    rows = [[m, f"{v['SSIM']:.3f}", f"{v['MS-SSIM']:.3f}", f"{v['FID_emb']:.3f}", f"{v['cos_centred']:.3f}",
             f"{d['methods'][m]['ms_per_face']:.0f}"] for m, v in d["table1"].items()]
    n1 = d.get("table1_images", ds["images"])
    md = [f"### Table 1 analogue: image similarity and identity change (CelebA aligned, {n1} chips)", "",
          md_table(["method", "SSIM", "MS-SSIM", f"FID on {j['name']} embeddings", "cos (centred)", "ms/face"], rows), "",
          f"FID is computed on {j['name']} face embeddings ({'independent of' if j['independent'] else 'NOT independent of'} "
          "the deployed dlib model), not Inception-v3 features (ImageNet weights are unavailable): it measures the identity "
          "shift of the whole set. cos = mean cosine between centred embeddings of each original and its obfuscation.", "",
          BORDER_NOTE, ""]
    t2 = d["table2"]
    attackers = list(next(iter(t2.values())).keys())
    chance1, chance5 = 1 / ds["identities"], min(1.0, 5 / ds["identities"])
    for sc in ("T1", "T2", "T3"):
        rows = []
        for m, per in t2.items():
            row = [m]
            for a in attackers:
                v = per[a][sc]
                paper = PAPER_T2.get((m, a, sc))
                row.append(f"{v['top1']:.3f} / {v['top5']:.3f}" + (f" (paper {paper:.3f})" if paper is not None else ""))
            rows.append(row)
        md += [f"### Table 2 analogue, {sc}: top-1 / top-5 re-identification ({ds['identities']} identities, "
               f"train/val/test {ds['train']}/{ds['val']}/{ds['test']}; chance {chance1:.3f} / {chance5:.3f})", "",
               md_table(["method", *attackers], rows), ""]
    inv = d["methods"].get("deepblur inversion", {})
    md += [f"DeepBlur: {inv.get('generator', '?')}; mean search loss {inv.get('loss_mean', float('nan')):.3f} "
           f"(average face: {inv.get('loss_at_average_face_first16', float('nan')):.3f}); "
           f"{inv.get('ms_per_face', float('nan')):.0f} ms/face for the latent search. "
           f"CNN budget: {cfg.cnn_budget.epochs} epochs or {cfg.cnn_budget.max_seconds:g} s, width {cfg.cnn_budget.width}, "
           f"{cfg.cnn_budget.size}x{cfg.cnn_budget.size} inputs; epochs reached: {_epochs_reached(t2)}.", ""]
    return "\n".join(md)


def _epochs_reached(t2: dict) -> str:
    out = []
    for arch in ("vgg", "resnet18"):
        eps = [per[arch]["train_log"].get("epochs", 0) for per in t2.values() if arch in per and per[arch].get("train_log")]
        if eps:
            out.append(f"{arch} {min(eps)}-{max(eps)}")
    return ", ".join(out) or "n/a"


def run(ctx: ExperimentContext) -> dict:
    """Bench hook: the experiment(s) of the bench profile (:data:`BENCH_RUNS`: ci / quick / full =
    the paper's 100 x 10 subset, then the 200 x 30 set)."""
    out = {"markdown": "", "data": {}, "figures": []}
    for name in BENCH_RUNS.get(ctx.profile, ("quick",)):
        cfg = replace(EXPERIMENT_PROFILES[name], seed=ctx.seed)
        r = run_experiment(cfg, ctx.data, Path(ctx.out_dir), ctx.progress)
        out["markdown"] += f"## DeepBlur experiment: {name} ({cfg.n_ids} identities x {cfg.per_id} images)\n\n" + r["markdown"] + "\n"
        out["data"][name] = r["data"]
        out["figures"] += r["figures"]
    return out


EXPERIMENTS.register("deepblur")(run)

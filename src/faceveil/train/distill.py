"""Server adaptation by distillation: a student recogniser trained on PROTECTED inputs to reproduce
the frozen dlib ResNet's embeddings of the CLEAN images.

The papers train their server recognisers (ArcFace ResNet-50 on MS1M, 5.1 M images, GPUs) on
protected inputs; that is impossible on this CPU. The honest equivalent here: a student learns
``f(protect(x)) ~ teacher(x)`` with a cosine + MSE loss. The default student is the deployed
dlib ResNet itself, initialised from the teacher and fine-tuned (non-RGB inputs get a small
trainable input adapter, :class:`~faceveil.models.students.FinetuneStudent`); a from-scratch
IR-18-like network (``student="ir18"``) is the alternative. Training uses public faces (CelebA
aligned + wild + LFW identities absent from pairs.txt), fresh protection draws every epoch
(augmentation, and correct for stochastic defenses) and horizontal flips. Every accuracy is
reported against the *same-budget* student trained on clean images (:func:`clean_defense`), and
against the frozen dlib ResNet on clean input.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from faceveil.config import EpochCheckpoint, cache_dir, config_hash, write_atomically
from faceveil.data.align import to_tensor
from faceveil.data.datasets import public_chips
from faceveil.defenses.base import Defense
from faceveil.devices import autocast, module_device, on_device
from faceveil.models.base import Recognizer
from faceveil.models.embed import embed_chips, load_npz, model_fingerprint
from faceveil.models.students import FinetuneStudent, StudentNet, VectorStudent
from faceveil.storage import discard, load_cache, save_torch, torch_load


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 20
    max_seconds: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    width: int = 16
    input_size: int = 112
    train_images: int | None = None
    mse_weight: float = 1.0
    flip: bool = True
    fresh_draws: bool | None = None  # None: fresh draws unless protection is an optimisation
    student: str = "finetune"  # "finetune": dlib ResNet from the teacher's weights; "ir18": from scratch
    seed: int = 0


DISTILL_PROFILES: dict[str, DistillConfig] = {
    "ci": DistillConfig(epochs=1, max_seconds=60, train_images=512, batch_size=32, lr=1e-3),
    # fast: one epoch of 1,024 faces (64 steps of 16: half the activation memory of 32), bounded by steps, not time
    "fast": DistillConfig(epochs=1, max_seconds=900, train_images=1024, batch_size=16, lr=1e-3),
    "quick": DistillConfig(epochs=1, max_seconds=300, train_images=3000, batch_size=32, lr=1e-3),
    "full": DistillConfig(epochs=3, max_seconds=7200, batch_size=32, lr=1e-3),
}


def distill_config(profile: str, **overrides) -> DistillConfig:
    if profile not in DISTILL_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {sorted(DISTILL_PROFILES)}")
    return replace(DISTILL_PROFILES[profile], **overrides)


# ---------------------------------------------------------------------------------------------
# Public training data and teacher embeddings (cached)
# ---------------------------------------------------------------------------------------------


def teacher_embeddings(teacher: Recognizer, chips: np.ndarray, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Teacher embeddings of the chips and of their horizontal flips (cached by content)."""
    key = config_hash(model_fingerprint(teacher), len(chips), int(chips[:: max(1, len(chips) // 64)].astype(np.int64).sum()),
                      chips.shape)
    path = cache_dir("teacher") / f"{teacher.name}-{key}.npz"
    if (cached := load_cache(path, lambda p: load_npz(p, "orig", "flip"))) is not None:
        return torch.from_numpy(cached["orig"]), torch.from_numpy(cached["flip"])
    orig = embed_chips(teacher, chips, progress=progress)
    flip = embed_chips(teacher, np.ascontiguousarray(chips[:, :, ::-1]), progress=progress)
    write_atomically(path, lambda p: np.savez(p, orig=orig.numpy(), flip=flip.numpy()), checksum=True)
    return orig, flip


# ---------------------------------------------------------------------------------------------
# Student construction and training
# ---------------------------------------------------------------------------------------------


#: students this module builds; another ``DistillConfig.student`` name is asked of the defense
#: (``Defense.make_student(sample, cfg)``: AdvFace's offline server)
GENERIC_STUDENTS = ("finetune", "ir18")


def make_student(sample: Tensor, cfg: DistillConfig, emb_dim: int = 128, defense: Defense | None = None) -> nn.Module:
    """A student for inputs shaped like ``sample`` ([C,H,W] maps/images, or vectors); a defense-specific
    one when ``cfg.student`` names one the defense makes."""
    if cfg.student not in GENERIC_STUDENTS:
        if defense is None or not hasattr(defense, "make_student"):
            raise ValueError(f"student {cfg.student!r}: not a generic student ({', '.join(GENERIC_STUDENTS)}) and "
                             f"{getattr(defense, 'name', 'the defense')} makes none")
        return defense.make_student(sample, cfg)
    if sample.ndim == 3 and cfg.student == "finetune":
        return FinetuneStudent(in_ch=sample.shape[0], in_size=sample.shape[-1],
                               base=defense.recognizer.name if defense is not None else None)
    if sample.ndim == 3:
        return StudentNet(in_ch=sample.shape[0], width=cfg.width, emb_dim=emb_dim,
                          input_size=min(cfg.input_size, sample.shape[-1]))
    return VectorStudent(int(sample.numel()), emb_dim)


def distill_loss(s: Tensor, t: Tensor, mse_weight: float) -> Tensor:
    """Cosine distance + ``mse_weight`` x squared error to the teacher embeddings."""
    return (1 - F.cosine_similarity(s, t)).mean() + mse_weight * ((s - t) ** 2).sum(1).mean()


def _protected_batch(defense: Defense, x: Tensor, rng: torch.Generator) -> Tensor:
    with torch.set_grad_enabled(defense.needs_grad_to_protect):
        return defense.server_training_input(x, rng).detach().float()


def _lr_factor(step: int, total: int, elapsed: float, max_seconds: float | None, warmup: int = 5) -> float:
    """Linear warm-up over the first steps, then cosine decay over the training progress, where
    progress is whichever budget is further used up (steps or wall time): a time-bounded run on a
    busy CPU still anneals instead of stopping at its peak learning rate."""
    frac = step / total
    if max_seconds:
        frac = max(frac, elapsed / max_seconds)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _once_path(defense: Defense, cfg: DistillConfig, data, flip: bool) -> Path:
    from faceveil.config import data_dir

    key = config_hash(defense.config(), str(defense.recognizer.crop), cfg.train_images, cfg.seed, cfg.batch_size, flip,
                      str(data_dir(data)), "student-set-v1")
    return cache_dir("protected") / f"{defense.name}-student-{key}.pt"


def _protected_once(defense: Defense, chips: np.ndarray, cfg: DistillConfig, data, progress: bool) -> list[Tensor]:
    """One protection draw per image and per flip, for protection by optimisation (AdvNoise, DeepBlur,
    PMT, AdvFace: too slow to redraw every epoch); each batch with its own seeded draws. A slow client's
    sets (hours at the full profile) are cached batch by batch while they are made, so a stopped run
    resumes; :func:`adapted_server` removes them once the student is saved."""
    from faceveil.keys import research_generator

    bs, n = cfg.batch_size, -(-len(chips) // cfg.batch_size)
    out = []
    for flip in (False, True):
        def part(i: int, flip: bool = flip) -> Tensor:
            c = chips[i * bs : (i + 1) * bs]
            return _protected_batch(defense, to_tensor(c[:, :, ::-1].copy() if flip else c),
                                    research_generator(cfg.seed, i, 41 + flip))

        out.append(defense.protected_set(_once_path(defense, cfg, data, flip), n, part, progress, "protecting (once)",
                                         save=False))
    return out


def fresh_draws(defense: Defense, cfg: DistillConfig) -> bool:
    """Whether the student sees a fresh protection draw every epoch (default: unless protection is an
    optimisation, which is drawn once per image: :func:`_protected_once`)."""
    return cfg.fresh_draws if cfg.fresh_draws is not None else not defense.needs_grad_to_protect


def train_student(defense: Defense, cfg: DistillConfig, data=None, progress: bool = True, checkpoint: Path | None = None,
                  checkpoint_seconds: float = 300.0) -> tuple[nn.Module, dict]:
    """Distil the frozen recogniser into a student that reads ``defense``'s protected data. With
    ``checkpoint``, the training state (student, optimiser, RNGs, losses) is written there at the end
    of an epoch once ``checkpoint_seconds`` have passed, and a later call resumes from it (the resumed
    run is the uninterrupted one); the caller removes it once the student is saved."""
    teacher = defense.recognizer
    chips = public_chips(data, teacher.crop, cfg.train_images, cfg.seed, progress)
    t_orig, t_flip = teacher_embeddings(teacher, chips, progress)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    fresh = fresh_draws(defense, cfg)
    sample = _protected_batch(defense, to_tensor(chips[:2]), g)[0]
    student = on_device(make_student(sample, cfg, teacher.embedding_dim, defense))
    dev = module_device(student)
    cached = _protected_once(defense, chips, cfg, data, progress) if not fresh else None
    groups = student.param_groups(cfg.lr) if hasattr(student, "param_groups") else [{"params": list(student.parameters())}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    peak = [grp.get("lr", cfg.lr) for grp in groups]
    steps_per_epoch = len(chips) // cfg.batch_size
    total = max(2, cfg.epochs * steps_per_epoch)
    losses: list[float] = []
    step, start_epoch, done_seconds = 0, 0, 0.0
    ckpt = EpochCheckpoint(checkpoint, checkpoint_seconds)
    if (st := ckpt.load()) is not None:
        student.load_state_dict(st["student"])
        opt.load_state_dict(st["opt"])
        g.set_state(st["g"])
        losses, step, start_epoch, done_seconds = list(st["losses"]), int(st["step"]), int(st["epoch"]), float(st["seconds"])
    t0 = time.perf_counter() - done_seconds
    bar = tqdm(total=total, initial=step, desc=f"distilling student for {defense.name}", disable=not progress, leave=False)
    stop = False
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        student.train()
        perm = torch.randperm(len(chips), generator=g)
        for s in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            flip = torch.rand(len(idx), generator=g) < 0.5 if cfg.flip else torch.zeros(len(idx), dtype=torch.bool)
            if cached is not None:
                p = torch.where(flip.view(-1, *[1] * (cached[0].ndim - 1)), cached[1][idx], cached[0][idx])
            else:
                c = chips[idx.numpy()]
                fl = flip.numpy()
                c = np.where(fl[:, None, None, None], c[:, :, ::-1], c)
                p = _protected_batch(defense, to_tensor(c), g)
            target = torch.where(flip[:, None], t_flip[idx], t_orig[idx])
            for grp, lr in zip(opt.param_groups, peak, strict=True):
                grp["lr"] = lr * _lr_factor(step, total, time.perf_counter() - t0, cfg.max_seconds)
            with autocast(dev):  # --precision bf16: the student's forward pass
                out = student(p.to(dev, non_blocking=True))
            loss = distill_loss(out.float(), target.to(dev, non_blocking=True), cfg.mse_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch)
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                stop = True
                break
        if stop:
            break
        if epoch + 1 < cfg.epochs:
            ckpt.maybe_save(lambda e=epoch + 1, n=step: {"student": student.state_dict(), "opt": opt.state_dict(),
                                                         "g": g.get_state(), "losses": losses, "step": n, "epoch": e,
                                                         "seconds": time.perf_counter() - t0})
    bar.close()
    student = student.cpu().eval()  # servers and caches hold CPU weights
    k = max(1, min(20, len(losses) // 4))  # loss averaged over the first / last quarter (at most 20 steps)
    log = {"steps": step, "epochs_run": epoch + 1, "seconds": time.perf_counter() - t0, "images": len(chips),
           "first_loss": float(np.mean(losses[:k])) if losses else None,
           "final_loss": float(np.mean(losses[-k:])) if losses else None, "fresh_draws": fresh}
    return student, log


def student_key(defense: Defense, cfg: DistillConfig, data=None) -> str:
    from faceveil.config import data_dir

    # v3: one-draw sets (see _protected_once) take per-batch draws; that changes stochastic ones only
    version = "distill-v3" if defense.stochastic and not fresh_draws(defense, cfg) else "distill-v2"
    return config_hash(defense.config(), asdict(cfg), model_fingerprint(defense.recognizer), str(data_dir(data)), version)


def adapted_server(defense: Defense, profile: str = "quick", seed: int = 0, data=None, force: bool = False,
                   progress: bool = True, **overrides) -> nn.Module:
    """The distilled student for ``defense`` (trained once, cached by config hash)."""
    cfg = distill_config(profile, seed=seed, **overrides)
    key = student_key(defense, cfg, data)
    path = cache_dir("students") / f"{defense.name}-{key}.pt"
    if not force and (st := load_cache(path, torch_load, "trained student")) is not None:
        g = torch.Generator().manual_seed(0)
        s = defense.recognizer.input_size
        sample = _protected_batch(defense, torch.full((2, 3, s, s), 0.5), g)[0]
        student = make_student(sample, cfg, defense.recognizer.embedding_dim, defense)
        student.load_state_dict(st["state"])
        student.train_log = st["log"]  # type: ignore[attr-defined]
        return student.eval()
    ckpt = path.with_suffix(".ckpt")  # resumable: a full-profile student outlives a stopped process
    if force:
        discard(ckpt)
    student, log = train_student(defense, cfg, data, progress, checkpoint=ckpt)
    save_torch(path, {"state": student.state_dict(), "log": log, "config": asdict(cfg), "defense": defense.config()})
    discard(ckpt)
    for flip in (False, True):  # the slow client's one-draw training sets, kept only while training
        for part in cache_dir("protected").glob(f"{_once_path(defense, cfg, data, flip).stem}-part*.pt"):
            discard(part)
    student.train_log = log  # type: ignore[attr-defined]
    return student


def clean_defense(recognizer: Recognizer | None = None) -> Defense:
    """The unprotected image defense: its adapted server is the same-budget clean student."""
    from faceveil.defenses import get_defense

    return get_defense("none", transmit="image", recognizer=recognizer)

"""One Attack interface (ART-style: one base class per kind of attack), budgets and threat models.

- :class:`ReconstructionAttack`: learned feature/image -> face reconstruction. ``fit`` on (protected
  data, target image) pairs that the attacker builds himself with the black-box client, then
  ``attack(protected) -> images``. Networks are built lazily from the first batch's shape.
- :class:`OptimizationAttack`: white-box inversion, no training; ``attack`` optimises images.

Images are float32 ``[B,3,S,S]`` in [0,1], S = the target size (64 quick, 112 full).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from faceveil.config import EpochCheckpoint, cache_dir, config_hash
from faceveil.devices import autocast, module_device, on_device
from faceveil.errors import FaceveilDataError, FaceveilError
from faceveil.registry import Registry
from faceveil.storage import discard, load_cache, read_verified, save_torch, torch_load

ATTACKS: Registry[Attack] = Registry("attack", "faceveil.attacks")


def register_attack(name: str):
    def deco(cls):
        cls.name = name
        ATTACKS.register(name)(cls)
        return cls

    return deco


# ---------------------------------------------------------------------------------------------
# Threat model and budgets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker holds and knows; recorded with every result.

    - ``leakage``: "channel" (what the client transmits) or "database" (what the server stores);
    - ``knowledge``: "black-box client" (can protect any image he owns) or "white-box" (knows
      architecture, parameters and public constants of client and server; never per-sample
      randomness or secret keys);
    - ``attacker_data``: the public faces he trains on (identity-disjoint from the targets);
    - ``adaptive``: the attacker applies a defense-aware transform (``view``) first.
    """

    leakage: str = "channel"
    knowledge: str = "black-box client"
    attacker_data: str = "CelebA aligned + CelebA wild + LFW identities absent from pairs.txt"
    targets: str = "LFW images in pairs.txt"
    adaptive: bool = False
    view: str | None = None

    def __post_init__(self) -> None:
        if self.leakage not in ("channel", "database"):
            raise ValueError(f"leakage must be 'channel' or 'database', got {self.leakage!r}")
        if self.knowledge not in ("black-box client", "white-box"):
            raise ValueError(f"knowledge must be 'black-box client' or 'white-box', got {self.knowledge!r}")


@dataclass(frozen=True)
class Budget:
    """Training budget: stops at whichever of epochs / steps / seconds comes first. With ``max_steps``
    the run is defined by its steps (reproducible whatever the machine's load; ``max_seconds`` is only
    a guard, and the log says when it fired); without, the learning-rate schedule follows whichever
    of epochs or wall time is further used up, so a time-bounded run still anneals."""

    epochs: int = 10
    max_steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    target_size: int = 112
    train_images: int | None = None  # cap on public training images (None = all)
    eval_pairs: int | None = None  # cap on LFW same-pairs evaluated (None = all 3,000)
    whitebox_steps: int = 150  # optimisation steps of the white-box inversion


PROFILES: dict[str, Budget] = {
    # CI: a couple of minutes on 2 cores, tiny images
    "ci": Budget(epochs=3, max_seconds=60, batch_size=64, lr=3e-3, target_size=64, train_images=3000, eval_pairs=100,
                 whitebox_steps=60),
    # fast (the first report, `make run`): step-bounded (reproducible whatever the load), 80 steps of 32 on 1,000 faces
    # (slow clients' small sets: one step per epoch, 80 epochs); max_seconds only guards against a machine far slower
    # than two cores
    "fast": Budget(epochs=100, max_steps=80, max_seconds=600, batch_size=32, lr=3e-3, target_size=64, train_images=1000,
                   eval_pairs=50, whitebox_steps=60),
    # quick: 600 steps (dn ~0.15-0.45 s/step, cgan ~0.35 s/step on one core at 64 px: 1.5-4.5 min per attacker);
    # small training sets (slow clients) stop at 100 epochs
    "quick": Budget(epochs=100, max_steps=600, max_seconds=900, batch_size=64, lr=2e-3, target_size=64, train_images=None,
                    eval_pairs=300, whitebox_steps=150),
    # full: the benchmark
    "full": Budget(epochs=40, max_steps=4000, max_seconds=10800, batch_size=64, lr=1e-3, target_size=112,
                   train_images=None, eval_pairs=None, whitebox_steps=600),
}


def profile_budget(profile: str, **overrides) -> Budget:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {sorted(PROFILES)}")
    return replace(PROFILES[profile], **overrides)


# ---------------------------------------------------------------------------------------------
# Training data sources
# ---------------------------------------------------------------------------------------------


class PairSource:
    """(protected, target) training batches. ``protected`` is precomputed (one draw per image), or,
    with ``redraw``, produced afresh every epoch from the clean inputs (stochastic defenses)."""

    def __init__(self, targets: Tensor, protected: Tensor | None = None,
                 inputs: Tensor | None = None, redraw: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 seed: int = 0) -> None:
        if protected is None and (inputs is None or redraw is None):
            raise ValueError("give precomputed protected data, or inputs and a redraw function")
        n = len(targets)
        if protected is not None and len(protected) != n:
            raise ValueError(f"{len(protected)} protected samples for {n} targets")
        self.targets, self.protected, self.inputs, self.redraw, self.seed = targets, protected, inputs, redraw, seed

    def __len__(self) -> int:
        return len(self.targets)

    def sample_shape(self) -> tuple[int, ...]:
        if self.protected is not None:
            return tuple(self.protected.shape[1:])
        g = torch.Generator().manual_seed(self.seed)
        return tuple(self.redraw(self.inputs[:1], g).shape[1:])

    @property
    def redrawn(self) -> bool:
        """Whether every epoch draws new protected data (a stochastic defense) rather than repeating it."""
        return self.protected is None

    def batches(self, epoch: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``(protected, target)`` batches of one epoch, in the epoch's seeded order."""
        for p, t, _ in self.indexed_batches(epoch, batch_size):
            yield p, t

    def indexed_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """:meth:`batches` with the sample indices of each batch (e.g. to hold out a validation split)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        perm = torch.randperm(len(self), generator=g)
        for s in range(0, len(perm), batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2:
                continue
            if self.protected is not None:
                p = self.protected[idx]
            else:
                with torch.no_grad():
                    p = self.redraw(self.inputs[idx], g)
            yield p.float(), self.targets[idx].float(), idx


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


#: what an attack can need of the system it attacks (ART-style declarations, :attr:`Attack.needs`)
NEEDS = {
    "pairs": "(leaked data, face) training pairs, made by running the defense as a black-box client on public faces",
    "client_network": "the client's network as a white box (its layers are mirrored)",
    "defense": "the defense's public parameters and public constants (Kerckhoffs: e.g. a mixing defense's public "
               "face pool, seeded from public data), read from the defense object; never per-sample randomness or "
               "secret keys, no training pairs",
    "forward_map": "the defense's differentiable forward map (white-box optimisation per target; with pairs: a trained "
                   "attacker refined per target)",
    "queries": "only queries to the deployed system's match API (probe faces in, distances out; no gradients, no "
               "training pairs), counted per face",
    "synthetic": "extra training faces sampled from a pretrained face GAN (Attack.synthetic_chips), protected by the "
                 "attacker's black-box client like his public faces",
}


class Attack:
    """Base class of every attack. Subclasses declare what they need (:attr:`needs`, keys of
    :data:`NEEDS`); :meth:`config` is derived from the keyword-only parameters of ``__init__`` (and
    of the base classes it passes ``**kw`` to), like :meth:`faceveil.defenses.base.Defense.params`."""

    name: ClassVar[str] = "base"
    trainable: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"pairs"})
    #: keyword arguments that are inputs, not configuration (kept out of config()/cache keys)
    NOT_CONFIG: ClassVar[tuple[str, ...]] = ()
    #: the defenses (registered names) this attack is written for; empty: any defense
    defenses: ClassVar[tuple[str, ...]] = ()
    #: attack() optimises each target afresh (seconds per face: a white-box inversion, a latent refinement,
    #: a query search), so the harness caches its reconstructions of the evaluation targets batch by batch
    per_target: ClassVar[bool] = False

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        raise NotImplementedError

    def attack_stats(self) -> dict[str, float]:
        """Totals of the last :meth:`attack` call (e.g. ``{"queries": n}`` for a query attack); the harness
        reports them per face."""
        return {}

    @classmethod
    def knowledge(cls) -> str:
        """The threat model's knowledge level this attack implies."""
        return "white-box" if cls.needs & {"forward_map", "defense"} else "black-box client"

    @classmethod
    def applies_to(cls, defense_name: str) -> bool:
        """Whether this attack can attack defense ``defense_name`` (:attr:`defenses`)."""
        return not cls.defenses or defense_name in cls.defenses

    @classmethod
    def params(cls) -> list[str]:
        """Keyword-only ``__init__`` parameters along the ``**kw`` chain of the class's bases."""
        out: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            sig = inspect.signature(init).parameters
            out += [n for n, p in sig.items() if p.kind is p.KEYWORD_ONLY and n not in out]
            if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
                break
        return out

    def synthetic_chips(self, crop, n_public: int, seed: int) -> tuple | None:
        """For an attack that needs ``"synthetic"``: extra aligned training chips (uint8 ``[N,S,S,3]`` in
        ``crop``'s geometry) given ``n_public`` public faces, and a JSON-able description of them that keys
        the caches of sets made from them: ``(chips, description)``, or ``None`` for none."""
        return None

    def public_share(self, n_total: int) -> int:
        """Of ``n_total`` faces that an expensive client's protection budget allows, how many are public faces
        (the rest: :meth:`synthetic_chips` of them); all of them for an attack without synthetic faces."""
        return n_total

    def config_value(self, param: str):
        """How ``param`` enters :meth:`config` (default: the attribute of that name)."""
        return getattr(self, param)

    def config(self) -> dict:
        """Everything that determines this attack's output (cache keys, reports)."""
        return {"name": self.name, **{p: self.config_value(p) for p in self.params() if p not in self.NOT_CONFIG}}

    def train_config(self) -> dict:
        """Everything that determines a trained attacker (its cache key): :meth:`config`, less parameters that
        act only per target at attack time (e.g. a refinement's steps)."""
        return self.config()


def attack_class(name: str) -> type[Attack]:
    """The registered class of attack ``name`` (its declarations without building it)."""
    return ATTACKS.get(name)  # type: ignore[return-value]


@dataclass
class TrainLog:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    stopped_by: str = ""  # "steps", "epochs" or "time" (the budget's limit that ended training)
    planned_steps: int = 0  # the step budget of the run (0: a log written before it was recorded)
    extra: dict = field(default_factory=dict)  # attack-specific facts of the run (e.g. ridge's chosen penalty)


#: an attacker that a wall-time guard stopped before this many steps (or, under a step budget, before a
#: quarter of it) has not trained: judging it would report an untrained network as a privacy result
MIN_TRAIN_STEPS = 20


class AttackerUndertrainedError(FaceveilError):
    """A time guard stopped an attacker's training before it trained; its result is not a privacy result."""


def check_trained(name: str, log: TrainLog, budget: Budget) -> None:
    """Raise :class:`AttackerUndertrainedError` when ``log`` shows a run the time guard cut short."""
    if log.stopped_by != "time":
        return
    need = MIN_TRAIN_STEPS
    if budget.max_steps and log.planned_steps:
        need = max(need, math.ceil(0.25 * log.planned_steps))
    if log.steps < need:
        raise AttackerUndertrainedError(
            f"attacker {name} was stopped by its {budget.max_seconds:g}-s wall-time guard after {log.steps} step(s)"
            + (f" of {log.planned_steps}" if log.planned_steps else "") + f" (< {need}): it did not train, so its "
            "reconstructions are not a privacy result; give it more time (--max-seconds) or a smaller budget, "
            "then retrain (--force)")


def _cpu_state(m: nn.Module) -> dict[str, Tensor]:
    """``m``'s state dict on the CPU (what caches hold, whatever device trained it)."""
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}


def one_cycle(frac: float, pct_start: float = 0.15, div: float = 25.0, final_div: float = 1e4) -> float:
    """Learning-rate factor of the one-cycle policy (Smith & Topin 2019; the shape of torch's
    ``OneCycleLR`` with cosine annealing) at training progress ``frac`` in [0, 1]: cosine warm-up from
    1/div to 1 over ``pct_start``, then cosine decay to 1/(div * final_div). Written out because
    ``OneCycleLR`` counts steps only (a time-bounded run would stop at its peak rate) and also cycles
    Adam's beta1, which the attacks set themselves."""
    frac = min(max(frac, 0.0), 1.0)
    lo, end = 1 / div, 1 / (div * final_div)
    if frac < pct_start:
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * frac / pct_start))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (frac - pct_start) / (1 - pct_start)))


class ReconstructionAttack(Attack):
    """A learned reconstruction network. Subclasses implement :meth:`build` (a network from the
    protected-data shape to ``[B,3,S,S]``) and may override :meth:`train_step`."""

    loss: str = "l1"

    def __init__(self, *, target_size: int = 112, loss: str = "l1", identity_weight: float = 0.0, seed: int = 0) -> None:
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' (AdvFace eq. 1) or 'l2' (PMT eq. 1), got {loss!r}")
        if target_size < 16:
            raise ValueError(f"target_size must be >= 16, got {target_size}")
        self.target_size, self.loss, self.identity_weight, self.seed = target_size, loss, identity_weight, seed
        self.net: nn.Module | None = None
        self.in_shape: tuple[int, ...] | None = None
        self.log = TrainLog()
        self._id_model: nn.Module | None = None

    # --- to implement -------------------------------------------------------------------------
    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def use_client(self, leak: Callable[[Tensor, torch.Generator], Tensor], crop) -> None:
        """The attacker's black-box client (``leak(chips, rng)``: what it outputs for aligned chips
        ``[B,3,crop.size,crop.size]`` in [0,1] of ``crop`` geometry), given before :meth:`fit` to attacks
        that protect faces they make themselves (e.g. GAN samples, :mod:`faceveil.attacks.ganinv`); the
        same capability as ``pairs``. Default: unused."""

    def parameters_to_train(self) -> list[nn.Parameter]:
        assert self.net is not None
        return list(self.net.parameters())

    def pixel_loss(self, out: Tensor, target: Tensor) -> Tensor:
        return (out - target).abs().mean() if self.loss == "l1" else ((out - target) ** 2).mean()

    def identity_loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Optional stronger attacker: cosine distance in the deployed recogniser's space."""
        if self._id_model is None:
            from faceveil.models import deployed_recognizer

            self._id_model = deployed_recognizer(module_device(self.net) if self.net is not None else None)
        m = self._id_model
        a, b = m(m.prepare(out)), m(m.prepare(target)).detach()
        return (1 - torch.nn.functional.cosine_similarity(a, b)).mean()

    def train_step(self, p: Tensor, target: Tensor, opt: torch.optim.Optimizer) -> float:
        assert self.net is not None
        out = self.net(p)
        loss = self.pixel_loss(out, target)
        if self.identity_weight > 0:
            loss = loss + self.identity_weight * self.identity_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def make_optimizer(self, budget: Budget) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters_to_train(), lr=budget.lr, betas=(0.5, 0.999))

    # --- training -----------------------------------------------------------------------------
    def fit(self, source: PairSource, budget: Budget, progress: bool = True, checkpoint: Path | None = None,
            checkpoint_seconds: float = 300.0) -> ReconstructionAttack:
        """Train on ``source`` within ``budget``. With ``checkpoint``, the training state (network,
        optimisers, RNG, log) is written there at the end of an epoch once ``checkpoint_seconds`` have
        passed since the last write, and a later call with the same path resumes from it: a
        full-profile attacker (30-60 min on one core) survives a stopped process, and the resumed run is
        the uninterrupted one (epochs draw their batches from their own seeds). The caller removes the
        file once the finished attack is saved."""
        from tqdm import tqdm

        torch.manual_seed(self.seed)
        self.in_shape = source.sample_shape()
        self.net = self.build(self.in_shape)
        if not self.cpu_only:
            self.net = on_device(self.net)
        self.net.train()
        dev = module_device(self.net)
        self.log = TrainLog()  # a fresh run (this object may hold a loaded attacker's log)
        opt = self.make_optimizer(budget)
        steps_per_epoch = max(1, len(source) // budget.batch_size)
        total = budget.epochs * steps_per_epoch
        if budget.max_steps:
            total = min(total, budget.max_steps)
        # a step budget defines the schedule (reproducible); otherwise wall time may run out first
        timed = budget.max_seconds if not budget.max_steps else None
        ckpt = EpochCheckpoint(checkpoint, checkpoint_seconds)
        start_epoch, done_seconds = self._resume(ckpt.load(), checkpoint, opt)
        t0 = time.perf_counter() - done_seconds
        bar = tqdm(total=total, initial=self.log.steps, desc=f"training {self.name}", disable=not progress, unit="step",
                   leave=False)
        self.log.stopped_by = "epochs"
        self.log.planned_steps = total
        for epoch in range(start_epoch, budget.epochs):
            if self.log.steps >= total:  # resumed from a checkpoint written after the last step
                self.log.stopped_by = "steps" if total == budget.max_steps else "epochs"
                break
            for p, tgt in source.batches(epoch, budget.batch_size):
                if self.use_one_cycle:
                    frac = self.log.steps / max(total - 1, 1)
                    if timed:
                        frac = max(frac, (time.perf_counter() - t0) / timed)
                    for g in opt.param_groups:
                        g["lr"] = budget.lr * one_cycle(frac)
                with autocast(dev):  # --precision bf16 (the steps' losses are float32 reductions)
                    loss = self.train_step(p.to(dev, non_blocking=True), tgt.to(dev, non_blocking=True), opt)
                self.log.steps += 1
                self.log.losses.append(loss)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                if self.log.steps >= total:
                    self.log.stopped_by = "steps" if total == budget.max_steps else "epochs"
                elif budget.max_seconds and time.perf_counter() - t0 > budget.max_seconds:
                    self.log.stopped_by = "time"
                else:
                    continue
                break
            self.log.epochs = epoch + 1
            if self.log.stopped_by != "epochs":
                break
            if epoch + 1 < budget.epochs:
                ckpt.maybe_save(lambda e=epoch + 1: self._train_state(opt, e, time.perf_counter() - t0))
        bar.close()
        self.log.seconds = time.perf_counter() - t0
        self.net.eval()
        return self

    def fit_and_save(self, source: PairSource, budget: Budget, path: Path, progress: bool = True,
                     force: bool = False) -> ReconstructionAttack:
        """:meth:`fit` resumable through ``path.ckpt`` (``force`` starts afresh), then save to ``path``."""
        ckpt = path.with_suffix(".ckpt")
        if force:
            discard(ckpt)
        self.fit(source, budget, progress=progress, checkpoint=ckpt)
        self.save(path)
        discard(ckpt)
        return self

    def optimizer_state(self) -> dict:
        """Training state beyond the network and the main optimiser (e.g. a discriminator's optimiser)."""
        return {}

    def load_optimizer_state(self, state: dict) -> None:
        """Inverse of :meth:`optimizer_state`."""

    def _train_state(self, opt: torch.optim.Optimizer, next_epoch: int, seconds: float) -> dict:
        assert self.net is not None
        return {"config": self.train_config(), "epoch": next_epoch, "seconds": seconds, "net": self.net.state_dict(),
                "opt": opt.state_dict(), "extra": self.optimizer_state(), "log": asdict(self.log)}

    def _resume(self, st: dict | None, path: Path | None, opt: torch.optim.Optimizer) -> tuple[int, float]:
        """Load a checkpoint's state (if any); returns (first epoch to run, seconds already trained)."""
        assert self.net is not None
        if st is None:
            return 0, 0.0
        if st["config"] != self.train_config():
            raise ValueError(f"{self.name}: checkpoint {path} was written for another configuration")
        self.net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        self.load_optimizer_state(st["extra"])
        self.log = TrainLog(**st["log"])
        return int(st["epoch"]), float(st["seconds"])

    use_one_cycle: ClassVar[bool] = True
    #: the network trains and runs on the CPU whatever ``--device`` says (its training step calls CPU-only parts)
    cpu_only: ClassVar[bool] = False

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        self.check_protected(protected)
        assert self.net is not None
        self.net.eval()
        dev = module_device(self.net)
        with torch.no_grad(), autocast(dev):
            out = [self.net(protected[s : s + batch_size].float().to(dev)).float().cpu()
                   for s in range(0, len(protected), batch_size)]
        return torch.cat(out).clamp(0, 1)

    def check_protected(self, protected: Tensor) -> None:
        """Raise unless the attacker is trained and ``protected`` is finite float data of its input shape."""
        if self.net is None or self.in_shape is None:
            raise RuntimeError(f"{self.name}: call fit() (or load()) before attack()")
        if not isinstance(protected, Tensor) or not torch.is_floating_point(protected):
            raise FaceveilDataError(f"{self.name}: protected data must be a float tensor, got "
                                    f"{getattr(protected, 'dtype', type(protected).__name__)}")
        if tuple(protected.shape[1:]) != tuple(self.in_shape):
            raise FaceveilDataError(
                f"{self.name}: trained on protected data of shape [B,{','.join(map(str, self.in_shape))}], "
                f"got {list(protected.shape)}"
            )
        if not torch.isfinite(protected).all():
            raise FaceveilDataError(f"{self.name}: protected data contains NaN or infinite values")

    # --- persistence --------------------------------------------------------------------------
    def state(self) -> dict:
        assert self.net is not None
        return {"config": self.train_config(), "in_shape": list(self.in_shape or ()), "net": _cpu_state(self.net),
                "log": asdict(self.log)}

    def save(self, path: Path) -> None:
        """Write the trained attacker atomically with a sha256 sidecar."""
        save_torch(path, self.state())

    def healthy(self) -> bool:
        """Every weight and statistic is finite (a cached attacker whose running statistics overflowed,
        as before :class:`~faceveil.attacks.nets.InputNorm` computed them in float64, is not)."""
        assert self.net is not None
        return all(bool(torch.isfinite(t).all()) for t in self.net.state_dict().values() if torch.is_floating_point(t))

    def load(self, path: Path) -> ReconstructionAttack:
        """Load a saved attacker (checked against its sha256 sidecar when it has one)."""
        return self._load_state(read_verified(path, torch_load, "saved attacker"))

    def load_cached(self, path: Path) -> bool:
        """Load the attacker cached at ``path`` if it is there and intact (a corrupt or unverified one is
        reported and removed); whether it was loaded."""
        st = load_cache(path, torch_load, "trained attacker", "discarded, retraining")
        if st is None:
            return False
        self._load_state(st)
        return True

    def _load_state(self, st: dict) -> ReconstructionAttack:
        self.in_shape = tuple(st["in_shape"])
        self.net = self.build(self.in_shape)
        if not self.cpu_only:
            self.net = on_device(self.net)
        self.net.load_state_dict(st["net"])
        self.net.eval()
        self.log = TrainLog(**st["log"])
        return self


class OptimizationAttack(Attack):
    """White-box inversion: optimise an image so a known differentiable map matches the data."""

    trainable = False
    per_target = True


class DefenseSpecificAttack(Attack):
    """An attack written for the defenses named in :attr:`defenses`: it reads the defense's public parameters
    and constants (``needs = {"defense"}``, e.g. the public pool of a mixing defense) and has nothing to train.
    ``defense``: the defense object (the harness passes the attacked one); ``target_size``: side of the
    returned images."""

    trainable = False
    needs = frozenset({"defense"})
    NOT_CONFIG = ("defense",)

    def __init__(self, *, defense=None, target_size: int = 112, seed: int = 0) -> None:
        if target_size < 16:
            raise ValueError(f"target_size must be >= 16, got {target_size}")
        if defense is not None and not self.applies_to(getattr(defense, "name", "")):
            raise ValueError(f"attack {self.name} is written for {', '.join(self.defenses)}; "
                             f"got defense {getattr(defense, 'name', type(defense).__name__)!r}")
        self.defense, self.target_size, self.seed = defense, target_size, seed

    def require_defense(self):
        if self.defense is None:
            raise RuntimeError(f"{self.name}: give the attacked defense as defense=...")
        return self.defense

    def unmix(self, data: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One chunk of checked protected data -> (faces ``[B,3,S,S]`` in [0,1], what was found per sample)."""
        raise NotImplementedError

    def unmix_all(self, data: Tensor, chunk: int) -> Tensor:
        """:meth:`unmix` over ``data`` in chunks of ``chunk``; what was found is kept in ``self.found``; the faces
        are resized to ``target_size``."""
        outs, found = [], []
        with torch.no_grad():
            for s in range(0, len(data), chunk):
                x, f = self.unmix(data[s : s + chunk])
                outs.append(x)
                found.append(f)
        self.found = {k: torch.cat([f[k] for f in found]) for k in found[0]} if found else {}
        if not outs:
            return torch.empty(0, 3, self.target_size, self.target_size)
        x = torch.cat(outs)
        if x.shape[-1] != self.target_size:
            x = torch.nn.functional.interpolate(x, size=(self.target_size, self.target_size), mode="bilinear",
                                                align_corners=False, antialias=x.shape[-1] > self.target_size)
        return x.clamp(0, 1).float()

    def check_protected(self, protected: Tensor, value_range: tuple[float, float]) -> Tensor:
        """``protected`` as float32 ``[B,3,S,S]`` (S >= 8), finite and within ``value_range`` (else a
        :class:`FaceveilDataError` naming the problem)."""
        what = f"{self.name}: protected data"
        if not isinstance(protected, Tensor) or not torch.is_floating_point(protected):
            raise FaceveilDataError(f"{what} must be a float tensor, got {getattr(protected, 'dtype', type(protected).__name__)}")
        if protected.ndim != 4 or protected.shape[1] != 3 or protected.shape[2] != protected.shape[3] or protected.shape[2] < 8:
            raise FaceveilDataError(f"{what} must be [B,3,S,S] with S >= 8 (the defense's output), got {list(protected.shape)}")
        if not torch.isfinite(protected).all():
            raise FaceveilDataError(f"{what} contains NaN or infinite values")
        lo, hi = value_range
        if len(protected) and (float(protected.min()) < lo - 1e-4 or float(protected.max()) > hi + 1e-4):
            raise FaceveilDataError(f"{what} has values in [{float(protected.min()):.3g}, {float(protected.max()):.3g}], "
                                    f"outside the defense's output range [{lo:g}, {hi:g}]")
        return protected.float()


def attack_cache_path(attack: Attack, *parts) -> Path:
    cfg = attack.train_config()
    return cache_dir("attacks") / f"{cfg['name']}-{config_hash(cfg, *parts)}.pt"


def get_attack(name: str, **kwargs) -> Attack:
    return ATTACKS.create(name, **kwargs)

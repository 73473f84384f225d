"""AdvFace (Wang et al., "Privacy-Preserving Adversarial Facial Features", CVPR 2023): a server-side
plug-in for deployed split face recognition that stores *adversarial features* instead of the
features the client sends.

Deployment (Section 3). The recogniser F = Ψ ∘ E is split: the client runs the front layers E and
sends ``z = E(x)``; the server runs the rest Ψ. The paper puts the first three convolutional layers
of its backbone on the client. The analogous cut of dlib's ResNet is ``at="res1"``: ``conv1`` (7x7/2)
+ ``res1`` (two 3x3 convs) = three convolutions, with the affine / ReLU / 3x3 max-pool between
them; ``z`` is ``32 x 35 x 35`` (:attr:`AdvFace.feature_shape`). ``at`` accepts any layer name.

Feature scale at the cut (what ε means). ``res1`` outputs are post-ReLU maps. On 256 public faces
(CelebA + non-pair LFW, seed 0) their element-wise std is 0.874 (mean 0.863, 24% exact zeros,
median 0.73, 99th / 99.9th percentile 3.77 / 5.56; per-channel std 0.42 - 1.05). The paper's
ε = α = 0.2 are absolute values in *its* feature units; here they are absolute too by default
(``eps_relative=False``): 0.2 is 0.23 of the feature std, i.e. the same order as in a BN-normalised
backbone. With ``eps_relative=True`` both α and ε are multiplied by the std measured at the cut
(:meth:`AdvFace.feature_std`, 256 public faces, cached), which keeps their meaning at other cuts.

Server step (Section 4, :meth:`AdvFace.protect_stored`):

1. shadow model S (a reconstruction network, ``transrec`` / ``resrec`` / ``urec`` of
   :mod:`faceveil.attacks`) trained by the server on public faces with the L1 loss of eq. 3,
   ``min_S E_x ‖S(E(x)) − x‖₁`` (the harness's training loop, budget of ``profile``, cached by
   config hash);
2. eq. 4: ``x̃ = S(z)``, ``z̃ = E(x̃)`` (x̃ is resized to the recogniser's input for E);
3. eqs. 5-6: PGD from ``z₀ = z̃`` *away* from the shadow reconstruction,
   ``z_{t+1} = z_t + α · sign(∇_z ‖S(z_t) − x̃‖₁)``, for ``iterations`` steps (paper: 40, α = 0.2, ε = 0.2),
   with the noise bound ε read one of two ways (``bound``): ``"step"`` — the paper's text, which bounds the
   change of each iteration, ``‖z_{t+1} − z_t‖∞ ≤ ε`` (``Clip_{z_t,ε}``; with α ≤ ε a sign step is never
   clipped, so after 40 iterations a feature may have moved by up to 40 α = 8 in total); ``"total"`` —
   faceveil's first reading, ``Clip_{z₀,ε}``: the whole perturbation stays in the L∞ ball of radius ε around
   z̃. The two move accuracy and privacy in opposite directions (the per-step reading perturbs far more);
   the AdvFace experiment reports both. ``precision="bf16"`` runs S's forward and backward under CPU bfloat16
   autocast (the step, the clip and the stored features stay float32): 2.1x faster per PGD
   iteration on an AVX512-BF16 CPU (8.3 vs 17.6 ms per face and iteration, 112-px resrec shadow,
   one core), with the same protection (see ``bench/advface.py --precision``);
4. batch norm (Section 4.2): every BN layer of S normalises with the statistics of the incoming
   batch (S runs with BN in training mode *without* updating its running statistics,
   :func:`batch_statistics`), so the stored features of a face depend on the batch it was enrolled
   in; ``bn_batch_stats=False`` uses the running statistics instead (ablation).

What leaks: the channel carries the plain ``z`` (unprotected by design: AdvFace protects the
*database*); the database holds the adversarial features (``protect_stored``).

Recognition. ``mode="online"``: the deployed Ψ compares stored adversarial features with the plain
``z`` of probes (``frozen_server`` = Ψ, ``probe_transform`` = identity). ``mode="offline"``
(Section 4.4): the server part is retrained on stored adversarial features (distillation toward the
frozen recogniser's clean embeddings; ``server_training_input`` = ``protect_stored(protect(x))``; the
student is a fine-tuned copy of Ψ, :mod:`faceveil.train.advface_student`) and the server converts
every incoming probe the same way before recognition (``probe_transform`` = ``protect_stored``), so
enrolment and probe are both adversarial features.

Attackers. The paper's attacker is *non-adaptive*: trained on plain ``(z, x)`` pairs, tested on
stored adversarial features. The *adaptive* attacker who holds AdvFace as a black box (or a leaked
database plus public faces run through the same pipeline) trains on ``(adversarial feature, x)``
pairs: that is exactly the harness's database-leakage attack
(:func:`faceveil.bench.privacy.run_attack` with ``ThreatModel(leakage="database")``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from faceveil.defenses.base import Defense, check_features, register_defense
from faceveil.models.base import Recognizer

SHADOWS = ("transrec", "resrec", "urec")
MODES = ("online", "offline")
#: how ε bounds the PGD of eqs. 5-6: per iteration (the paper's text) or in total around z̃ (faceveil's first reading)
BOUNDS = ("step", "total")
PRECISIONS = ("fp32", "bf16")
#: elements std of dlib ``res1`` features on 256 public faces (see the module docstring)
RES1_FEATURE_STD = 0.874


@contextmanager
def batch_statistics(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode except that, when ``enabled``, every batch-norm layer normalises
    with the statistics of the incoming batch (AdvFace Section 4.2) and never updates its running
    statistics (``track_running_stats`` is switched off for the duration). Modes are restored."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_training = {m: m.training for m in module.modules()}
    saved_track = [m.track_running_stats for m in bns]
    module.eval()
    if enabled:
        for m in bns:
            m.train()
            m.track_running_stats = False  # F.batch_norm gets no running buffers: batch stats, no update
    try:
        yield module
    finally:
        for m, tr in saved_training.items():
            m.training = tr
        for m, tr in zip(bns, saved_track, strict=True):
            m.track_running_stats = tr


def _state_fingerprint(net: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _Memo:
    """A size-capped LRU of stored features by input-batch hash (off while ``limit_mb`` is 0)."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = 0
        self.limit_mb = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: str) -> Tensor | None:
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key].clone()

    def put(self, key: str, value: Tensor) -> None:
        self.items[key] = value.clone()
        self.bytes += value.numel() * value.element_size()
        while self.items and self.bytes > self.limit_mb * 2**20:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


@register_defense("advface")
class AdvFace(Defense):
    """AdvFace (module docstring): the client sends ``z = E(x)`` (the recogniser's layers up to
    ``at``); the server stores PGD-perturbed re-encodings of its shadow reconstruction (eqs. 4-6).

    Non-config arguments: ``shadow_model`` (an already trained S, e.g. in tests; its weights are
    fingerprinted into :meth:`config`) and ``data`` (the face data folder for the public faces)."""

    #: fast configuration for the contract tests
    EXAMPLE: ClassVar[dict] = {"profile": "ci", "shadow_images": 64, "iterations": 2}

    domain = "feature"
    side = "server"
    stochastic = False
    differentiable = False  # PGD with sign steps: no useful gradient through protect_stored
    needs_grad_to_protect = True
    protect_ms_hint = 500.0  # shadow model + 40 PGD steps: 473 ms/face at batch 32
    input_kind = "map"
    HELP: ClassVar[dict[str, str]] = {
        "at": "client/server cut: a layer name of the recogniser (res1 = conv1 + res1 = three convs, z is 32x35x35)",
        "shadow": "shadow reconstruction network S: transrec | resrec | urec",
        "profile": "training budget of S (attack profiles: ci | quick | full)",
        "shadow_images": "public faces S is trained on (0 = the profile's number)",
        "shadow_seed": "seed of S's training (distinct from attackers' seeds)",
        "alpha": "PGD step α of eq. 5 (paper 0.2)",
        "eps": "noise bound ε (paper 0.2; 0 = store z̃ = E(S(z))): per iteration or in total, see bound",
        "bound": "step: ε bounds each iteration's change (the paper's eqs. 5-6) | total: the L-inf ball of radius ε "
                 "around z̃",
        "iterations": "PGD iterations (paper 40)",
        "eps_relative": "multiply α and ε by the feature std at the cut (res1: 0.874) instead of absolute units",
        "mode": "online (deployed Ψ, plain probes) | offline (retrained server, probes converted too)",
        "bn_batch_stats": "BN layers of S use the incoming batch's statistics (Section 4.2); False: running stats",
        "precision": "fp32 | bf16: S's arithmetic inside PGD (bf16 = CPU bfloat16 autocast, ~2x faster on AVX512-BF16)",
    }

    def __init__(self, shadow_model: nn.Module | None = None, data: str | os.PathLike | None = None, *, at: str = "res1",
                 shadow: str = "resrec", profile: str = "quick", shadow_images: int = 0, shadow_seed: int = 1,
                 alpha: float = 0.2, eps: float = 0.2, iterations: int = 40, eps_relative: bool = False,
                 mode: str = "online", bn_batch_stats: bool = True, precision: str = "fp32", bound: str = "step",
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        from faceveil.attacks.base import PROFILES

        if not isinstance(at, str) or at in ("image", "embedding"):
            raise ValueError(f"advface: at must be a layer name of the recogniser (e.g. res1), got {at!r}")
        if shadow not in SHADOWS:
            raise ValueError(f"advface: shadow must be one of {', '.join(SHADOWS)}, got {shadow!r}")
        if profile not in PROFILES:
            raise ValueError(f"advface: profile must be one of {', '.join(sorted(PROFILES))}, got {profile!r}")
        if mode not in MODES:
            raise ValueError(f"advface: mode must be online or offline, got {mode!r}")
        if bound not in BOUNDS:
            raise ValueError(f"advface: bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"advface: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        for name, v in (("alpha", alpha), ("eps", eps)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"advface: {name} must be a finite number >= 0, got {v!r}")
        for name, v in (("iterations", iterations), ("shadow_images", shadow_images), ("shadow_seed", shadow_seed)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"advface: {name} must be an integer >= 0, got {v!r}")
        if 0 < shadow_images < 64:
            raise ValueError(f"advface: shadow_images must be 0 (profile) or >= 64, got {shadow_images}")
        self.at, self.shadow, self.profile = at, shadow, profile
        self.shadow_images, self.shadow_seed = shadow_images, shadow_seed
        self.alpha, self.eps, self.iterations = float(alpha), float(eps), iterations
        self.eps_relative, self.mode, self.bn_batch_stats = bool(eps_relative), mode, bool(bn_batch_stats)
        self.precision, self.bound = precision, bound
        self.data = data
        self._parts: tuple[nn.Module, nn.Module] = self.recognizer.split(at)  # validates the layer name
        self._feature_shape: tuple[int, ...] | None = None
        self._scale: float | None = None
        self._shadow_net: nn.Module | None = None
        self._injected: str | None = None
        if shadow_model is not None:
            self._set_shadow(shadow_model)
            self._injected = _state_fingerprint(shadow_model)
        self._memo = _Memo()  # see enable_memo; shared by with_mode() copies

    # --- configuration --------------------------------------------------------------------------
    @property
    def needs_adapted_server(self) -> bool:  # type: ignore[override]
        return self.mode == "offline"

    def config(self) -> dict:
        c = super().config()
        if self._injected:
            c["shadow_model"] = self._injected
        for k, first in (("precision", "fp32"), ("bound", "total")):
            if c.get(k) == first:  # left out: keys of results cached before the option existed stay valid
                del c[k]
        return c

    def describe(self) -> dict:
        return {**super().describe(), "feature_shape": list(self.feature_shape), "alpha_abs": self.step_abs,
                "eps_abs": self.eps_abs}

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Per-sample shape of ``z = E(x)`` (``(32, 35, 35)`` at ``res1``)."""
        if self._feature_shape is None:
            s = self.recognizer.input_size
            with torch.no_grad():
                self._feature_shape = tuple(self._parts[0](torch.zeros(1, 3, s, s)).shape[1:])
        return self._feature_shape

    def stored_shape(self) -> tuple[int, ...]:
        return self.feature_shape

    def client_network(self) -> nn.Module:
        """E: the client part of the split recogniser (the harness mirrors it for ``transrec``)."""
        return self._parts[0]

    def server_network(self) -> nn.Module:
        """Ψ: the deployed server part."""
        return self._parts[1]

    def feature_std(self) -> float:
        """Element-wise std of ``E(x)`` over 256 public faces (seed 0), cached on disk."""
        if self._scale is None:
            if self.at == "res1" and self.recognizer.name == "dlib":
                self._scale = RES1_FEATURE_STD
            else:
                self._scale = measure_feature_std(self.recognizer, self.at, self.data)
        return self._scale

    @property
    def eps_abs(self) -> float:
        """ε in feature units."""
        return self.eps * (self.feature_std() if self.eps_relative else 1.0)

    @property
    def step_abs(self) -> float:
        """α in feature units."""
        return self.alpha * (self.feature_std() if self.eps_relative else 1.0)

    # --- the shadow model -----------------------------------------------------------------------
    def _set_shadow(self, net: nn.Module) -> None:
        net = net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self._shadow_net = net

    def shadow_budget(self):
        from faceveil.attacks.base import profile_budget

        return profile_budget(self.profile, **({"train_images": self.shadow_images} if self.shadow_images else {}))

    def shadow_path(self) -> Path:
        from dataclasses import asdict

        from faceveil.config import cache_dir, config_hash, data_dir
        from faceveil.models.embed import model_fingerprint

        attack = self._new_shadow_attack()
        key = config_hash(attack.config(), asdict(self.shadow_budget()), self.at, model_fingerprint(self.recognizer),
                          str(data_dir(self.data)), "advface-shadow-v1")
        return cache_dir("advface") / f"shadow-{self.shadow}-{key}.pt"

    def _new_shadow_attack(self):
        from faceveil.attacks import get_attack
        from faceveil.attacks.base import attack_class

        kw = {"client": self.client_network()} if "client_network" in attack_class(self.shadow).needs else {}
        return get_attack(self.shadow, target_size=self.shadow_budget().target_size, loss="l1", seed=self.shadow_seed, **kw)

    def shadow_network(self, progress: bool = True) -> nn.Module:
        """S, trained by the server on public faces with L1 (eq. 3): loaded from the cache, or trained
        once (the harness's :meth:`ReconstructionAttack.fit` on (E(x), x) pairs) and cached."""
        if self._shadow_net is None:
            self._set_shadow(train_shadow(self, progress=progress).net)
        assert self._shadow_net is not None
        return self._shadow_net

    def bundle_state(self) -> dict[str, Tensor]:
        """The server's shadow model S (trained on public faces), so a loaded system runs PGD without training."""
        return {f"shadow.{k}": v for k, v in self.shadow_network(progress=False).state_dict().items()}

    def load_bundle_state(self, state: dict[str, Tensor]) -> None:
        attack = self._new_shadow_attack()
        net = attack.build(self.feature_shape)
        net.load_state_dict({k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")})
        self._set_shadow(net)

    # --- data flow ------------------------------------------------------------------------------
    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Client: ``z = E(x)`` (what travels on the channel, unprotected by design)."""
        x = self.recognizer.prepare(self._check_images(x))
        return self._parts[0](x)

    def reconstruct_and_reencode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 4: ``x̃ = S(z)`` and ``z̃ = E(x̃)`` (BN of S per :attr:`bn_batch_stats`), no gradient."""
        S = self.shadow_network()
        with torch.no_grad(), batch_statistics(S, self.bn_batch_stats):
            x_rec = S(z.float())
            z0 = self._parts[0](self.recognizer.prepare(x_rec))
        return x_rec, z0

    def adversarial_features(self, z: Tensor) -> Tensor:
        """Eqs. 4-6: PGD from ``z̃`` maximising ``‖S(z_t) − x̃‖₁``, each step clipped to ``[z_t − ε, z_t + ε]``
        (``bound="step"``) or the iterate to ``[z̃ − ε, z̃ + ε]`` (``bound="total"``)."""
        S = self.shadow_network()
        x_rec, z0 = self.reconstruct_and_reencode(z)
        eps, alpha = self.eps_abs, self.step_abs
        zt = z0.clone()
        if eps == 0 or self.iterations == 0 or alpha == 0:
            return zt
        lo, hi = z0 - eps, z0 + eps
        with torch.enable_grad(), batch_statistics(S, self.bn_batch_stats):
            for _ in range(self.iterations):
                zt.requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    out = S(zt)
                loss = (out.float() - x_rec).abs().sum()
                (g,) = torch.autograd.grad(loss, zt)
                zt = zt.detach()
                if self.bound == "step":
                    lo, hi = zt - eps, zt + eps
                zt = torch.minimum(torch.maximum(zt + alpha * g.sign(), lo), hi)
        return zt.detach()

    def protect_stored(self, t: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Server: the adversarial features stored instead of ``z`` (deterministic given the batch)."""
        z = check_features(t, self.feature_shape, "advface: transmitted features").detach()
        if self._memo.limit_mb <= 0:
            return self.adversarial_features(z)
        key = hashlib.blake2b(z.float().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out = self.adversarial_features(z)
        self._memo.put(key, out)
        return out

    def enable_memo(self, limit_mb: float = 1024.0) -> AdvFace:
        """Remember outputs of :meth:`protect_stored` per input batch (by content hash), up to
        ``limit_mb``. The output is a deterministic function of the batch, so a hit returns exactly
        what recomputation would; experiments use it to share PGD runs between attackers."""
        self._memo.limit_mb = float(limit_mb)
        return self

    def with_mode(self, mode: str) -> AdvFace:
        """The same defense in another recognition mode, sharing the shadow model and the memo (the
        stored features do not depend on the mode)."""
        if mode not in MODES:
            raise ValueError(f"advface: mode must be online or offline, got {mode!r}")
        other = copy.copy(self)
        other.mode = mode
        return other

    def probe_transform(self, t: Tensor) -> Tensor:
        """Online: probes' plain ``z`` go to Ψ. Offline: probes are converted like enrolments."""
        return self.protect_stored(t) if self.mode == "offline" else t

    def server_training_input(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Offline retraining input (Section 4.4): the stored adversarial features of clean chips."""
        return self.protect_stored(self.protect(x, rng), rng)

    def frozen_server(self) -> nn.Module:
        """Ψ, the deployed server part, as is."""
        return self._parts[1]

    def make_student(self, sample: Tensor, cfg) -> nn.Module:
        """The offline server: a trainable copy of Ψ (see :mod:`faceveil.train.advface_student`)."""
        from faceveil.models.students import ServerPartStudent

        return ServerPartStudent(self.at, self.recognizer.name)

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """White-box maps: channel ``E(x)``; database the PGD's starting point ``z̃ = E(S(E(x)))``
        (the stored features lie within ε of it; the PGD itself is not differentiated)."""
        z = self.protect(x)
        if leakage != "database":
            return z
        S = self.shadow_network()
        with batch_statistics(S, self.bn_batch_stats):
            return self._parts[0](self.recognizer.prepare(S(z)))


def train_shadow(defense: AdvFace, progress: bool = True, force: bool = False):
    """Train (or load) the server's shadow model S of ``defense``: the reconstruction attack
    ``defense.shadow`` fitted with L1 (eq. 3) on ``(E(x), x)`` pairs of public faces (identity-disjoint
    from LFW pairs), with the budget of ``defense.profile`` (``shadow_images`` overrides its number of
    images) and seed ``shadow_seed``. Cached under ``$FACEVEIL_HOME/advface``."""
    from faceveil.attacks.base import PairSource
    from faceveil.data.align import to_tensor
    from faceveil.data.chips import chip_images
    from faceveil.data.datasets import public_chips

    attack = defense._new_shadow_attack()
    path = defense.shadow_path()
    if not force and attack.load_cached(path):
        return attack
    budget = defense.shadow_budget()
    chips = public_chips(defense.data, defense.recognizer.crop, budget.train_images, defense.shadow_seed, progress)
    E = defense.client_network()
    # written into preallocated tensors: at the full profile the pairs are 4 GB (2.1 GB of res1 maps,
    # 2.0 GB of 112-px targets) and lists + torch.cat held twice that (the process was OOM-killed)
    targets = chip_images(chips, budget.target_size)
    feats = torch.empty((len(chips), *defense.feature_shape))
    with torch.no_grad():
        for s in range(0, len(chips), 64):
            feats[s : s + 64] = E(defense.recognizer.prepare(to_tensor(chips[s : s + 64])))
    del chips
    source = PairSource(targets, protected=feats, seed=defense.shadow_seed)
    return attack.fit_and_save(source, budget, path, progress, force)


def measure_feature_std(recognizer: Recognizer, at: str, data=None, n: int = 256) -> float:
    """Element-wise std of the client features at ``at`` over ``n`` public faces (cached)."""
    from faceveil.config import cache_dir, config_hash, data_dir
    from faceveil.data.align import to_tensor
    from faceveil.data.datasets import public_chips
    from faceveil.models.embed import model_fingerprint
    from faceveil.storage import load_cache, write_json_atomic

    path = cache_dir("advface") / f"scale-{config_hash(at, n, model_fingerprint(recognizer), str(data_dir(data)))}.json"
    if (std := load_cache(path, lambda p: float(json.loads(p.read_text())["std"]), "feature scale")) is not None:
        return std
    E = recognizer.split(at)[0]
    chips = public_chips(data, recognizer.crop, n, 0, False)
    with torch.no_grad():
        f = torch.cat([E(recognizer.prepare(to_tensor(chips[s : s + 64]))) for s in range(0, len(chips), 64)])
    std = float(f.double().std())
    write_json_atomic(path, {"at": at, "n": n, "std": std, "mean": float(f.double().mean()),
                             "q99": float(np.quantile(f.flatten()[::7].numpy(), 0.99))}, checksum=True)
    return std


"""One Defense interface for every protection, and the system that composes it with a recogniser.

A defense declares *where* it acts and *what* leaves the client / sits in the database::

    client:  x (aligned chip, [B,3,S,S] in [0,1]) --protect--> t    (transmitted: channel leakage)
    server:  t --protect_stored--> s                                (stored: database leakage)
    server:  s or t --recover--> r --server model--> embedding      (recognition)

- Image-domain defenses (blur, noise, FaceMix, DeepBlur, PMT image mode, ...) transmit images;
  the server recognises them with the frozen deployed recogniser or an adapted student
  (:mod:`faceveil.train`).
- Feature-domain defenses transmit or store features (Laplace DP and random perturbation on
  embeddings, AdvFace on split-network feature maps, FaceObfuscator's frequency channels).

Per-sample randomness comes from a ``torch.Generator``: without one a stochastic defense draws a fresh
seed from the OS CSPRNG (real use); benchmarks pass generators derived from their configured seed
(:mod:`faceveil.keys`). Persistent secrets are :class:`faceveil.keys.SecretKey` objects.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError
from faceveil.keys import os_generator
from faceveil.models.base import Recognizer, check_images
from faceveil.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense", "faceveil.defenses")


def register_defense(name: str):
    """Class decorator: register a Defense subclass under ``name`` (sets ``cls.name``)."""

    def deco(cls):
        cls.name = name
        DEFENSES.register(name)(cls)
        return cls

    return deco


@dataclass(frozen=True)
class ParamSpec:
    """A defense parameter for ``faceveil defenses list`` and CLI parsing."""

    name: str
    default: object
    help: str


class Defense:
    """Base class. Subclasses set the class attributes, validate parameters in ``__init__`` and
    implement :meth:`protect` (and :meth:`protect_stored` / :meth:`recover` when they have a
    server-side step).

    - ``domain``: ``"image"`` (transmits images) or ``"feature"``;
    - ``side``: ``"client"``, ``"server"`` or ``"both"``;
    - ``input_kind`` of the transmitted data: ``"image"``, ``"vector"`` or ``"map"``;
    - ``stochastic``: fresh randomness per call (needs an rng);
    - ``differentiable``: :meth:`protect` lets gradients through (white-box attacks, PGD).
    """

    name: ClassVar[str] = "base"
    domain: ClassVar[str] = "image"
    side: ClassVar[str] = "client"
    stochastic: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    #: the client holds a persistent secret: ``__init__`` takes ``key`` (a :class:`faceveil.keys.SecretKey`,
    #: generated from the CSPRNG when not given); the key never enters config(), caches or server bundles
    needs_key: ClassVar[bool] = False
    #: whether the server recogniser must be adapted (a distilled student) to work at all
    needs_adapted_server: ClassVar[bool] = False
    #: protect() runs an optimisation (PMT, AdvNoise, DeepBlur, AdvFace) and needs autograd
    needs_grad_to_protect: ClassVar[bool] = False
    #: typical client cost in ms/face on one CPU core (measured; 0 = cheap). Benchmarks use it to
    #: size the data sets of slow clients (:func:`faceveil.bench.runner.setting_sizes`)
    protect_ms_hint: ClassVar[float] = 0.0
    #: clients at least this slow (ms/face) have their protected evaluation data cached on disk
    SLOW_CLIENT_MS: ClassVar[float] = 100.0
    #: value range of image-domain outputs ((-1, 1) for InstaHide's sign-flipped mixes)
    output_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: keyword arguments that are inputs, not configuration (kept out of config()/cache keys)
    NOT_CONFIG: ClassVar[tuple[str, ...]] = ("recognizer", "key", "pool", "data")
    #: a fast configuration (parameter overrides) the contract tests run every registered defense with
    EXAMPLE: ClassVar[dict] = {}

    def __init__(self, recognizer: Recognizer | None = None) -> None:
        self._recognizer = recognizer

    # --- configuration ----------------------------------------------------------------------
    #: parameter help texts, by ``__init__`` keyword
    HELP: ClassVar[dict[str, str]] = {}

    @classmethod
    def params(cls) -> list[ParamSpec]:
        """Parameters: the keyword-only arguments of ``__init__`` (except the recogniser)."""
        sig = inspect.signature(cls.__init__)
        return [
            ParamSpec(n, p.default, cls.HELP.get(n, ""))
            for n, p in sig.parameters.items()
            if p.kind is p.KEYWORD_ONLY and n not in cls.NOT_CONFIG
        ]

    @property
    def slow(self) -> bool:
        """Protection costs at least ``SLOW_CLIENT_MS`` per face: its large sets are cached on disk."""
        return self.protect_ms_hint >= self.SLOW_CLIENT_MS

    def protected_set(self, path: Path, n: int, part: Callable[[int], Tensor], progress: bool = False,
                      desc: str = "protecting", save: bool = True, cache: bool | None = None) -> Tensor:
        """``torch.cat`` of the batches ``part(0) .. part(n-1)`` of protected data (each seeding its own
        draws; same length but the last), made one batch at a time into one tensor
        (:func:`faceveil.config.cat_parts`: never twice the set in memory). A slow client's set (hours at
        the full profile) is cached at ``path`` batch by batch (:func:`faceveil.config.load_or_compute_parts`;
        ``save=False``: the batches are the cache), so a stopped run resumes; a fast client's is computed
        (``cache=True``: cached all the same, e.g. a small set several attackers train on)."""
        from tqdm import tqdm

        from faceveil.config import cat_parts, load_or_compute_parts

        if not (self.slow if cache is None else cache):
            return cat_parts((part(i) for i in tqdm(range(n), disable=not progress, desc=desc, leave=False)), n)
        return load_or_compute_parts(path, n, part, lambda parts: cat_parts(parts, n), progress=progress, desc=desc,
                                     save=save, stream=True)

    def public_params(self) -> dict:
        """The constructor's keyword parameters as set, as :meth:`config` reports them (public: what a saved
        system rebuilds the defense from; a parameter config() leaves out takes its default)."""
        c = self.config()
        return {p.name: c[p.name] for p in self.params() if p.name in c}

    def config(self) -> dict:
        """Everything that determines this defense's output (for cache keys and reports)."""
        return {"name": self.name, **{p.name: getattr(self, p.name, p.default) for p in self.params()}}

    def describe(self) -> dict:
        return {
            **self.config(),
            "domain": self.domain,
            "side": self.side,
            "transmitted": self.input_kind,
            "storage_bytes": self.storage_bytes(),
        }

    @property
    def recognizer(self) -> Recognizer:
        if self._recognizer is None:
            from faceveil.models import deployed_recognizer

            self._recognizer = deployed_recognizer()
        return self._recognizer

    # --- data flow ----------------------------------------------------------------------------
    input_kind: ClassVar[str] = "image"

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Client side: aligned chips ``[B,3,S,S]`` in [0,1] -> what is transmitted."""
        raise NotImplementedError

    def protect_stored(self, t: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Server side: transmitted data -> what is stored in the database (default: as is)."""
        return t

    def recover(self, t: Tensor) -> Tensor:
        """Server-side identity recovery before the recogniser (default: none)."""
        return t

    def leak(self, x: Tensor, scenario: str = "channel", rng: torch.Generator | None = None) -> Tensor:
        """What an attacker gets of chips ``x``: ``"channel"`` the transmitted data, ``"database"`` the
        stored templates (both with the same draws)."""
        if scenario == "channel":
            return self.protect(x, rng)
        if scenario == "database":
            return self.protect_stored(self.protect(x, rng), rng)
        raise ValueError(f"leakage scenario must be 'channel' or 'database', got {scenario!r}")

    def population_leak(self, x: Tensor, scenario: str = "channel", rng: torch.Generator | None = None) -> Tensor:
        """What an attacker gets of faces ``x`` of *many different users* (what attack benchmarks train and judge
        on): :meth:`leak` by default; a defense whose users each hold a key of their own gives every face its own
        key (drawn from ``rng``), which :meth:`leak` — one system, one client — cannot."""
        return self.leak(x, scenario, rng)

    def server_training_input(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """What an adapted server model is trained on, from clean chips (distillation): by default
        the recovered transmitted data; defenses that store something else override it."""
        return self.recover(self.protect(x, rng))

    def probe_transform(self, t: Tensor) -> Tensor:
        """Server-side processing of a transmitted probe before recovery (default: none)."""
        return t

    #: adaptive-attacker transforms of leaked data this defense knows (e.g. FaceObfuscator "abs")
    ATTACKER_VIEWS: ClassVar[tuple[str, ...]] = ()

    def attacker_view(self, view: str, t: Tensor) -> Tensor:
        """A defense-aware transform an adaptive attacker applies to leaked data before training
        and attacking (public knowledge only: no per-sample randomness, no secret key)."""
        raise ValueError(f"{self.name} defines no attacker view {view!r}; known: {list(self.ATTACKER_VIEWS)}")

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """The differentiable map a white-box attacker inverts: image -> leaked representation.

        Default (deterministic, differentiable defenses): the leak itself. Stochastic defenses may
        override with a map that is invariant to the unknown per-sample randomness."""
        if self.stochastic or not self.differentiable:
            raise NotImplementedError(f"{self.name}: no white-box forward map (stochastic or not differentiable)")
        t = self.protect(x, None)
        return self.protect_stored(t, None) if leakage == "database" else t

    def whitebox_target(self, t: Tensor) -> Tensor:
        """What the white-box attacker matches, computed from the leaked data (default: itself)."""
        return t

    def with_key(self, key) -> Defense:
        """The same defense under the client secret ``key`` (:attr:`needs_key` defenses only)."""
        raise FaceveilDataError(f"{self.name} uses no persistent client key; do not pass one")

    def bundle_state(self) -> dict[str, Tensor]:
        """Trained server-side parts a saved system needs besides :meth:`config` (networks trained on
        public faces, e.g. AdvFace's shadow model): never face data, never a client secret."""
        return {}

    def load_bundle_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`bundle_state` from a saved system."""
        if state:
            raise ValueError(f"{self.name} stores no state in a system bundle, got {sorted(state)}")

    def frozen_server(self) -> nn.Module:
        """The deployed recogniser applied to recovered protected data, without adaptation.

        Image-domain: the recogniser itself. Feature-domain defenses override this."""
        return self.recognizer

    def storage_bytes(self) -> int:
        """Bytes stored per face (float32 unless the defense says otherwise)."""
        shape = self.stored_shape()
        n = 1
        for s in shape:
            n *= s
        return 4 * n

    def stored_shape(self) -> tuple[int, ...]:
        s = self.recognizer.crop.size
        return (3, s, s)

    # --- helpers ------------------------------------------------------------------------------
    def _check_rng(self, rng: torch.Generator | None) -> torch.Generator:
        """``rng``, or for a stochastic defense called without one a generator freshly seeded from the OS
        CSPRNG (real use: nothing about the draw follows from public inputs; benchmarks pass seeded ones)."""
        if rng is not None:
            if not isinstance(rng, torch.Generator):
                raise TypeError(f"{self.name}: rng must be a torch.Generator, got {type(rng).__name__}")
            return rng
        return os_generator() if self.stochastic else torch.Generator().manual_seed(0)

    @staticmethod
    def _check_images(x: Tensor) -> Tensor:
        return check_images(x, "protect() input", strict=True)


def check_features(f: Tensor, shape: tuple[int, ...] | None, what: str) -> Tensor:
    """Validate a feature batch: tensor, float, finite, expected trailing shape."""
    if not isinstance(f, Tensor):
        raise FaceveilDataError(f"{what}: expected a torch.Tensor, got {type(f).__name__}")
    if not torch.is_floating_point(f):
        raise FaceveilDataError(f"{what}: expected float features, got dtype {f.dtype}")
    if shape is not None and tuple(f.shape[1:]) != tuple(shape):
        raise FaceveilDataError(f"{what}: expected shape [B,{','.join(map(str, shape))}], got {list(f.shape)}")
    if not torch.isfinite(f).all():
        raise FaceveilDataError(f"{what}: contains NaN or infinite values")
    return f


def get_defense(name: str, **kwargs) -> Defense:
    return DEFENSES.create(name, **kwargs)

"""GAN-prior template inversion through the pretrained 64x64 DCGAN of PyPI ``gan-face-generate``
(:func:`faceveil.models.generators.get_generator`): a leaked template ``t = E(x)`` (``E``: what the defense's
client leaks of an aligned chip ``x``; for the unprotected system dlib's 128-D embedding) is turned into a face
``G(z)`` of the generator, rendered into the recogniser's chip frame.

- ``ganinv-map`` (a learned mapping; Shahreza & Marcel, "Face reconstruction from facial templates by learning
  latent space of a generative adversarial network", NeurIPS 2023; needs ``pairs``): a small network ``M`` maps
  ``t`` to a latent ``z``. Its training pairs are unlimited: the attacker samples ``z ~ N(0, I)``, renders
  ``G(z)`` into the chip frame and runs his black-box client on it (:meth:`use_client`). On those pairs ``M``
  learns the latent (loss ``1 - cos(M(t), z)``; ``M``'s output lies on the sphere ``|z| = sqrt(nz)``, where
  ``N(0, I)`` puts its mass, so a regression to the mean cannot shrink it into ``G``'s texture region near 0)
  and the identity of ``G(M(t))`` (the deployed recogniser's distance to the embedding of ``G(z)``); on the
  harness's real public faces, which have no latent, the identity and pixel losses only.
- ``ganinv`` (mapping + per-target refinement; the latent search of Vendrow & Vendrow, "Realistic face
  reconstruction from deep embeddings", 2021, started from the mapping; needs ``pairs`` and ``forward_map``):
  Adam on the latent from ``M(t)`` so that the defense's differentiable forward map ``F`` (for the unprotected
  embedding: the public recogniser) of ``G(z)`` matches ``t``::

      min_z |F(G(z)) - t| / |t|,   z projected back onto |z| = sqrt(nz) after every step      (steps)

  then (``feature_steps``) the same in the generator's first feature map ``h`` (512x4x4) from ``h0 = head(z)``,
  with ``h >= 0`` (a ReLU output) and a prior ``prior_weight |h - h0|^2 / |h0|^2`` keeping it near ``G``'s
  manifold: more faithful faces than ``z`` alone can give.
- ``ganinv-es`` (query-only; the black-box search of Dong et al., "Reconstruct face from features based on genetic
  algorithm using GAN generator as a distribution constraint", Computers & Security 2023, with separable CMA-ES
  (Ros & Hansen 2008) and mirrored sampling instead of their genetic algorithm; needs ``queries``): no gradients
  and no training; the attacker submits candidate faces ``G(z)`` as probes to the deployed system's
  verification API against the leaked record (:class:`QueryOracle`) and reads only the match distance; within a
  budget of ``queries`` probes per target it returns the best candidate. The ``z`` of every candidate is
  projected onto the sphere before rendering, and the search starts from the generator's average face.

Outputs are ``[B,3,S,S]`` in [0,1] at ``target_size`` in the recogniser's crop geometry (the generator's frame
does not reach the chip's bottom rows: its edge pixels are replicated there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.attacks.base import Budget, OptimizationAttack, PairSource, ReconstructionAttack, register_attack
from faceveil.attacks.nets import InputNorm, MapToGrid, check_in_shape
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, pairwise_distance
from faceveil.models.generators import GENERATOR_NAMES, FaceGenerator, Frame, get_generator, warp
from faceveil.models.latent_search import search_latents

#: leaked data of the GAN training pool held in memory at most (bytes); beyond it the pool is smaller
POOL_MAX_BYTES = 1 << 30
#: faces refined together at most (the backward pass through the recogniser holds the activations of every face)
REFINE_CHUNK = 16


def sphere(z: Tensor) -> Tensor:
    """``z`` scaled onto the sphere of radius ``sqrt(nz)`` (where ``N(0, I)`` latents lie)."""
    return z * (math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True).clamp_min(1e-8))


def _to_sphere_(z: Tensor) -> None:
    z.mul_(math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True).clamp_min(1e-8))


def _nonneg_(h: Tensor) -> None:
    h.clamp_(min=0)


def chip_frame(size: int, padding: float) -> Frame:
    """The frame of a ``size``-pixel dlib-style chip with ``padding`` (:meth:`Frame.from_crop`)."""
    return Frame.from_crop(CropSpec(size, padding))


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def _check_num(name: str, v: object, lo: float, strict: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < lo or (strict and v == lo):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo:g}, got {v!r}")


class LatentMapper(nn.Module):
    """Leaked data -> a generator latent on the sphere ``|z| = sqrt(nz)``: :class:`InputNorm`, a convolutional
    stem to a 4x4 grid for maps (:class:`MapToGrid`), then an MLP (Linear, LayerNorm, LeakyReLU) to ``nz``."""

    def __init__(self, in_shape: tuple[int, ...], nz: int, hidden: int = 512, depth: int = 3) -> None:
        super().__init__()
        in_shape = check_in_shape(in_shape, "ganinv")
        self.norm = InputNorm(in_shape)
        if len(in_shape) == 1:
            self.stem: nn.Module = nn.Identity()
            d = in_shape[0]
        else:
            self.stem = nn.Sequential(MapToGrid(in_shape, 128, 4), nn.Flatten())  # type: ignore[arg-type]
            d = 128 * 16
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2)]
            d = hidden
        layers.append(nn.Linear(d, nz))
        self.mlp = nn.Sequential(*layers)

    def forward(self, t: Tensor) -> Tensor:
        return sphere(self.mlp(self.stem(self.norm(t))))


@register_attack("ganinv-map")
class GANMapping(ReconstructionAttack):
    """Learned template -> latent mapping (Shahreza & Marcel, NeurIPS 2023; module docstring), trained on GAN
    samples the attacker protects with his black-box client and on the harness's real public faces.

    ``gan_pairs`` GAN samples are drawn once per training (a pool, seeded), ``gan_batch`` of them join each real
    batch; the identity loss (weight ``identity_weight``, the deployed recogniser's distance) runs on the first
    ``id_batch`` real and ``id_batch`` GAN samples of a step (a backward pass through the recogniser costs
    ~30 ms per face on one core), the pixel loss (``loss``: l1 | l2, weight ``pixel_weight``) on every real
    face, the latent loss (weight ``latent_weight``) on every GAN sample. ``hidden``/``depth``: the MLP."""

    use_one_cycle: ClassVar[bool] = True
    #: its training step renders GAN faces through the attacked client (a defense, on the CPU) and the
    #: pretrained generator: kept on the CPU until those move with ``--device``
    cpu_only: ClassVar[bool] = True

    def __init__(self, *, generator: str = "digiface", hidden: int = 512, depth: int = 3, gan_pairs: int = 20000,
                 gan_batch: int = 64, id_batch: int = 8, latent_weight: float = 1.0, identity_weight: float = 1.0,
                 pixel_weight: float = 1.0, **kw) -> None:
        super().__init__(identity_weight=identity_weight, **kw)
        if generator not in GENERATOR_NAMES:
            raise ValueError(f"generator must be one of {', '.join(GENERATOR_NAMES)}, got {generator!r}")
        for name, v, lo in (("hidden", hidden, 8), ("depth", depth, 1), ("gan_pairs", gan_pairs, 0),
                            ("gan_batch", gan_batch, 0), ("id_batch", id_batch, 0)):
            _check_int(name, v, lo)
        for name, v in (("latent_weight", latent_weight), ("pixel_weight", pixel_weight)):
            _check_num(name, v, 0.0)
        _check_num("identity_weight", identity_weight, 0.0)
        self.generator, self.hidden, self.depth, self.gan_pairs, self.gan_batch = generator, hidden, depth, gan_pairs, gan_batch
        self.id_batch, self.latent_weight, self.pixel_weight = id_batch, float(latent_weight), float(pixel_weight)
        self._leak: Callable[[Tensor, torch.Generator], Tensor] | None = None
        self._crop: CropSpec | None = None
        self._pool: tuple[Tensor, Tensor, Tensor] | None = None
        self._gen: FaceGenerator | None = None

    # --- pieces --------------------------------------------------------------------------------
    @property
    def gen(self) -> FaceGenerator:
        if self._gen is None:
            self._gen = get_generator(self.generator)
        return self._gen

    @property
    def crop(self) -> CropSpec:
        """The recogniser's chip geometry (from :meth:`use_client`; else the deployed recogniser's)."""
        if self._crop is None:
            from faceveil.models import deployed_recognizer

            self._crop = deployed_recognizer().crop
        return self._crop

    def use_client(self, leak: Callable[[Tensor, torch.Generator], Tensor], crop) -> None:
        self._leak, self._crop = leak, crop

    def recognizer(self):
        """The deployed (public) recogniser of the identity loss."""
        if self._id_model is None:
            from faceveil.models import deployed_recognizer

            self._id_model = deployed_recognizer().eval()
        return self._id_model

    def render(self, w: Tensor, space: str = "z", size: int | None = None) -> Tensor:
        """``G(w)`` in the chip frame at ``size`` pixels (default: the recogniser's input size)."""
        return self.gen.render(w, space, chip_frame(size or self.crop.size, self.crop.padding))

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        return LatentMapper(in_shape, self.gen.nz, self.hidden, self.depth)

    def latents(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        """The mapping's latents ``M(t)`` ``[B,nz]`` (no gradient)."""
        self.check_protected(protected)
        assert self.net is not None
        self.net.eval()
        with torch.no_grad():
            out = [self.net(protected[s : s + batch_size].float()) for s in range(0, len(protected), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.gen.nz)

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        z = self.latents(protected, batch_size)
        with torch.no_grad():
            return self.render(z, "z", self.target_size).clamp(0, 1)

    # --- training ------------------------------------------------------------------------------
    def _pool_block(self, b: int) -> None:
        """Protect pool block ``b`` (64 samples): ``G(z)`` rendered into the chip, then the attacker's client,
        with draws seeded by the block (the same values whenever a block is made: resumed runs agree)."""
        assert self._pool is not None and self._leak is not None
        z, leaked, filled = self._pool
        sl = slice(64 * b, min(64 * (b + 1), len(z)))
        with torch.no_grad():
            x = self.render(z[sl]).clamp(0, 1)
        t = self._leak(x, torch.Generator().manual_seed(self.seed * 1_000_003 + b))
        if tuple(t.shape[1:]) != tuple(leaked.shape[1:]):
            raise FaceveilDataError(f"{self.name}: the client leaks {list(t.shape[1:])} for GAN samples but "
                                    f"{list(leaked.shape[1:])} for the training faces")
        leaked[sl] = t.detach().float()
        filled[b] = True

    def _gan_batch(self, step: int) -> tuple[Tensor, Tensor] | None:
        """The GAN pairs ``(z, leaked)`` of training step ``step``: ``gan_batch`` samples of the pool, in order on
        the first pass (each block protected when first needed, so the cost follows the steps run and the
        budget's time guard covers it), in a seeded permutation on later passes."""
        if self._pool is None:
            return None
        z, leaked, filled = self._pool
        n = len(z)
        epoch, start = divmod(step * self.gan_batch, n)
        idx = torch.arange(start, min(start + self.gan_batch, n))
        if epoch > 0:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 31 + epoch))[idx]
        for b in torch.unique(idx // 64).tolist():
            if not filled[b]:
                self._pool_block(int(b))
        return z[idx], leaked[idx]

    def fit(self, source: PairSource, budget: Budget, progress: bool = True, checkpoint=None,
            checkpoint_seconds: float = 300.0) -> GANMapping:
        """:meth:`ReconstructionAttack.fit` with a pool of ``gan_pairs`` seeded latents ``z ~ N(0, I)`` whose
        leaked data the attacker's client makes as training needs it (none without a client)."""
        self._pool = None
        _ = self.gen, self.recognizer()  # loaded before fit seeds torch: building their modules draws from it
        if self._leak is not None and self.gan_pairs > 0 and self.gan_batch > 0:
            shape = source.sample_shape()
            n = max(self.gan_batch, min(self.gan_pairs, POOL_MAX_BYTES // (4 * math.prod(shape))))
            z = torch.randn(n, self.gen.nz, generator=torch.Generator().manual_seed(self.seed * 7919 + 101))
            self._pool = (z, torch.empty(n, *shape), torch.zeros(-(-n // 64), dtype=torch.bool))
        try:
            return super().fit(source, budget, progress, checkpoint, checkpoint_seconds)  # type: ignore[return-value]
        finally:
            self._pool = None

    def _identity_target(self, x: Tensor) -> Tensor:
        rec = self.recognizer()
        with torch.no_grad():
            return rec(rec.prepare(x.clamp(0, 1)))

    def train_step(self, p: Tensor, target: Tensor, opt: torch.optim.Optimizer) -> float:
        assert self.net is not None
        gan = self._gan_batch(self.log.steps)
        n, k = len(p), self.id_batch
        inp = p if gan is None else torch.cat([p, gan[1]])
        z = self.net(inp)  # one pass: InputNorm's batch statistics see real and GAN leaks together
        loss = z.new_zeros(())
        if gan is not None and self.latent_weight > 0:
            loss = loss + self.latent_weight * (1 - F.cosine_similarity(z[n:], gan[0], dim=1)).mean()
        if k > 0 and (self.pixel_weight > 0 or self.identity_weight > 0):
            # the generator's backward pass costs about as much as the recogniser's: only on k real + k GAN faces
            faces = self.gen.decode(z[:k] if gan is None else torch.cat([z[:k], z[n : n + k]]), "z")
            kr = min(k, n)
            if self.pixel_weight > 0:
                y = warp(faces[:kr], self.gen.frame, chip_frame(self.target_size, self.crop.padding), "border")[0]
                loss = loss + self.pixel_weight * self.pixel_loss(y, target[:kr])
            if self.identity_weight > 0:
                tgt = [self._identity_target(target[:kr])]
                if gan is not None:
                    with torch.no_grad():
                        tgt.append(self._identity_target(self.render(gan[0][:k])))
                rec = self.recognizer()
                e = rec(rec.prepare(warp(faces, self.gen.frame, chip_frame(self.crop.size, self.crop.padding), "border")[0]))
                loss = loss + self.identity_weight * pairwise_distance(e, torch.cat(tgt), rec.metric).mean()
        params = self.parameters_to_train()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # not .backward(): nothing piles up in frozen models
        for q, g in zip(params, grads, strict=True):
            q.grad = g
        opt.step()
        return loss.item()


@register_attack("ganinv")
class GANInversion(GANMapping):
    """:class:`GANMapping`, then a per-target latent refinement through the defense's differentiable forward map
    (module docstring): ``steps`` Adam steps (``lr``) on ``z`` on the sphere, then ``feature_steps`` (``feature_lr``)
    on the first feature map with the prior ``prior_weight``.

    ``forward``: images ``[B,3,s,s]`` in [0,1] (chip geometry, ``s = input_size``, default the recogniser's) ->
    what ``target_map(leaked)`` gives for the leaked data (default: the leaked data itself)."""

    needs = frozenset({"pairs", "forward_map"})
    per_target = True
    NOT_CONFIG = ("forward", "target_map")
    #: parameters of the refinement only: a trained mapping is shared by every refinement setting
    REFINEMENT = ("steps", "lr", "feature_steps", "feature_lr", "prior_weight", "input_size")

    def __init__(self, *, forward: Callable[[Tensor], Tensor] | None = None,
                 target_map: Callable[[Tensor], Tensor] | None = None, input_size: int | None = None, steps: int = 40,
                 lr: float = 0.05, feature_steps: int = 20, feature_lr: float = 0.02, prior_weight: float = 1.0,
                 **kw) -> None:
        super().__init__(**kw)
        _check_int("steps", steps, 0)
        _check_int("feature_steps", feature_steps, 0)
        _check_num("lr", lr, 0.0, strict=True)
        _check_num("feature_lr", feature_lr, 0.0, strict=True)
        _check_num("prior_weight", prior_weight, 0.0)
        if input_size is not None:
            _check_int("input_size", input_size, 16)
        self.forward, self.target_map, self.input_size = forward, target_map, input_size
        self.steps, self.lr, self.feature_steps, self.feature_lr = steps, float(lr), feature_steps, float(feature_lr)
        self.prior_weight = float(prior_weight)
        self.trace: dict[str, Tensor] = {}

    def train_config(self) -> dict:
        c = {k: v for k, v in self.config().items() if k not in self.REFINEMENT}
        return c | {"name": "ganinv-map"}

    def _objective(self, target: Tensor) -> Callable[[Tensor, str], Tensor]:
        if self.forward is None:
            raise RuntimeError(f"{self.name}: give the differentiable forward map as forward=...")
        size = self.input_size or self.target_size
        tn = target.flatten(1).norm(dim=1).clamp_min(1e-8)

        def dist(w: Tensor, space: str) -> Tensor:
            f = self.forward(self.render(w, space, size))
            if f.shape != target.shape:
                raise FaceveilDataError(f"{self.name}: the forward map gives {list(f.shape[1:])} per face, the leaked "
                                        f"targets are {list(target.shape[1:])}")
            return (f - target).flatten(1).norm(dim=1) / tn

        return dist

    def refine(self, z0: Tensor, target: Tensor) -> tuple[Tensor, str]:
        """Refined latents and their space for mapped latents ``z0`` and targets ``target_map(leaked)``; the
        per-face relative distance before, after ``steps`` and at the end is in :attr:`trace`."""
        dist = self._objective(target)
        with torch.enable_grad():
            with torch.no_grad():
                d0 = dist(z0, "z")
            z = search_latents(lambda w: dist(w, "z"), z0, "adam", self.steps, self.lr, project=_to_sphere_) \
                if self.steps else z0
            w, space = z, "z"
            if self.feature_steps:
                h0 = self.gen.encode(z, "feature").detach()
                h0n = h0.pow(2).flatten(1).mean(1).clamp_min(1e-12)

                def loss(h: Tensor) -> Tensor:
                    return dist(h, "feature") + self.prior_weight * (h - h0).pow(2).flatten(1).mean(1) / h0n

                w, space = search_latents(loss, h0, "adam", self.feature_steps, self.feature_lr, project=_nonneg_), "feature"
            with torch.no_grad():
                self.trace = {"mapped": d0, "refined": dist(w, space)}
        return w, space

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        z0 = self.latents(protected, batch_size)
        if self.steps == 0 and self.feature_steps == 0:
            with torch.no_grad():
                return self.render(z0, "z", self.target_size).clamp(0, 1)
        out, traces = [], []
        chunk = min(batch_size, REFINE_CHUNK)  # faces are refined independently: a chunk only bounds memory
        for s in range(0, len(protected), chunk):
            t = protected[s : s + chunk].float()
            t = self.target_map(t) if self.target_map is not None else t
            w, space = self.refine(z0[s : s + chunk], t.detach())
            traces.append(self.trace)
            with torch.no_grad():
                out.append(self.render(w, space, self.target_size).clamp(0, 1))
        self.trace = {k: torch.cat([tr[k] for tr in traces]) for k in ("mapped", "refined")} if traces else {}
        return torch.cat(out) if out else torch.empty(0, 3, self.target_size, self.target_size)


# ---------------------------------------------------------------------------------------------
# Query-only: separable CMA-ES on the latent against the deployed system's match score
# ---------------------------------------------------------------------------------------------


@dataclass
class QueryOracle:
    """The deployed system's verification API as a query attacker sees it: ``score(probes, records)`` gives one
    match distance per probe (lower = more alike) for probe faces ``[N,3,size,size]`` in [0,1] (aligned chips of
    the recogniser's crop geometry, ``padding``) against leaked records ``[N,*record_shape]``. Gradients never
    pass; every probe scored counts as a query (:attr:`queries`)."""

    score: Callable[[Tensor, Tensor], Tensor]
    record_shape: tuple[int, ...]
    size: int = 150
    padding: float = 0.25
    chunk: int = 128
    queries: int = 0

    def __call__(self, probes: Tensor, records: Tensor) -> Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, len(probes), self.chunk):
                out.append(self.score(probes[s : s + self.chunk].clamp(0, 1), records[s : s + self.chunk]).detach().float())
                self.queries += len(probes[s : s + self.chunk])
        return torch.cat(out)


@register_attack("ganinv-es")
class GANInversionES(OptimizationAttack):
    """Query-only GAN-latent search (module docstring): separable CMA-ES (Ros & Hansen 2008; mirrored samples,
    rank-based weights on the better half) over ``z`` with ``population`` candidates per generation and initial
    step ``sigma``, from the generator's average face, within ``queries`` probes per target; returns each
    target's best candidate. ``oracle``: the system's match API (:class:`QueryOracle`)."""

    needs = frozenset({"queries"})
    NOT_CONFIG = ("oracle",)

    def __init__(self, *, oracle: QueryOracle | None = None, target_size: int = 112, generator: str = "digiface",
                 queries: int = 500, population: int = 20, sigma: float = 1.0, seed: int = 0) -> None:
        if generator not in GENERATOR_NAMES:
            raise ValueError(f"generator must be one of {', '.join(GENERATOR_NAMES)}, got {generator!r}")
        _check_int("population", population, 4)
        if population % 2:
            raise ValueError(f"population must be even (mirrored samples), got {population}")
        _check_int("queries", queries, population)
        _check_num("sigma", sigma, 0.0, strict=True)
        _check_int("target_size", target_size, 16)
        self.oracle, self.target_size, self.generator = oracle, target_size, generator
        self.queries, self.population, self.sigma, self.seed = queries, population, float(sigma), seed
        self._gen: FaceGenerator | None = None
        self._queries = 0
        self.trace: Tensor | None = None

    @property
    def gen(self) -> FaceGenerator:
        if self._gen is None:
            self._gen = get_generator(self.generator)
        return self._gen

    def attack_stats(self) -> dict[str, float]:
        return {"queries": float(self._queries)}

    def _check(self, records: Tensor) -> QueryOracle:
        if self.oracle is None:
            raise RuntimeError(f"{self.name}: give the system's match API as oracle=QueryOracle(...)")
        if not isinstance(records, Tensor) or not torch.is_floating_point(records):
            raise FaceveilDataError(f"{self.name}: leaked records must be a float tensor, got "
                                    f"{getattr(records, 'dtype', type(records).__name__)}")
        if tuple(records.shape[1:]) != tuple(self.oracle.record_shape):
            raise FaceveilDataError(f"{self.name}: the system stores [B,{','.join(map(str, self.oracle.record_shape))}] "
                                    f"records, got {list(records.shape)}")
        if not torch.isfinite(records).all():
            raise FaceveilDataError(f"{self.name}: leaked records contain NaN or infinite values")
        return self.oracle

    def search(self, records: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """sep-CMA-ES for a batch of records: (best latents ``[B,nz]``, best distance after each generation
        ``[G,B]``)."""
        oracle = self._check(records)
        frame = chip_frame(oracle.size, oracle.padding)
        b, n, lam = len(records), self.gen.nz, self.population
        mu = lam // 2
        wts = math.log(mu + 0.5) - torch.log(torch.arange(1, mu + 1, dtype=torch.float64))
        wts = (wts / wts.sum()).float()
        mueff = float(1 / (wts**2).sum())
        cs = (mueff + 2) / (n + mueff + 5)
        ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
        cc = 4 / (n + 4)
        c1 = 2 / ((n + 1.3) ** 2 + mueff) * (n + 2) / 3
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff) * (n + 2) / 3)
        chi = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        m = sphere(self.gen.average_latent("z")[None].expand(b, n).clone())
        sig = torch.full((b, 1), self.sigma)
        diag, pc, ps = torch.ones(b, n), torch.zeros(b, n), torch.zeros(b, n)
        best, best_z = torch.full((b,), math.inf), m.clone()
        trace = []
        rec = records.repeat_interleave(lam, 0)
        for _ in range(self.queries // lam):
            eps = torch.randn(b, mu, n, generator=g)
            eps = torch.cat([eps, -eps], 1)  # mirrored sampling
            y = eps * diag.sqrt()[:, None]
            cand = sphere((m[:, None] + sig[:, :, None] * y).reshape(b * lam, n))
            with torch.no_grad():
                f = oracle(self.gen.render(cand, "z", frame), rec).reshape(b, lam)
            fs, order = f.sort(dim=1)
            better = fs[:, 0] < best
            best_z[better] = cand.reshape(b, lam, n)[better, order[better, 0]]
            best = torch.minimum(best, fs[:, 0])
            trace.append(best.clone())
            sel = order[:, :mu, None].expand(-1, -1, n)
            ysel, esel = torch.gather(y, 1, sel), torch.gather(eps, 1, sel)
            yw = (wts[None, :, None] * ysel).sum(1)
            m = sphere(m + sig * yw)
            ps = (1 - cs) * ps + math.sqrt(cs * (2 - cs) * mueff) * (wts[None, :, None] * esel).sum(1)
            pc = (1 - cc) * pc + math.sqrt(cc * (2 - cc) * mueff) * yw
            diag = (1 - c1 - cmu) * diag + c1 * pc**2 + cmu * (wts[None, :, None] * ysel**2).sum(1)
            sig = sig * torch.exp((cs / ds) * (ps.norm(dim=1, keepdim=True) / chi - 1))
        return best_z, torch.stack(trace) if trace else best[None]

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        oracle = self._check(protected)
        before = oracle.queries
        g = torch.Generator().manual_seed(self.seed)
        out, traces = [], []
        frame = chip_frame(self.target_size, oracle.padding)
        for s in range(0, len(protected), batch_size):
            z, tr = self.search(protected[s : s + batch_size].float(), g)
            traces.append(tr)
            with torch.no_grad():
                out.append(self.gen.render(z, "z", frame).clamp(0, 1))
        self._queries = oracle.queries - before
        self.trace = torch.cat(traces, 1) if traces else None
        return torch.cat(out) if out else torch.empty(0, 3, self.target_size, self.target_size)

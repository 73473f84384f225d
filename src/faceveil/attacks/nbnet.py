"""``nbnet``: NbNet template inversion (Mai et al., "On the reconstruction of face images from deep face
templates", IEEE TPAMI 2019) with an identity loss through the public recogniser, trained on the
attacker's public faces plus faces sampled from a pretrained GAN.

- Decoder: ``dn``'s neighbourly de-convolution network (:func:`faceveil.attacks.dn.nbnet`: a fully
  connected stem from the template to an ``8w x S/16 x S/16`` grid, three dense NbBlocks, a last x2
  de-convolution to RGB); the class subclasses :class:`~faceveil.attacks.dn.DN`. With ``linear_start``
  (default) it is trained as a residual over the closed-form ``ridge`` decoder fitted on the same pairs
  (:class:`OverLinear`, last layer zero-initialised): training starts from the floor's reconstructions
  instead of from a blank decoder, which a short (ci: 150 steps) run does not get past otherwise.
- Loss (NbNet's perceptual-loss training, Sec. 3.3, and the identity loss of template-inversion
  attacks that own the recogniser):

  ``L = L_pix(x', x) + identity_weight * (1 - cos(f(x'), f(x))) + perceptual_weight * ||phi(x') - phi(x)||^2 / ||phi(x)||^2``

  with ``f`` the deployed recogniser (public, as dlib, ArcFace and the papers' backbones are; frozen,
  its input is the reconstruction resized to its crop size by ``prepare``: reconstructions are made in
  the recogniser's own crop geometry, at the target size) and ``phi`` its early unit
  ``perceptual_layer`` (dlib's ``res1`` maps, 32 x 35 x 35). The independent judge (faceres) exposes
  its intermediate nodes too, but it is the COS judge (a loss on it would no longer be judged
  independently) and costs ~9x dlib per image; dlib's early units come with the identity pass. The
  recogniser terms are computed on the first ``identity_batch`` samples of each (shuffled) batch: a
  dlib forward + backward at 150 px costs ~30 ms/image on one core, more than the decoder itself.
- Data (NbNet trains on faces from a face generator; synthetic-data inversion attacks do the same):
  besides his public faces the attacker samples ``synthetic_ratio`` times as many (at most
  ``synthetic_max``) faces from the pretrained DigiFace DCGAN (:func:`faceveil.models.generators.synthetic_chips`:
  z ~ N(0, I) -> 64x64 face -> warped into the recogniser's aligned crop, a seeded stream) and protects
  them with his black-box client like his own faces (declared by the ``"synthetic"`` need; an expensive
  client's protection budget is shared between both, :meth:`NbNet.public_share`).
- Defaults, measured at the ci profile (150 steps, unprotected 128-D dlib templates, 3,000 public + 3,000
  GAN faces, 100 LFW same-pairs; dlib SAR type I/II at FMR 1e-3, judge = faceres COS):
  identity 0.1 alone: SAR 48/17 %, COS 0.12; + perceptual 0.1: 58/21 %, COS 0.16 (identity 0.3: SRRA and
  COS lower; no jitter: higher SRRA, COS 0.08); + ridge start (the defaults): 91/45 %, COS 0.31, SRRA
  99/77 %, closer-to-own 99 % (ridge alone: 76/41 %, COS 0.33; dn: 5/0 %, COS 0.10). The identity term
  still fools dlib more than it restores the face: the judge's own SAR is 3/2 % (ridge 9/4 %).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.attacks.base import register_attack
from faceveil.attacks.dn import DN
from faceveil.devices import module_device
from faceveil.errors import FaceveilDataError
from faceveil.keys import research_generator

#: salt of the per-step draws of the recogniser terms' random transformations
JITTER_SALT = 53



def random_affine(n: int, jitter: float, generator: torch.Generator) -> Tensor:
    """``[n,2,3]`` affine_grid matrices: scale ``1 +- jitter``, shift ``+- jitter`` of the side, a horizontal
    flip with probability 1/2 (expectation over transformations, Athalye et al. ICML 2018)."""
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    s = 1 + jitter * u[:, 0]
    flip = torch.where(u[:, 3] < 0, -1.0, 1.0)
    zero = torch.zeros(n)
    return torch.stack([torch.stack([s * flip, zero, 2 * jitter * u[:, 1]], 1),
                        torch.stack([zero, s, 2 * jitter * u[:, 2]], 1)], 1)


def transformed(x: Tensor, theta: Tensor | None) -> Tensor:
    if theta is None:
        return x
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def recognizer_terms(model: nn.Module, out: Tensor, target: Tensor, layer: str | None,
                     theta: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``(1 - cos(f(out), f(target)))`` per sample and, with ``layer``, the relative squared error of the
    recogniser's ``layer`` features, per sample; the target's side carries no gradient. Images are resized
    to the recogniser's input size by its ``prepare`` (differentiable), then both moved by the same
    affine ``theta`` (:func:`random_affine`; None: as they are)."""
    x, y = transformed(model.prepare(out), theta), transformed(model.prepare(target), theta)
    names = model.layer_names() if layer is not None else []
    one_pass = layer is not None and names[-1:] == ["fc"]  # dlib: the last unit is the embedding
    if one_pass:
        fo = model.features(x, [layer, "fc"])
        with torch.no_grad():
            ft = model.features(y, [layer, "fc"])
        eo, et, po, pt = fo["fc"], ft["fc"], fo[layer], ft[layer]
    else:
        eo = model(x)
        with torch.no_grad():
            et = model(y)
        po = pt = None
        if layer is not None:
            po = model.features(x, [layer])[layer]
            with torch.no_grad():
                pt = model.features(y, [layer])[layer]
    ident = 1 - F.cosine_similarity(eo, et.detach())
    if po is None or pt is None:
        return ident, None
    pt = pt.detach()
    perc = (po - pt).pow(2).flatten(1).mean(1) / pt.pow(2).flatten(1).mean(1).clamp_min(1e-8)
    return ident, perc


class OverLinear(nn.Module):
    """``base(x) + 2 (decoder(x) - 1/2)``: the NbNet decoder as a residual over a fixed linear (ridge) decoder.
    The decoder's last layer starts at zero, so training starts from the closed-form floor's reconstructions."""

    def __init__(self, base: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.base, self.decoder = base, decoder
        last = decoder[-1].conv  # ToImage's last (de-)convolution
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + 2 * (self.decoder(x) - 0.5)


@register_attack("nbnet")
class NbNet(DN):
    """NbNet decoder (``dn``'s network) + identity and perceptual losses through the public recogniser,
    trained on public and GAN-sampled faces (module docstring).

    ``identity_weight``: weight of the cosine distance in the deployed recogniser's space;
    ``perceptual_weight`` / ``perceptual_layer``: the recogniser's early-unit feature loss;
    ``identity_batch``: samples per step that go through the recogniser; ``synthetic_ratio`` /
    ``synthetic_max``: GAN faces per public face / at most; ``generator``: which GAN
    (:func:`faceveil.models.generators.get_generator`)."""

    needs: ClassVar[frozenset[str]] = frozenset({"pairs", "synthetic"})

    def __init__(self, *, identity_weight: float = 0.1, perceptual_weight: float = 0.1, perceptual_layer: str = "res1",
                 identity_batch: int = 16, jitter: float = 0.05, synthetic_ratio: float = 1.0, synthetic_max: int = 16384,
                 generator: str = "digiface", linear_start: bool = True, linear_dim: int = 512,
                 **kw) -> None:
        super().__init__(identity_weight=identity_weight, **kw)
        for name, v in (("identity_weight", identity_weight), ("perceptual_weight", perceptual_weight),
                        ("jitter", jitter), ("synthetic_ratio", synthetic_ratio)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if identity_batch < 1 or synthetic_max < 0 or linear_dim < 1:
            raise ValueError(f"identity_batch and linear_dim must be >= 1 and synthetic_max >= 0, got {identity_batch}, "
                             f"{linear_dim}, {synthetic_max}")
        from faceveil.models.generators import GENERATOR_NAMES

        if generator not in GENERATOR_NAMES:
            raise ValueError(f"generator must be one of {', '.join(GENERATOR_NAMES)}, got {generator!r}")
        self.perceptual_weight, self.perceptual_layer, self.identity_batch = perceptual_weight, perceptual_layer, identity_batch
        self.jitter, self.linear_start, self.linear_dim = jitter, linear_start, linear_dim
        self._base: nn.Module | None = None  # the fitted ridge decoder (linear_start) of the current fit
        self.synthetic_ratio, self.synthetic_max, self.generator = synthetic_ratio, synthetic_max, generator
        self.term_log: dict[str, list[float]] = {"pixel": [], "identity": [], "perceptual": []}

    # --- network -------------------------------------------------------------------------------
    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        decoder = super().build(in_shape)
        if not self.linear_start:
            return decoder
        from faceveil.attacks.ridge import RidgeDecoder

        base = self._base if self._base is not None else RidgeDecoder(in_shape, self.target_size, self.linear_dim, self.seed)
        return OverLinear(base, decoder)

    def fit(self, source, budget, progress: bool = True, checkpoint=None, checkpoint_seconds: float = 300.0):
        """With ``linear_start``, first the closed-form ``ridge`` decoder on the same pairs (seconds; its
        penalty chosen on held-out pairs), then the decoder trained as a residual over it
        (:class:`OverLinear`); a resumed run refits the (deterministic) ridge part, then loads the checkpoint."""
        self._base = None
        if self.linear_start:
            from dataclasses import replace

            from faceveil.attacks.ridge import Ridge

            r = Ridge(target_size=self.target_size, seed=self.seed, max_dim=self.linear_dim)
            r.fit(source, replace(budget, max_steps=None), progress=False)
            self._base = r.net
        try:
            return super().fit(source, budget, progress, checkpoint, checkpoint_seconds)
        finally:
            self._base = None

    # --- data ----------------------------------------------------------------------------------
    def synthetic_count(self, n_public: int) -> int:
        return min(self.synthetic_max, round(self.synthetic_ratio * n_public))

    def public_share(self, n_total: int) -> int:
        """Public faces of ``n_total`` (public + GAN faces) an expensive client can protect:
        ``n_total / (1 + synthetic_ratio)``, at least ``n_total - synthetic_max``."""
        return max(1, math.ceil(n_total / (1 + self.synthetic_ratio)), n_total - self.synthetic_max)

    def synthetic_chips(self, crop, n_public: int, seed: int) -> tuple | None:
        """``synthetic_count(n_public)`` GAN faces aligned to ``crop`` (seeded by the attacker's seed)."""
        n = self.synthetic_count(n_public)
        if n == 0:
            return None
        from faceveil.models.generators import synthetic_chips

        return synthetic_chips(n, crop, seed, self.generator), {"generator": self.generator, "n": n, "seed": seed,
                                                               "crop": str(crop), "v": 1}

    # --- losses --------------------------------------------------------------------------------
    def recognizer(self) -> nn.Module:
        """The deployed recogniser, frozen (loaded on first use)."""
        if self._id_model is None:
            from faceveil.models import deployed_recognizer

            m = deployed_recognizer(module_device(self.net) if self.net is not None else None).eval()
            for q in m.parameters():
                q.requires_grad_(False)
            if self.perceptual_weight > 0 and self.perceptual_layer not in m.layer_names():
                raise FaceveilDataError(f"nbnet: the deployed recogniser {m.name} has no layer {self.perceptual_layer!r}")
            self._id_model = m
        return self._id_model

    def identity_loss(self, out: Tensor, target: Tensor) -> Tensor:
        return recognizer_terms(self.recognizer(), out, target, None)[0].mean()

    def train_step(self, p: Tensor, target: Tensor, opt: torch.optim.Optimizer) -> float:
        assert self.net is not None
        out = self.net(p)
        pix = self.pixel_loss(out, target)
        loss = pix
        self.term_log["pixel"].append(float(pix.detach()))
        if self.identity_weight > 0 or self.perceptual_weight > 0:
            k = min(self.identity_batch, len(out))  # batches are shuffled: the first k are a random subset
            layer = self.perceptual_layer if self.perceptual_weight > 0 else None
            theta = None
            if self.jitter > 0:
                theta = random_affine(k, self.jitter, research_generator(self.seed, self.log.steps, JITTER_SALT))
            ident, perc = recognizer_terms(self.recognizer(), out[:k], target[:k], layer, theta)
            loss = loss + self.identity_weight * ident.mean()
            self.term_log["identity"].append(float(ident.detach().mean()))
            if perc is not None:
                loss = loss + self.perceptual_weight * perc.mean()
                self.term_log["perceptual"].append(float(perc.detach().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(pix.detach())

    def make_optimizer(self, budget):
        self.term_log = {"pixel": [], "identity": [], "perceptual": []}  # a fresh run
        return super().make_optimizer(budget)

    def optimizer_state(self) -> dict:
        return {"term_log": self.term_log}

    def load_optimizer_state(self, state: dict) -> None:
        self.term_log = {k: list(v) for k, v in state.get("term_log", {}).items()} or self.term_log

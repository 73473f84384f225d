"""DeepBlur (Li & Choi, "DeepBlur: A Simple and Effective Method for Natural Image Obfuscation",
arXiv:2104.02655): invert the face into an unconditionally pretrained generator, blur the latent
representation with a Gaussian filter, regenerate.

Section 3.2, as implemented here (client side, image domain):

1. **Latent representation search.** Starting from the "average face" latent ``w0 = mean of n
   sampled latents`` (:meth:`FaceGenerator.average_latent`), find ``w* = argmin_w L(x, G(w))``.
   The paper's ``L`` compares VGG16 (ImageNet) features; ImageNet weights cannot be installed here,
   so ``L`` compares intermediate feature maps of the deployed dlib ResNet (default ``res1``,
   ``res4``, ``res8`` of :meth:`DlibResNet.features`: 35x35x32, 17x17x64, 9x9x128) plus a pixel
   term, each as a relative squared error::

       L(x, y) = sum_l ||phi_l(y) - phi_l(x)||^2 / ||phi_l(x)||^2 + lambda_pix ||y - x||^2 / ||x||^2

   ``y`` is ``G(w)`` warped from the GAN's frame into the chip (:func:`~faceveil.models.generators.warp`,
   frames in :mod:`faceveil.models.generators`) and composited over ``x`` where the GAN's frame
   does not reach (the chip's bottom rows), so those pixels cost nothing. Optimisers: L-BFGS
   (default, 10 iterations, strong-Wolfe line search; the paper's choice), Adam, AdaGrad and SGD
   with momentum (Fig. 7: ``bench/deepblur.py``). Each face is inverted independently (L-BFGS runs
   one face at a time; the first-order methods run a chunk with a summed loss, which is the same
   per-face optimisation), so a face's output never depends on the batch it came in.
2. **Deep blurring** (eqs. 1-2). ``G_sigma(k) = exp(-k^2 / 2 sigma^2) / Z`` (eq. 1), truncated at
   ``4 sigma`` like ``scipy.ndimage.gaussian_filter`` and normalised to sum 1, and
   ``w' = G_sigma * w`` (eq. 2): along the 100-D vector for ``space="z"``, a separable 2-D filter
   per channel over the 4x4 grid for ``space="feature"`` (512x4x4). ``border="average"`` (default)
   filters the deviation from the average latent, zero outside the latent's extent::

       w' = w0 + G_sigma * (w - w0)

   so that as sigma grows the taps that fall outside the latent carry weight away and ``w' -> w0``:
   the average face (the paper's Fig. 9; sigma = 100 gives it to within 1e-2 in both spaces).
   ``border="reflect"`` filters ``w`` itself with half-sample-symmetric borders (the literal eq. 2,
   scipy's default): large sigma then makes every channel constant, which for this DCGAN is not a face.
   ``sigma = 0`` is the identity (the plain inversion).
3. **Regeneration.** ``G(w')`` (64x64) is warped back into the chip (the recogniser's crop, e.g.
   150x150). ``background="keep"`` pastes it inside a feathered ellipse over the face (template
   units: centre (0.49, 0.45), radii (0.66, 0.68), feather 0.08) and keeps the original pixels
   outside (the opaque ellipse lies inside the GAN frame; the outer half of the feather band at the
   chin reaches ~2 rows past it, where the frame's last row is replicated); ``background="generated"``
   replaces the whole chip (the GAN frame's edge rows are replicated where it does not reach).

Notes. The generator is a 64x64 DCGAN on synthetic faces, not the paper's StyleGAN: inversions are
blurrier and less faithful than the paper's. In the
``z`` space the average latent is ~0 and ``G(0)`` is a texture (no mapping network), hence the
default ``space="feature"``. The inversion's feature loss uses dlib, the deployed recogniser; the
independent judge (faceres) is what measures identity in the benchmark.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.blur import border_index, gaussian_kernel
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, Recognizer
from faceveil.models.generators import GENERATOR_NAMES, SPACES, FaceGenerator, Frame, get_generator, warp
from faceveil.models.latent_search import DEFAULT_LR, OPTIMIZERS, InversionLog, search_latents  # noqa: F401 (re-exported)

BORDERS = ("average", "reflect")
BACKGROUNDS = ("keep", "generated")
#: feathered face ellipse (template units): centre x, centre y, radius x, radius y, feather
FACE_ELLIPSE = (0.49, 0.45, 0.66, 0.68, 0.08)


# ---------------------------------------------------------------------------------------------
# Deep blurring (eqs. 1-2)
# ---------------------------------------------------------------------------------------------


def blur_matrix(n: int, sigma: float, border: str = "average") -> Tensor:
    """The ``n x n`` matrix of eq. 2 along one axis: ``(K v)_i = sum_t G_sigma(t) v_{i+t}`` with the
    eq. 1 kernel truncated at ``4 sigma``; samples outside ``0..n-1`` are zero (``"average"``: the
    filtered signal is a deviation from the average latent) or mirrored (``"reflect"``).
    ``sigma = 0`` gives the identity."""
    if border not in BORDERS:
        raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    if sigma == 0:
        return torch.eye(n, dtype=torch.float64)
    g = gaussian_kernel(sigma)
    r = len(g) // 2
    k = torch.zeros(n, n, dtype=torch.float64)
    t = torch.arange(-r, r + 1)
    for i in range(n):
        j = i + t
        if border == "average":
            ok = (j >= 0) & (j < n)
            k[i].index_add_(0, j[ok], g[ok])
        else:
            k[i].index_add_(0, border_index(n, r, r, "reflect")[j + r], g)
    return k


def deep_blur(w: Tensor, sigma: float, w_avg: Tensor | None = None, border: str = "average") -> Tensor:
    """Eq. 2 on latents ``w``: ``[B,D]`` (1-D filter along D) or ``[B,C,H,W]`` (2-D filter per
    channel). ``border="average"`` filters ``w - w_avg`` with zero extension and adds ``w_avg`` back."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if border == "average" and w_avg is None:
        raise ValueError("border='average' needs the average latent")
    if sigma == 0:
        return w.clone()
    base = w_avg.to(w.dtype) if border == "average" else torch.zeros((), dtype=w.dtype)
    d = w - base
    if w.ndim == 2:
        out = d @ blur_matrix(w.shape[1], sigma, border).to(w.dtype).T
    elif w.ndim == 4:
        kh = blur_matrix(w.shape[2], sigma, border).to(w.dtype)
        kw = blur_matrix(w.shape[3], sigma, border).to(w.dtype)
        out = kh @ d @ kw.T
    else:
        raise ValueError(f"latents must be [B,D] or [B,C,H,W], got {list(w.shape)}")
    return out + base


def face_mask(frame: Frame, ellipse: tuple[float, float, float, float, float] = FACE_ELLIPSE) -> Tensor:
    """Soft mask ``[1,1,S,S]`` in [0,1]: 1 inside the face ellipse (template units), a linear ramp
    of ``feather`` template units across its edge."""
    cx, cy, rx, ry, feather = ellipse
    q = torch.arange(frame.size, dtype=torch.float64)
    ux = ((q - frame.ox) / frame.scale)[None, :]
    uy = ((q - frame.oy) / frame.scale)[:, None]
    rho = torch.sqrt(((ux - cx) / rx) ** 2 + ((uy - cy) / ry) ** 2)  # 1 on the ellipse
    dist = (rho - 1.0) * min(rx, ry)  # ~ distance outside the ellipse in template units
    return (0.5 - dist / feather).clamp(0, 1).float()[None, None]


# ---------------------------------------------------------------------------------------------
# Latent representation search
# ---------------------------------------------------------------------------------------------


class InversionLoss:
    """``L(x, G(w))`` of the module docstring for a batch of target chips ``x``."""

    def __init__(self, x: Tensor, generator: FaceGenerator, space: str, recognizer: Recognizer, layers: list[str],
                 pixel_weight: float, chip_padding: float) -> None:
        self.x, self.gen, self.space, self.rec, self.layers, self.pixel_weight = x, generator, space, recognizer, layers, pixel_weight
        self.chip = Frame.from_crop(CropSpec(int(x.shape[-1]), chip_padding))
        with torch.no_grad():
            self.tf = self.rec.features(self.rec.prepare(x), layers) if layers else {}
            self.tn = {k: v.pow(2).flatten(1).mean(1).clamp_min(1e-12) for k, v in self.tf.items()}
            self.xn = x.pow(2).flatten(1).mean(1).clamp_min(1e-12)

    def composite(self, w: Tensor) -> Tensor:
        face, cov = warp(self.gen.decode(w, self.space), self.gen.frame, self.chip)
        return cov * face + (1 - cov) * self.x

    def __call__(self, w: Tensor) -> Tensor:
        """Per-face losses ``[B]``."""
        y = self.composite(w)
        loss = self.pixel_weight * (y - self.x).pow(2).flatten(1).mean(1) / self.xn
        if self.layers:
            f = self.rec.features(self.rec.prepare(y), self.layers)
            for k in self.layers:
                loss = loss + (f[k] - self.tf[k]).pow(2).flatten(1).mean(1) / self.tn[k]
        return loss


# ---------------------------------------------------------------------------------------------
# The defense
# ---------------------------------------------------------------------------------------------


def _number(name: str, v: object, lo: float, allow_none: bool = False, strict: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < lo or (strict and v == lo):
        raise ValueError(f"deepblur: {name} must be a finite number {'>' if strict else '>='} {lo:g}, got {v!r}")


@register_defense("deepblur")
class DeepBlur(Defense):
    """DeepBlur (module docstring): latent search -> Gaussian blur of the latent -> regeneration,
    pasted back into the chip. Deterministic (the search starts from the average latent); needs
    autograd to protect (it runs its own ``torch.enable_grad``) and returns a detached image."""

    #: fast configuration for the contract tests
    EXAMPLE: ClassVar[dict] = {"steps": 3}

    side = "client"
    stochastic = False
    differentiable = False
    needs_grad_to_protect = True
    protect_ms_hint = 900.0  # L-BFGS latent search, batch 32, one core: 525-836 ms/face measured in bench quick runs
    HELP: ClassVar[dict[str, str]] = {
        "sigma": "std of the Gaussian filter on the latent (eqs. 1-2); 0 = plain inversion; paper: 0.5, 1, 2, 5",
        "space": "latent space: feature (first 512x4x4 map, 2-D filter per channel) | z (100-D input, 1-D filter)",
        "border": "average (blur the deviation from the average latent; large sigma -> average face) | reflect (literal eq. 2)",
        "optimizer": "latent search: lbfgs (paper) | adam | adagrad | sgd (momentum 0.9)",
        "steps": "latent-search iterations (L-BFGS iterations or gradient steps), >= 0",
        "lr": "optimiser step size (default per optimiser: lbfgs 1, adam 0.05, adagrad 0.2, sgd 20)",
        "layers": "recogniser feature maps in the search loss, comma-separated (dlib units, e.g. res1,res4,res8), or ''",
        "pixel_weight": "weight of the relative pixel error in the search loss, >= 0",
        "background": "keep (paste the face ellipse, original background) | generated (the whole chip regenerated)",
        "generator": "digiface (pretrained DCGAN, PyPI gan-face-generate) | public (our DCGAN on the public faces)",
        "avg_samples": "latents averaged for the average-face starting point",
        "chunk": "faces optimised together by the first-order optimisers (L-BFGS: always 1)",
    }

    def __init__(self, *, sigma: float = 2.0, space: str = "feature", border: str = "average", optimizer: str = "lbfgs",
                 steps: int = 10, lr: float | None = None, layers: str = "res1,res4,res8", pixel_weight: float = 1.0,
                 background: str = "keep", generator: str = "digiface", avg_samples: int = 10000, chunk: int = 8,
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        _number("sigma", sigma, 0.0)
        if space not in SPACES:
            raise ValueError(f"deepblur: space must be one of {', '.join(SPACES)}, got {space!r}")
        if border not in BORDERS:
            raise ValueError(f"deepblur: border must be one of {', '.join(BORDERS)}, got {border!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"deepblur: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        for name, v, lo in (("steps", steps, 0), ("avg_samples", avg_samples, 1), ("chunk", chunk, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"deepblur: {name} must be an integer >= {lo}, got {v!r}")
        _number("lr", lr, 0.0, allow_none=True, strict=True)
        _number("pixel_weight", pixel_weight, 0.0)
        if background not in BACKGROUNDS:
            raise ValueError(f"deepblur: background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        if generator not in GENERATOR_NAMES:
            raise ValueError(f"deepblur: generator must be one of {', '.join(GENERATOR_NAMES)}, got {generator!r}")
        if not isinstance(layers, str):
            raise ValueError(f"deepblur: layers must be a comma-separated string, got {layers!r}")
        names = [s.strip() for s in layers.split(",") if s.strip()]
        if not names and pixel_weight == 0:
            raise ValueError("deepblur: the search loss is empty (no layers and pixel_weight=0)")
        known = self.recognizer.layer_names()
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"deepblur: unknown recogniser layer(s) {', '.join(bad)}; layers: {', '.join(known)}")
        self.sigma, self.space, self.border, self.optimizer, self.steps = float(sigma), space, border, optimizer, steps
        self.lr, self.layers, self.pixel_weight, self.background = lr, ",".join(names), float(pixel_weight), background
        self.generator, self.avg_samples, self.chunk = generator, avg_samples, chunk
        self._layer_list = names
        self._gen: FaceGenerator | None = None

    def config(self) -> dict:
        c = super().config()
        c.pop("chunk", None)  # does not change any output (faces are optimised independently)
        return c

    # --- pieces --------------------------------------------------------------------------------
    @property
    def gen(self) -> FaceGenerator:
        if self._gen is None:
            self._gen = get_generator(self.generator)
        return self._gen

    def average_latent(self) -> Tensor:
        return self.gen.average_latent(self.space, self.avg_samples, 0)

    def step_size(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def inversion_config(self) -> dict:
        """Everything that determines :meth:`invert`'s output (cache key for latents)."""
        c = self.config()
        for k in ("sigma", "border", "background"):
            c.pop(k)
        return c | {"recognizer": self.recognizer.name}

    def invert(self, x: Tensor, log: InversionLog | None = None) -> Tensor:
        """Latent representation search (Section 3.2) for chips ``x`` ``[B,3,S,S]`` (the recogniser's
        crop geometry, any square size): latents ``[B,*shape]``."""
        x = self._check_images(x).detach()
        if x.shape[-1] != x.shape[-2]:
            raise FaceveilDataError(f"deepblur: expected square aligned chips, got {x.shape[-2]}x{x.shape[-1]}")
        self.recognizer.eval()
        w_avg = self.average_latent()
        chunk = 1 if self.optimizer == "lbfgs" else self.chunk
        out = []
        with torch.enable_grad():
            for s in range(0, len(x), chunk):
                xb = x[s : s + chunk]
                loss = InversionLoss(xb, self.gen, self.space, self.recognizer, self._layer_list, self.pixel_weight,
                                     self.recognizer.crop.padding)
                w0 = w_avg.expand(len(xb), *w_avg.shape)
                out.append(search_latents(loss, w0, self.optimizer, self.steps, self.step_size(), log))
        return torch.cat(out) if out else w_avg.expand(0, *w_avg.shape)

    def inversion_loss(self, x: Tensor, w: Tensor) -> Tensor:
        """Per-face search loss of latents ``w`` for chips ``x`` (no gradient)."""
        with torch.no_grad():
            return InversionLoss(x, self.gen, self.space, self.recognizer, self._layer_list, self.pixel_weight,
                                 self.recognizer.crop.padding)(w)

    def blur(self, w: Tensor, sigma: float | None = None) -> Tensor:
        """Deep blurring ``w' = g_sigma(w)`` (eqs. 1-2), with this defense's border rule."""
        s = self.sigma if sigma is None else float(sigma)
        return deep_blur(w, s, self.average_latent(), self.border)

    def regenerate(self, w: Tensor) -> Tensor:
        """``G(w)``: ``[B,3,64,64]`` in [0,1] in the generator's frame."""
        with torch.no_grad():
            return self.gen.decode(w, self.space)

    def paste(self, face: Tensor, x: Tensor) -> Tensor:
        """Generated faces (generator frame) -> chips shaped like ``x``: the face ellipse over the
        original background (``keep``) or the whole chip (``generated``)."""
        chip = Frame.from_crop(CropSpec(int(x.shape[-1]), self.recognizer.crop.padding))
        y, _ = warp(face, self.gen.frame, chip, padding_mode="border")
        if self.background == "keep":
            m = face_mask(chip).to(x.dtype)
            y = m * y + (1 - m) * x
        return y.clamp(0, 1)

    # --- the defense -----------------------------------------------------------------------------
    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        w = self.invert(x)
        return self.paste(self.regenerate(self.blur(w)), x).detach()

    def protect_sigmas(self, x: Tensor, sigmas: list[float], w: Tensor | None = None) -> dict[float, Tensor]:
        """One latent search, several blur levels: ``{sigma: protected chips}`` (same as calling
        :meth:`protect` with each sigma)."""
        w = self.invert(x) if w is None else w
        return {float(s): self.paste(self.regenerate(self.blur(w, s)), x).detach() for s in sigmas}

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

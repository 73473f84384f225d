"""PMT and MR-PMT (Pu, Chen et al., "Facial Data Minimization: Shallow Model as Your Privacy
Filter", arXiv 2310.15590 / IEEE TDSC 2025): the service hands its registered users the shallow
part ``E_c`` (the first layers) of its recogniser like a public key; the user uploads an
*obfuscated* image ``x~`` (or its features ``z~ = E_c(x~)``) that starts from noise and is optimised
until ``E_c(x~) ~= E_c(x)``. The upload looks like noise, yet the authorised recogniser — whose
deeper layers only see ``E_c``'s output — recognises the person; other (unauthorised) models, whose
own first layers were never matched, should not.

Algorithm 1 (basic PMT), batched::

    x~_0 = init(x)                       Gaussian noise (default) | pixel shuffle | heavy blur (Table 3)
    z    = E_c(x)
    for k in 1..K:
        J    = || E_c(x~_{k-1}) - z ||^2
        x~_k = clip_[0,1]( x~_{k-1} - alpha * sign(grad_x~ J) )
    return x~_K, z~ = E_c(x~_K)

The paper prints the update as ``x~ + alpha * sign(grad J)``; with ``J`` the distance to be made
small that is gradient *ascent*, which would push the features away from ``z``. We take the
descent step (``- alpha * sign``), which is what the stated goal ``E_c(x~) ~= E_c(x)`` requires.

Algorithm 2 (perturbation enhancement, Section 5.3), each switchable:

- data augmentation: every iteration a random ``T`` is drawn and applied to *both* images,
  ``J = ||E_c(T(x~)) - E_c(T(x))||^2`` (``augment``: ``noise`` — additive Gaussian noise of std
  ``aug_noise``, the default; ``affine`` — rotation ±10°, scale 0.9..1.1, shift ±5 %; ``mix`` — the
  affine map followed by the noise). ``T`` simulates the preprocessing a server may apply.
- layer aggregation (``aggregate``): the matched representation concatenates the cut layer with
  earlier layers of ``E_c``, each average-pooled (adaptive average pooling) to the cut layer's
  spatial size. On by default, the paper's chosen setting: ``aggregate="default"`` matches three
  earlier layers of every authorised model (:data:`DEFAULT_AGGREGATE`: dlib's conv1, relu1 and
  pool1; faceres's conv1+bn, its ReLU6 and the first depthwise convolution; mobilefacenet's first
  convolution, its PReLU and the separable block's output); ``""`` matches the cut alone; a
  comma-separated list names layers of ``model`` (the other authorised models then match their cut
  alone).
- translation-invariant perturbation (``kernel``, ``kernel_length`` = k): the gradient is
  convolved, per channel, with a normalised kernel ``W`` of support ``[-k, k]^2`` before its sign
  is taken — ``gaussian``: ``exp(-i^2 / 2 s^2)`` with ``s = k / sqrt(3)`` (the std of a uniform
  distribution on ``[-k, k]``), or ``linear``: ``k + 1 - |i|``; separable, weights summing to one
  (:func:`ti_kernel`). k = 0 (or ``kernel="none"``) is the identity.

MR-PMT (eq. 8): ``models`` lists M authorised recognisers; the objective is the sum over their
shallow models, ``J = sum_m ||E_c^m(x~) - E_c^m(x)||^2``. Every term (and every aggregated layer)
is divided by its own value at ``x~_0`` (per sample), so all terms start at 1 and models (and
layers) whose features have different scales or large constant offsets (mobilefacenet's first
layers carry big batch-norm biases) count equally; for a single model and layer this is a
per-sample positive factor, which signed steps ignore — Algorithm 1 is unchanged. Traces report
the relative error ``||f - z||^2 / ||z||^2`` (:func:`block_errors`).

Defaults (a CPU budget, not the paper's): K = 100 iterations of alpha = 0.01 (2.55 grey levels),
Gaussian-noise start, noise augmentation (std 0.02), layer aggregation, Gaussian TI kernel of length
1 (3x3) — the enhanced PMT of Algorithm 2; ``augment="none", aggregate="", kernel="none"`` is
Algorithm 1 exactly.

Shallow models (:data:`DEFAULT_CUTS`, "the first five layers" of each recogniser):

- ``dlib``: ``res1`` — conv1 (7x7/2) + affine + relu + max-pool + the first residual block, the
  five units after the input normalisation (3 convolutions; ``[32, 35, 35]``);
- ``mobilefacenet``: conv 3x3/2 + PReLU, depthwise 3x3 + PReLU, pointwise 1x1 conv (five layers,
  3 convolutions; ``[64, 56, 56]``), node ``MobileFaceNet/MobileFaceNet/Conv/BatchNorm/FusedBatchNorm``;
- ``faceres``: the Keras MobileNet layers conv1, conv1_bn, conv1_relu, conv_dw_1, conv_dw_1_bn
  (2 convolutions; ``[32, 112, 112]``), node ``conv_dw_1_bn/batchnorm_1/add_1``.

``at`` overrides the cut of ``model`` (a layer name of ``recognizer.layer_names()`` or its index
there); the other models of ``models`` always use their default cut.

Geometry. ``x~`` lives in the crop of the deployed model ``model`` (its :class:`CropSpec`); another
authorised model sees ``x`` and ``x~`` re-cropped to its own geometry (the same differentiable
re-mapping for both, so its target is consistent).

Server. Image upload: the authorised recogniser applied to ``x~`` (``frozen_server`` = the
recogniser). Feature upload: the rest of the network applied to ``z~`` (``frozen_server`` = the server
part of ``model.split(at)``).

What PMT does *not* hide. By design the authorised model recognises the person from the upload, so
whoever holds the upload and the public ``E_c`` — the service, or anyone the shallow model was
shared with — can invert ``E_c`` (the white-box attack of eqs. 2-4 uses exactly ``whitebox_forward``)
or simply run the authorised model: PMT protects against *visual* inspection and *unauthorised*
models, not against identity recognition by the authorised one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import CropSpec, Recognizer

#: default cut ("first five layers") per recogniser; see the module docstring
DEFAULT_CUTS: dict[str, str] = {
    "dlib": "res1",
    "mobilefacenet": "MobileFaceNet/MobileFaceNet/Conv/BatchNorm/FusedBatchNorm",
    "faceres": "conv_dw_1_bn/batchnorm_1/add_1",
}
#: Algorithm 2's layer aggregation by default (``aggregate="default"``): three layers of ``E_c`` before the
#: default cut of each authorised model, earliest first
DEFAULT_AGGREGATE: dict[str, tuple[str, ...]] = {
    "dlib": ("conv1", "relu1", "pool1"),
    "mobilefacenet": ("MobileFaceNet/MobileFaceNet/Conv2d_0/BatchNorm/FusedBatchNorm", "MobileFaceNet/MobileFaceNet/Conv2d_0/add",
                      "MobileFaceNet/MobileFaceNet/SeparableConv2d/add"),
    "faceres": ("conv1_bn/batchnorm_1/add_1", "conv1_relu/clip_by_value", "conv_dw_1/depthwise"),
}
UPLOADS = ("image", "features")
INITS = ("noise", "shuffle", "blur")
AUGMENTS = ("none", "noise", "affine", "mix")
KERNELS = ("gaussian", "linear", "none")
#: Gaussian-noise initialisation: N(0.5, NOISE_INIT_STD^2), clipped to [0,1]
NOISE_INIT_STD = 0.5
#: heavy-blur initialisation: Gaussian blur with sigma = BLUR_INIT_FRACTION * image side (15 px at 150)
BLUR_INIT_FRACTION = 0.1
#: random affine augmentation ranges: rotation (degrees), scale, shift (fraction of the side)
AFFINE_ROT_DEG, AFFINE_SCALE, AFFINE_SHIFT = 10.0, 0.1, 0.05
MAX_KERNEL_LENGTH = 15


# ---------------------------------------------------------------------------------------------
# Pieces of Algorithms 1 and 2
# ---------------------------------------------------------------------------------------------


def ti_kernel(kind: str, length: int) -> Tensor:
    """The translation-invariance kernel ``W`` (``[2k+1, 2k+1]``, float64, sums to one) of
    Algorithm 2: separable ``w(i) w(j)``, ``w(i) = exp(-i^2 / (2 s^2))`` with ``s = k / sqrt(3)``
    (``gaussian``) or ``w(i) = k + 1 - |i|`` (``linear``), for ``i = -k..k``; ``[[1.]]`` for k = 0
    or ``kind="none"``."""
    if kind not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kind!r}")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_KERNEL_LENGTH:
        raise ValueError(f"kernel_length must be an integer in 0..{MAX_KERNEL_LENGTH}, got {length!r}")
    if kind == "none" or length == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    i = torch.arange(-length, length + 1, dtype=torch.float64)
    if kind == "gaussian":
        s = length / math.sqrt(3.0)
        w = torch.exp(-(i**2) / (2 * s * s))
    else:
        w = length + 1 - i.abs()
    w = w / w.sum()
    return torch.outer(w, w)


def smooth_gradient(g: Tensor, kernel: Tensor) -> Tensor:
    """``W * g``: per-channel convolution with the (symmetric) kernel, zero padding ("same")."""
    if kernel.numel() == 1:
        return g
    k = kernel.shape[-1]
    w = kernel.to(g.dtype).expand(g.shape[1], 1, k, k)
    return F.conv2d(g, w, padding=k // 2, groups=g.shape[1])


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (support ±3 sigma, reflect padding; the kernel is cropped to the image)."""
    if sigma <= 0:
        return x
    r = min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    i = torch.arange(-r, r + 1, dtype=x.dtype)
    w = torch.exp(-(i**2) / (2 * sigma * sigma))
    w = w / w.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def initial_image(x: Tensor, init: str, rng: torch.Generator) -> Tensor:
    """x~_0 of Algorithm 1 (Table 3): ``noise`` — ``clip(N(0.5, 0.5^2))`` independent of ``x``;
    ``shuffle`` ("random sort") — the pixels of ``x`` in a random order (each pixel keeps its RGB
    triple; one permutation per image); ``blur`` — ``x`` blurred with a Gaussian of sigma = 10 % of
    the side."""
    if init == "noise":
        return (0.5 + NOISE_INIT_STD * torch.randn(x.shape, generator=rng, dtype=x.dtype)).clamp(0, 1)
    if init == "shuffle":
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        perm = torch.stack([torch.randperm(h * w, generator=rng) for _ in range(b)])
        return flat.gather(2, perm[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w).clone()
    if init == "blur":
        return gaussian_blur(x, BLUR_INIT_FRACTION * x.shape[-1]).clamp(0, 1)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def random_affine(n: int, rng: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[n, 2, 3]`` affine_grid matrices: rotation ±AFFINE_ROT_DEG, isotropic scale 1 ± AFFINE_SCALE,
    shift ±AFFINE_SHIFT of the side (uniform)."""
    u = torch.rand(n, 4, generator=rng, dtype=torch.float64) * 2 - 1
    a = u[:, 0] * math.radians(AFFINE_ROT_DEG)
    s = 1 + u[:, 1] * AFFINE_SCALE
    tx, ty = u[:, 2] * 2 * AFFINE_SHIFT, u[:, 3] * 2 * AFFINE_SHIFT  # normalised coords span 2
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    return theta.to(dtype)


class Augmentation:
    """One draw of ``T`` (Algorithm 2), applied identically to ``x`` and ``x~``."""

    def __init__(self, mode: str, shape: torch.Size, rng: torch.Generator, noise_std: float, dtype: torch.dtype) -> None:
        self.theta = random_affine(shape[0], rng, dtype) if mode in ("affine", "mix") else None
        self.noise = noise_std * torch.randn(shape, generator=rng, dtype=dtype) if mode in ("noise", "mix") and noise_std > 0 \
            else None

    def __call__(self, x: Tensor) -> Tensor:
        if self.theta is not None:
            grid = F.affine_grid(self.theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.noise is not None:
            x = x + self.noise
        return x


# ---------------------------------------------------------------------------------------------
# Shallow models
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _shared_recognizer(name: str) -> Recognizer:
    """One frozen instance per recogniser name, shared by every PMT defense of the process."""
    from faceveil.models import get_recognizer

    return get_recognizer(name).eval()


def resolve_cut(recognizer: Recognizer, at: str | int | None) -> str:
    """A cut of ``recognizer`` as a layer name: ``None``/``""``/``"default"`` -> :data:`DEFAULT_CUTS`;
    an int (or digit string) indexes :meth:`Recognizer.layer_names`; names are checked."""
    try:
        names = recognizer.layer_names()
    except NotImplementedError:
        raise ValueError(f"pmt: recogniser {recognizer.name!r} cannot be split, so it has no shallow model") from None
    if at is None or at in ("", "default"):
        if recognizer.name not in DEFAULT_CUTS:
            raise ValueError(f"pmt: no default cut for {recognizer.name!r}; pass at=<layer name>")
        at = DEFAULT_CUTS[recognizer.name]
    if isinstance(at, str) and at.lstrip("-").isdigit():
        at = int(at)
    if isinstance(at, int):
        if not 0 <= at < len(names) - 1:
            raise ValueError(f"pmt: cut index {at} out of range 0..{len(names) - 2} for {recognizer.name}")
        at = names[at]
    if at not in names:
        raise ValueError(f"pmt: {recognizer.name} has no cut {at!r}; see its layer_names()")
    recognizer.split(at)  # leaves layers on both sides
    return at


def default_aggregate(recognizer: Recognizer, cut: str) -> list[str]:
    """The layers :data:`DEFAULT_AGGREGATE` lists for ``recognizer`` that lie before ``cut`` (none for a recogniser
    it does not list)."""
    order = recognizer.layer_names()
    return [a for a in DEFAULT_AGGREGATE.get(recognizer.name, ()) if a in order and order.index(a) < order.index(cut)]


class ShallowModel(nn.Module):
    """``E_c`` of one authorised recogniser as PMT matches it: images in the ``crop`` geometry (any
    size) -> re-cropped/resized to the recogniser's input -> the cut layer's features, concatenated
    with the average-pooled ``aggregate`` layers (Algorithm 2). ``forward`` returns a list of
    ``[B, D_l]`` blocks, one per matched layer (earliest first, the cut last)."""

    def __init__(self, recognizer: Recognizer, at: str, aggregate: Sequence[str] = (), crop: CropSpec | None = None) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.at = at
        self.layers = [*aggregate, at]
        self.crop = crop or recognizer.crop

    def view(self, x: Tensor) -> Tensor:
        """Differentiable re-mapping of ``crop``-geometry images to the recogniser's input."""
        rec = self.recognizer
        if self.crop != rec.crop:
            from faceveil.data.chips import recrop

            return recrop(x, self.crop, rec.crop)
        s = rec.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=x.shape[-1] > s)
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.recognizer.features(self.view(x), self.layers)
        cut = maps[self.at]
        out = []
        for name in self.layers[:-1]:
            m = maps[name]
            if m.ndim == 4 and cut.ndim == 4 and m.shape[-2:] != cut.shape[-2:]:
                m = F.adaptive_avg_pool2d(m, cut.shape[-2:])
            out.append(m.flatten(1))
        out.append(cut.flatten(1))
        return out


def block_errors(feats: list[list[Tensor]], targets: list[list[Tensor]]) -> list[Tensor]:
    """Per-sample relative squared errors ``mean((f - z)^2) / mean(z^2)``, one ``[B]`` tensor per
    (model, layer) block, in order."""
    out = []
    for fm, zm in zip(feats, targets, strict=True):
        for f, z in zip(fm, zm, strict=True):
            out.append((f - z).pow(2).mean(1) / z.pow(2).mean(1).clamp_min(1e-12))
    return out


def matching_loss(feats: list[list[Tensor]], targets: list[list[Tensor]], weights: list[Tensor] | None = None) -> Tensor:
    """Per-sample ``J = sum_blocks w_b * ||f_b - z_b||^2`` over the (model, layer) blocks (eq. 8).
    Without ``weights`` every block is its relative error (:func:`block_errors`) — what traces
    report; :meth:`PMT.obfuscate` weights each block by one over its value at ``x~_0``."""
    errs = block_errors(feats, targets)
    if weights is not None:
        errs = [e * w for e, w in zip(errs, weights, strict=True)]
    return torch.stack(errs).sum(0)


# ---------------------------------------------------------------------------------------------
# The defense
# ---------------------------------------------------------------------------------------------


@register_defense("pmt")
class PMT(Defense):
    """PMT / MR-PMT (module docstring): upload an obfuscated image whose shallow features match the
    face's (``upload="image"``) or those features (``"features"``); the deployed recogniser is
    ``model``; ``models`` (comma-separated, must include ``model``) turns on MR-PMT."""

    #: fast configuration for the contract tests
    EXAMPLE: ClassVar[dict] = {"iterations": 2}

    side = "client"
    stochastic = True
    differentiable = False
    needs_grad_to_protect = True
    protect_ms_hint = 5000.0  # K=100 signed-gradient steps: 3.7-8 s/face
    HELP: ClassVar[dict[str, str]] = {
        "upload": "image (obfuscated image x~) | features (z~ = E_c(x~), server runs the rest of the network)",
        "model": "the deployed, authorised recogniser: dlib | mobilefacenet | faceres",
        "at": "cut of `model` (layer name or index of layer_names()); empty = the default 'first five layers'",
        "models": "MR-PMT: comma-separated authorised recognisers (must include `model`); empty = `model` only",
        "iterations": "K, signed-gradient iterations (Algorithm 1)",
        "alpha": "step size in [0,1] pixel units per iteration",
        "init": "x~_0: noise (Gaussian) | shuffle (random pixel order) | blur (heavy Gaussian blur)",
        "augment": "Algorithm 2 augmentation T applied to x and x~: none | noise | affine | mix",
        "aug_noise": "std of the Gaussian-noise augmentation (pixel units)",
        "aggregate": ("Algorithm 2 layer aggregation: default (three layers of each authorised E_c, the paper's "
                      "setting) | empty (the cut alone) | comma-separated earlier layers of `model`"),
        "kernel": "translation-invariant step: gaussian | linear | none",
        "kernel_length": "kernel half-width k (support [-k,k]; gaussian sigma = k/sqrt(3)); 0 = off",
    }

    def __init__(self, *, upload: str = "image", model: str = "dlib", at: str = "", models: str = "",
                 iterations: int = 100, alpha: float = 0.01, init: str = "noise", augment: str = "noise",
                 aug_noise: float = 0.02, aggregate: str = "default", kernel: str = "gaussian", kernel_length: int = 1,
                 recognizer: Recognizer | None = None) -> None:
        if upload not in UPLOADS:
            raise ValueError(f"pmt: upload must be one of {UPLOADS}, got {upload!r}")
        if init not in INITS:
            raise ValueError(f"pmt: init must be one of {INITS}, got {init!r}")
        if augment not in AUGMENTS:
            raise ValueError(f"pmt: augment must be one of {AUGMENTS}, got {augment!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"pmt: iterations must be an integer >= 1, got {iterations!r}")
        for name, v, hi in (("alpha", alpha, 1.0), ("aug_noise", aug_noise, 1.0)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= hi:
                raise ValueError(f"pmt: {name} must be a number in [0, {hi}], got {v!r}")
        if alpha <= 0:
            raise ValueError(f"pmt: alpha must be > 0, got {alpha!r}")
        self.kernel_weights = ti_kernel(kernel, kernel_length)
        if recognizer is not None and recognizer.name != model:
            raise ValueError(f"pmt: the recogniser passed is {recognizer.name!r} but model={model!r}")
        super().__init__(recognizer if recognizer is not None else _shared_recognizer(model))
        names = [m.strip() for m in models.split(",") if m.strip()] if models else [model]
        if len(set(names)) != len(names):
            raise ValueError(f"pmt: models lists a recogniser twice: {models!r}")
        if model not in names:
            raise ValueError(f"pmt: the deployed model {model!r} must be one of the authorised models {names}")
        self.upload, self.model, self.at, self.models = upload, model, at, models
        self.iterations, self.alpha, self.init = iterations, float(alpha), init
        # the declared cost scales with K: 50 ms per signed-gradient step and face (5 s at the paper's K = 100)
        self.protect_ms_hint = 50.0 * iterations
        self.augment, self.aug_noise, self.aggregate = augment, float(aug_noise), aggregate
        self.kernel, self.kernel_length = kernel, kernel_length
        self.authorised = [model] + [n for n in names if n != model]
        self.cut = resolve_cut(self.recognizer, at)
        if not isinstance(aggregate, str):
            raise ValueError(f"pmt: aggregate must be 'default', '' or comma-separated layer names, got {aggregate!r}")
        default = aggregate.strip() == "default"
        agg = default_aggregate(self.recognizer, self.cut) if default else [a.strip() for a in aggregate.split(",") if a.strip()]
        order = self.recognizer.layer_names()
        for a in agg:
            if a not in order or order.index(a) >= order.index(self.cut):
                raise ValueError(f"pmt: aggregate layer {a!r} must be a layer of {model} before the cut {self.cut!r}")
        crop = self.recognizer.crop
        shallow = [ShallowModel(self.recognizer, self.cut, agg, crop)]
        for n in self.authorised[1:]:
            rec = _shared_recognizer(n)
            cut = resolve_cut(rec, None)
            shallow.append(ShallowModel(rec, cut, default_aggregate(rec, cut) if default else (), crop))
        self.shallow = shallow
        self._parts: tuple[nn.Module, nn.Module] | None = None

    # --- declared properties --------------------------------------------------------------------
    @property
    def domain(self) -> str:  # type: ignore[override]
        return "image" if self.upload == "image" else "feature"

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return "image" if self.upload == "image" else "map"

    def split_parts(self) -> tuple[nn.Module, nn.Module]:
        """``(E_c, rest)`` of the deployed model at the cut."""
        if self._parts is None:
            self._parts = self.recognizer.split(self.cut)
        return self._parts

    def client_network(self) -> nn.Module:
        """``E_c`` of the deployed model (for feature-space attackers such as ``transrec``)."""
        return self.split_parts()[0]

    # --- Algorithms 1 / 2 -----------------------------------------------------------------------
    def _features(self, x: Tensor) -> list[list[Tensor]]:
        return [m(x) for m in self.shallow]

    def objective(self, x_tilde: Tensor, x: Tensor) -> Tensor:
        """Per-sample relative matching error (sum of :func:`block_errors`) without augmentation."""
        with torch.no_grad():
            z = self._features(x)
            return matching_loss(self._features(x_tilde), z)

    def obfuscate(self, x: Tensor, rng: torch.Generator | None = None, trace: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Algorithms 1-2 on a batch of chips (the deployed model's crop, any size): returns
        ``(x~_K, z~ = E_c(x~_K), trace)`` where ``trace`` (if asked) is ``[K + 1, B]``: ``J`` without
        augmentation at every iterate."""
        rng = self._check_rng(rng)
        x = self.recognizer.prepare(self._check_images(x)).detach()
        xt = initial_image(x, self.init, rng)
        kernel = self.kernel_weights.to(x.dtype)
        traces: list[Tensor] = []
        with torch.no_grad():
            z_clean = self._features(x)
            # eq. 8 weights: every (model, layer) block starts at 1 (models/layers count equally)
            weights = [1.0 / e.clamp_min(1e-12) for e in block_errors(self._features(xt), z_clean)]
        for _ in range(self.iterations):
            if trace:
                with torch.no_grad():
                    traces.append(matching_loss(self._features(xt), z_clean))
            if self.augment == "none":
                t_x, z = xt, z_clean
                aug = None
            else:
                aug = Augmentation(self.augment, x.shape, rng, self.aug_noise, x.dtype)
                with torch.no_grad():
                    z = self._features(aug(x))
            with torch.enable_grad():
                v = xt.detach().requires_grad_(True)
                t_x = aug(v) if aug is not None else v
                j = matching_loss(self._features(t_x), z, weights)
                (g,) = torch.autograd.grad(j.sum(), v)
            with torch.no_grad():
                xt = (xt - self.alpha * smooth_gradient(g, kernel).sign()).clamp_(0, 1)
        with torch.no_grad():
            if trace:
                traces.append(matching_loss(self._features(xt), z_clean))
            z_tilde = self.client_network()(xt)
        return xt.detach(), z_tilde.detach(), torch.stack(traces) if trace else None

    # --- data flow ------------------------------------------------------------------------------
    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x_tilde, z_tilde, _ = self.obfuscate(x, rng)
        return x_tilde if self.upload == "image" else z_tilde

    def frozen_server(self) -> nn.Module:
        return self.recognizer if self.upload == "image" else self.split_parts()[1]

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """The white-box attacker's model of the upload (eqs. 2-4): PMT is built so that the upload
        and the face have the same ``E_c`` features, so for an image upload the attacker models the
        upload of ``x`` as ``x`` itself, for a feature upload as ``E_c(x)``; :meth:`whitebox_target`
        then maps both to ``E_c`` space, where the inversion matches them."""
        x = self.recognizer.prepare(x)
        return x if self.upload == "image" else self.client_network()(x)

    def whitebox_target(self, t: Tensor) -> Tensor:
        """``E_c(t)`` for an uploaded image (what anyone holding the public ``E_c`` computes from
        it), the features themselves for a feature upload. Differentiable."""
        return self.client_network()(t) if self.upload == "image" else t

    def stored_shape(self) -> tuple[int, ...]:
        if self.upload == "image":
            return super().stored_shape()
        s = self.recognizer.input_size
        with torch.no_grad():
            return tuple(self.client_network()(torch.zeros(1, 3, s, s)).shape[1:])

    def storage_bytes(self) -> int:
        if self.upload == "image":
            s = self.recognizer.input_size
            return 3 * s * s  # an 8-bit image
        return super().storage_bytes()

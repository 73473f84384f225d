"""FaceObfuscator (Jin et al.): frequency-domain visual-information deletion, identity-retained
stochastic obfuscation on the client, identity recovery on the server.

Client (Sections 4.2-4.3, Algorithm 1):

1. aligned face -> greyscale 112x112 -> upscaled x8 (``upsample``: bilinear by default; nearest
   would make every AC coefficient of every 8x8 block zero) -> 896x896 -> JPEG-style block DCT
   (8x8 blocks, orthonormal DCT-II) -> 64 frequency channels of 112x112, named in JPEG zigzag
   order (DC, AC01, AC10, AC20, AC11, ...; ACuv = vertical frequency u, horizontal v);
2. channel selection (default AC01 and AC10: 2 of 64 — visual-information deletion);
3. self-normalisation per image and channel: a_k = (f_k - E[f_k]) / sqrt(Var[f_k] + beta),
   variance with Bessel's correction (Appendix B);
4. stochastic obfuscation: e = a * eps with eps = (-1)^u * b^v, u ~ Bernoulli(1/2) per element,
   v ~ U{Z_lower..Z_upper} per channel (integer), defaults b = 2, [-60, 60].

Server (Algorithm 2): per channel, if max|e_k| > 0: r = floor(-log_b max|e_k|),
d_k = e_k * b^(r + bias), else d_k = 0. Since r <= -log_b m < r + 1, max|d_k| = m b^(r + bias) lies
in (b^(bias-1), b^bias] for b > 1 (the issue's "[b^bias, b^(bias+1))" is this interval shifted by
one: it would need r = floor(-log_b m) + 1; we implement Algorithm 2 as written). A student
recogniser trained on d (fresh obfuscation draws every epoch) recognises the person.

What |d| depends on (the adaptive attack). With M_k = max|a_k| and v_k an integer,
r = floor(-v_k - log_b M_k) = -v_k + floor(-log_b M_k), hence

    |d_k| = |a_k| * b^(floor(-log_b M_k) + bias)

The secret exponents v_k cancel and only the element signs (-1)^u stay random: |d| is a
deterministic function of the clean normalised frequency channels, computable by anyone from any
obfuscated upload with the public b (every client knows b). An attacker who takes |d| removes all
of the obfuscation's randomness; what is left protecting the face is only the deletion of 62 of
64 channels and the sign loss. ``attacker_view("abs")`` is that transform; the benchmark measures
it beside the paper's non-adaptive attacks.

Float32 range (parameter validation). Self-normalised channels of N = 112*112 elements satisfy
|a| <= sqrt(N - 1) < 2^7; a normalised value is meaningful down to 2^-24 (float32 resolution
relative to 1). Obfuscated magnitudes must stay normal float32 numbers (2^-126 .. 2^128):
overflow needs Z_upper*log2(b) + 7 <= 127, underflow Z_lower*log2(b) - 24 >= -126, i.e.
``Z_upper * log2 b <= 120`` and ``Z_lower * log2 b >= -102``. For b = 2 any range within
[-102, 120] is allowed; b = 100 allows [-15, 18]. b must be in (0,1) or (1,inf) and not close to
1 (|log2 b| >= 0.1), else the "scale" barely changes anything and recovery is ill-conditioned.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer

# ---------------------------------------------------------------------------------------------
# Block DCT (JPEG)
# ---------------------------------------------------------------------------------------------


def zigzag_order(n: int = 8) -> list[tuple[int, int]]:
    """JPEG zigzag scan of an n x n block: (row u, column v) pairs, DC first."""
    out = []
    for s in range(2 * n - 1):
        diag = [(u, s - u) for u in range(n) if 0 <= s - u < n]
        out += diag if s % 2 else diag[::-1]  # even diagonals run bottom-left -> top-right
    return out


ZIGZAG = zigzag_order()
CHANNEL_NAMES = ["DC" if (u, v) == (0, 0) else f"AC{u}{v}" for u, v in ZIGZAG]


def channel_index(name: str) -> int:
    try:
        return CHANNEL_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown frequency channel {name!r}; names: {', '.join(CHANNEL_NAMES)}") from None


@lru_cache(maxsize=4)
def dct_matrix(n: int = 8) -> Tensor:
    """Orthonormal DCT-II matrix D (rows = frequencies): X = D x D^T for a block x."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def block_dct(x: Tensor, block: int = 8) -> Tensor:
    """Block DCT of ``[B,1,H,W]`` (H, W multiples of ``block``) -> ``[B,64,H/8,W/8]`` in zigzag
    channel order; equals ``scipy.fft.dctn(blk, norm='ortho')`` on every 8x8 block."""
    b, _, h, w = x.shape
    d = dct_matrix(block).to(x.dtype)
    blocks = x.reshape(b, h // block, block, w // block, block).permute(0, 1, 3, 2, 4)  # [B,h,w,8,8]
    coef = d @ blocks @ d.T
    flat = coef.reshape(b, h // block, w // block, block * block)
    order = torch.tensor([u * block + v for u, v in zigzag_order(block)])
    return flat[..., order].permute(0, 3, 1, 2).contiguous()


def block_idct(c: Tensor, block: int = 8) -> Tensor:
    """Inverse of :func:`block_dct` (all 64 channels)."""
    b, _, h, w = c.shape
    d = dct_matrix(block).to(c.dtype)
    order = torch.tensor([u * block + v for u, v in zigzag_order(block)])
    flat = torch.empty(b, h, w, block * block, dtype=c.dtype)
    flat[..., order] = c.permute(0, 2, 3, 1)
    blocks = d.T @ flat.reshape(b, h, w, block, block) @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, 1, h * block, w * block)


@lru_cache(maxsize=8)
def upsampled_dct_kernels(upsample: str = "bilinear", upscale: int = 8) -> Tensor:
    """The 64 linear filters that give "upscale x8, then 8x8 block DCT" directly on the small image.

    Upscaling by the block size and taking a block DCT is linear and shift-invariant per block, and
    block (i, j) depends only on small-image pixels (i-r..i+r, j-r..j+r) (r = 1 bilinear, 2 bicubic;
    torch clamps at the borders = replicate padding). So channel c is a k x k correlation with kernel
    K_c, read off the impulse response of the explicit pipeline. ~100x faster than materialising
    the 896x896 image; equal to it to float rounding (tests compare both)."""
    r = {"bilinear": 1, "bicubic": 2}[upsample]
    n = 4 * r + 4
    c = n // 2
    imp = torch.zeros(1, 1, n, n, dtype=torch.float64)
    imp[0, 0, c, c] = 1.0
    out = block_dct(F.interpolate(imp, scale_factor=upscale, mode=upsample, align_corners=False), upscale)
    k = 2 * r + 1
    kern = torch.empty(out.shape[1], 1, k, k, dtype=torch.float64)
    for a in range(k):
        for b in range(k):
            kern[:, 0, a, b] = out[0, :, c - a + r, c - b + r]
    return kern


def grey_face(x: Tensor, size: int = 112) -> Tensor:
    """RGB chips ``[B,3,S,S]`` in [0,1] -> ITU-R 601 luma in 0-255 at ``size`` x ``size``."""
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) * 255.0
    if grey.shape[-1] != size:
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return grey


def frequency_channels(x: Tensor, size: int = 112, upscale: int = 8, upsample: str = "bilinear",
                       channels: list[int] | None = None) -> Tensor:
    """FaceObfuscator step 1: RGB chips -> greyscale ``size`` x ``size`` (0-255) -> upscaled ``upscale``x
    -> block DCT -> ``[B,C,size,size]`` (all 64 zigzag channels, or the ``channels`` indices).

    ``nearest`` upsampling is computed explicitly (its AC coefficients are all zero)."""
    grey = grey_face(x, size)
    if upsample == "nearest":
        c = block_dct(F.interpolate(grey, scale_factor=upscale, mode="nearest").double(), upscale).float()
        return c if channels is None else c[:, channels]
    kern = upsampled_dct_kernels(upsample, upscale)
    if channels is not None:
        kern = kern[channels]
    r = kern.shape[-1] // 2
    return F.conv2d(F.pad(grey, (r, r, r, r), mode="replicate"), kern.to(grey.dtype))


def self_normalise(f: Tensor, beta: float = 1e-6) -> Tensor:
    """Appendix B: per image and channel, (f - mean) / sqrt(var + beta), Bessel-corrected var."""
    mean = f.mean(dim=(-2, -1), keepdim=True)
    var = f.var(dim=(-2, -1), keepdim=True, unbiased=True)
    return (f - mean) / torch.sqrt(var + beta)


def identity_recovery(e: Tensor, b: float, bias: int = 0) -> Tensor:
    """Algorithm 2 (server): per channel, d = e * b^(floor(-log_b max|e|) + bias); zero channels stay
    zero; max|d| in (b^(bias-1), b^bias] for b > 1. Computed in float64 (no intermediate overflow)."""
    e64 = e.double()
    m = e64.abs().amax(dim=(-2, -1), keepdim=True)
    nz = m > 0
    logb = math.log(b)
    r = torch.floor(-torch.log(torch.where(nz, m, torch.ones_like(m))) / logb)
    d = e64 * torch.exp((r + bias) * logb)
    return torch.where(nz, d, torch.zeros_like(d)).float()


# ---------------------------------------------------------------------------------------------
# The defense
# ---------------------------------------------------------------------------------------------


def validate_obfuscation(b: float, z_lower: int, z_upper: int) -> None:
    """Refuse bases close to 1 and ranges whose magnitudes leave float32 (see module docstring)."""
    if not (b > 0 and b != 1 and math.isfinite(b)):
        raise ValueError(f"b must be in (0,1) or (1,inf), got {b}")
    lb = math.log2(b)
    if abs(lb) < 0.1:
        raise ValueError(f"b={b} is too close to 1 (|log2 b| = {abs(lb):.3f} < 0.1): obfuscation would be negligible")
    if int(z_lower) != z_lower or int(z_upper) != z_upper or z_lower > z_upper:
        raise ValueError(f"the exponent range must be integers with Z_lower <= Z_upper, got [{z_lower}, {z_upper}]")
    lo, hi = sorted((z_lower * lb, z_upper * lb))
    if hi > 120 or lo < -102:
        raise ValueError(
            f"b={b} with range [{z_lower}, {z_upper}] scales by 2^{lo:.0f}..2^{hi:.0f}: outside float32 for normalised "
            f"inputs; need every Z*log2(b) within [-102, 120] (for b={b}: Z in [{math.ceil(-102 / abs(lb))}, "
            f"{math.floor(120 / abs(lb))}] when b>1)"
        )


@register_defense("faceobfuscator")
class FaceObfuscator(Defense):
    """FaceObfuscator (module docstring). ``obfuscate=False`` gives the deletion-only ablation,
    ``channels="all"`` with ``obfuscate=False`` the clean 64-channel (Arcface-FD) baseline;
    ``recover=False`` feeds the server the raw obfuscated data (Table 5: accuracy collapses)."""

    domain = "feature"
    side = "both"
    stochastic = True
    differentiable = True
    needs_adapted_server = True
    input_kind = "map"
    ATTACKER_VIEWS = ("abs",)
    HELP: ClassVar[dict[str, str]] = {
        "channels": "frequency channels kept, comma-separated zigzag names (AC01,AC10) or 'all'",
        "b": "obfuscation base b (paper: 2)",
        "z_lower": "lower exponent Z_lower (paper: -60)",
        "z_upper": "upper exponent Z_upper (paper: 60)",
        "beta": "self-normalisation stabiliser",
        "bias": "recovery bias: max|d| in (b^(bias-1), b^bias]",
        "obfuscate": "apply the stochastic obfuscation (False: deletion only)",
        "normalise": "self-normalise channels",
        "recover": "server identity recovery (Algorithm 2)",
        "upsample": "x8 upscaling: bilinear | bicubic",
        "size": "greyscale face size before upscaling",
    }

    def __init__(self, *, channels: str = "AC01,AC10", b: float = 2.0, z_lower: int = -60, z_upper: int = 60,
                 beta: float = 1e-6, bias: int = 0, obfuscate: bool = True, normalise: bool = True, recover: bool = True,
                 upsample: str = "bilinear", size: int = 112, recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"upsample must be 'bilinear' or 'bicubic' (nearest zeroes every AC coefficient), got {upsample!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        if obfuscate:
            validate_obfuscation(b, z_lower, z_upper)
        self.channels, self.b, self.z_lower, self.z_upper = channels, float(b), int(z_lower), int(z_upper)
        self.beta, self.bias, self.obfuscate, self.normalise = float(beta), int(bias), obfuscate, normalise
        self.recover_ids, self.upsample, self.size = recover, upsample, int(size)
        names = CHANNEL_NAMES if channels == "all" else [c.strip() for c in channels.split(",") if c.strip()]
        if not names:
            raise ValueError("select at least one frequency channel")
        self.channel_idx = [channel_index(n) for n in names]
        self.stochastic = obfuscate  # type: ignore[misc]

    def config(self) -> dict:
        c = super().config()
        c["recover"] = self.recover_ids
        return c

    # --- client -------------------------------------------------------------------------------
    def deleted(self, x: Tensor) -> Tensor:
        """Steps 1-3: selected, self-normalised frequency channels ``[B,C,112,112]``."""
        f = frequency_channels(self._check_images(x), self.size, 8, self.upsample, self.channel_idx)
        return self_normalise(f, self.beta) if self.normalise else f

    def obfuscation_factors(self, shape: tuple[int, ...], rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random signs (-1)^u per element (int8: the same draws as int64, an eighth of the memory;
        64 channels of a batch of 64 are 51 M signs) and exponents v per (image, channel)."""
        signs = torch.randint(0, 2, shape, generator=rng, dtype=torch.int8).mul_(-2).add_(1)
        v = torch.randint(self.z_lower, self.z_upper + 1, (*shape[:2], 1, 1), generator=rng)
        return signs, v

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        a = self.deleted(x)
        if not self.obfuscate:
            return a
        rng = self._check_rng(rng)
        signs, v = self.obfuscation_factors(tuple(a.shape), rng)
        # e = a * (-1)^u * b^v, computed in float64 then stored as float32 (validated range); in place
        # and scale before sign (a sign flip is exact, so the same bits as a * signs * b^v)
        scale = torch.pow(torch.tensor(self.b, dtype=torch.float64), v.double())
        return a.double().mul_(scale).mul_(signs).float()

    # --- server -------------------------------------------------------------------------------
    def recover(self, t: Tensor) -> Tensor:
        if not (self.obfuscate and self.recover_ids):
            return t
        return identity_recovery(t, self.b, self.bias)

    def stored_shape(self) -> tuple[int, ...]:
        return (len(self.channel_idx), self.size, self.size)

    # --- attacker's public knowledge ----------------------------------------------------------
    def attacker_view(self, view: str, t: Tensor) -> Tensor:
        if view == "abs":
            # the adaptive attacker runs the public recovery (b is known to every client) and
            # drops the random signs: |d| = |a| * b^(floor(-log_b max|a|) + bias), no randomness left
            d = identity_recovery(t, self.b, self.bias) if self.obfuscate else t
            return d.abs()
        return super().attacker_view(view, t)

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """White-box map invariant to the unknown randomness: the recovered magnitudes |d| of x
        (the attacker knows the pipeline and b; the signs and exponents are per-sample secrets)."""
        a = self.deleted(x)
        if not self.obfuscate:
            return a
        return identity_recovery(a, self.b, self.bias).abs()

    def whitebox_target(self, t: Tensor) -> Tensor:
        return identity_recovery(t, self.b, self.bias).abs() if self.obfuscate else t

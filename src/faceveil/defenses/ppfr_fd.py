"""PPFR-FD (Wang, Liu, Luo, Yang, Wang; AAAI 2022, "Privacy-Preserving Face Recognition in the Frequency
Domain"): block-DCT component channels, the channels that matter for seeing the face but not for
recognising it removed, the rest masked by a fast channel shuffle-and-mix, a server model trained on
the result; no key management.

Sources. The paper has no public code, and its full text was not available here. What we follow:

- the abstract (AAAI proceedings): "collects the components with the same frequency from different blocks
  of a face image to form component channels. Only part of the channels are retained and fed into the
  analysis network that [...] identif[ies] channels important for face image visualization but not
  crucial for maintaining high FR accuracy [...] more than 94% of the image energy can be dropped while
  the face recognition accuracy stays almost undegraded [...] to further protect the remaining frequency
  components, we propose a fast masking method [...] without key management";
- Mi et al., PartialFace (ICCV 2023, Sec. 4.2 and 4.4), who compare with it: PPFR-FD "adopts a
  channel-wise shuffle-and-mix strategy in the frequency domain", "removes the component with the
  highest energy (the DC component)" and "retain[s] 36" channels;
- the frequency front end of the same line of work in Tencent's TFace (``tasks/duetface/train.py``
  ``_images_to_dct``; ``tasks/dctdp/utils.py`` ``images_to_batch``, which removes the DC of Y, Cb and Cr
  and keeps 189 channels): 112x112 RGB -> x255 -> YCbCr (JPEG full range) -> -128 -> x8 bilinear
  upscaling -> 8x8 orthonormal block DCT -> 64 channels of 112x112 per component.

Client (:meth:`PPFRFD.protect`):

1. component channels: :func:`~faceveil.defenses.duetface.ycbcr_frequency_channels` (faceveil's block
   DCT, exact to ``scipy.fft.dctn`` per block), 3 x 64 channels;
2. channel removal: every frequency (u, v) with ``u + v < min_diag`` is removed (default 1: the DC of each
   component), and frequencies above ``max_diag`` are not sent (default 7). The DC carries 94.6% of the
   L1 channel energy (PartialFace's energy, mean |coefficient|) of LFW faces in this front end (24 LFW
   chips; the abstract's "more than 94%"; tested), and diagonals 0..7 are the 36 lowest-frequency
   channels, the count PartialFace reports retained: 35 per component are sent (105 in all). The other
   reading of "retains 36" — the 36 *highest* frequencies, u+v >= 7 (``min_diag=7, max_diag=14``) —
   would drop 99.96% of that energy, not "more than 94%", and would hide the face, whereas PartialFace
   (Fig. 7) shows PPFR-FD's retained channels still show a discernible face;
3. shuffle: a fixed, *public* permutation of the 105 channels (from ``shuffle_seed``). "Without key
   management" means nothing is secret: the server (and so any attacker who knows the scheme) knows the
   order, and a server model can only be trained on a fixed order. It is kept for fidelity; it protects
   nothing against a knowledgeable attacker;
4. mix (the fast masking): consecutive channels of the shuffled order form pairs, and each pair is
   rotated in its plane by an angle drawn afresh for every image and pair, ``(a, b) -> (a cos t - b sin t,
   a sin t + b cos t)``, ``t ~ U[0, 2 pi)`` (an odd last channel is sent unmixed). Each sent channel is a
   random mix of two retained channels; energy is preserved, the server cannot undo the mix (it never
   learns ``t``) and learns from what the mix leaves invariant;
5. perturbation (optional, ``noise``): additive Gaussian noise of ``noise`` times each sent channel's
   root-mean-square (per image).

Transmitted = stored: ``[B, 105, 112, 112]`` float32 (5.3 MB/face). Server: the adapted student of
:mod:`faceveil.train` trained on fresh masking draws every epoch (the paper retrains an ArcFace
ResNet; README "Server adaptation").

Our choices (not determinable from the sources here): the YCbCr front end and its resampling
(``align_corners=False``; TFace uses ``True``); the retained set (diagonals ``min_diag..max_diag``
instead of the analysis network's learned choice); the form of the mix (random pairwise rotations of a
public pairing: a concrete "channel-wise shuffle-and-mix" a server can be trained for without keys);
the perturbation's form and its default (0: the random mix is the masking).

An adaptive attacker's view (``attacker_view("pair-energy")``, also what the white-box inversion matches,
:meth:`PPFRFD.whitebox_target`) removes every per-image draw: the magnitude ``sqrt(a^2 + b^2)`` of each
pair is invariant to its rotation. For comparison, PartialFace (Table 3) recovers PPFR-FD's faces with a
white-box U-Net at SSIM 0.713, recognised at 83.7% verification accuracy.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.duetface import COMPONENTS, ycbcr_frequency_channels
from faceveil.defenses.faceobfuscator import CHANNEL_NAMES, ZIGZAG
from faceveil.models.base import Recognizer


def diagonal_channels(min_diag: int, max_diag: int) -> list[int]:
    """Zigzag indices of the frequencies (u, v) with ``min_diag <= u + v <= max_diag`` (zigzag order)."""
    return [i for i, (u, v) in enumerate(ZIGZAG) if min_diag <= u + v <= max_diag]


def public_permutation(n: int, seed: int) -> list[int]:
    """The fixed channel order (a public parameter: anyone with the seed computes it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()


def pair_magnitudes(t: Tensor) -> Tensor:
    """``[B,K,H,W]`` -> the rotation-invariant magnitudes of the channel pairs (2j, 2j+1), and ``|last|``
    when K is odd: ``[B, ceil(K/2), H, W]``."""
    k = t.shape[1] // 2 * 2
    a, b = t[:, 0:k:2], t[:, 1:k:2]
    out = torch.sqrt(a * a + b * b)
    return torch.cat([out, t[:, k:].abs()], 1) if t.shape[1] % 2 else out


@register_defense("ppfr-fd")
class PPFRFD(Defense):
    """PPFR-FD (module docstring): YCbCr block-DCT channels without the DC (and above ``max_diag``), a
    public shuffle, per-image random pairwise channel mixing, optional noise."""

    domain = "feature"
    side = "client"
    stochastic = True
    differentiable = True
    needs_adapted_server = True
    input_kind = "map"
    ATTACKER_VIEWS = ("pair-energy",)
    #: measured: 27 ms/face of process CPU time on one core (batch 32)
    protect_ms_hint = 27.0
    HELP: ClassVar[dict[str, str]] = {
        "min_diag": "remove the frequencies with u+v < min_diag (1: the DC of each YCbCr component; must be >= 1)",
        "max_diag": "send the frequencies with u+v <= max_diag (7: diagonals 0..7 are 36 channels, PartialFace's count; 14: all)",
        "shuffle_seed": "seed of the fixed, PUBLIC channel order (no key management: not a secret)",
        "mix": "rotate each channel pair by an angle drawn per image (the fast masking)",
        "noise": "additive Gaussian noise, as a fraction of each sent channel's RMS (0: none)",
        "size": "face size before the x8 upscaling and block DCT (112)",
    }

    def __init__(self, *, min_diag: int = 1, max_diag: int = 7, shuffle_seed: int = 0, mix: bool = True, noise: float = 0.0,
                 size: int = 112, recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        for name, v in (("min_diag", min_diag), ("max_diag", max_diag), ("shuffle_seed", shuffle_seed), ("size", size)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"ppfr-fd: {name} must be an integer, got {v!r}")
        if not 1 <= min_diag <= max_diag <= 14:
            raise ValueError(f"ppfr-fd: need 1 <= min_diag <= max_diag <= 14 (min_diag >= 1 removes the DC), "
                             f"got min_diag={min_diag}, max_diag={max_diag}")
        if not 16 <= size <= 1024:
            raise ValueError(f"ppfr-fd: size must be in [16, 1024], got {size}")
        if not isinstance(mix, bool):
            raise ValueError(f"ppfr-fd: mix must be a boolean, got {mix!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not math.isfinite(noise) or not 0 <= noise <= 10:
            raise ValueError(f"ppfr-fd: noise must be a number in [0, 10], got {noise!r}")
        self.min_diag, self.max_diag, self.shuffle_seed, self.size = min_diag, max_diag, shuffle_seed, size
        self.mix, self.noise = mix, float(noise)
        self.kept = diagonal_channels(min_diag, max_diag)
        self.order = public_permutation(3 * len(self.kept), shuffle_seed)
        self.stochastic = mix or self.noise > 0  # type: ignore[misc]

    # --- shapes -------------------------------------------------------------------------------
    def sent_channel_names(self) -> list[str]:
        """Names of the sent channels before mixing, in the shuffled order (``Cb:AC13``, ...)."""
        names = [f"{c}:{CHANNEL_NAMES[i]}" for c in COMPONENTS for i in self.kept]
        return [names[j] for j in self.order]

    def stored_shape(self) -> tuple[int, ...]:
        return (3 * len(self.kept), self.size, self.size)

    # --- client -------------------------------------------------------------------------------
    def retained(self, x: Tensor) -> Tensor:
        """Steps 1-3: the retained channels in the public order, ``[B,105,size,size]`` (deterministic)."""
        f = ycbcr_frequency_channels(self._check_images(x), self.size, self.kept)
        return f.reshape(len(x), -1, self.size, self.size)[:, self.order]

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        z = self.retained(x)
        if not self.stochastic:
            return z.float()
        rng = self._check_rng(rng)
        b, k = z.shape[:2]
        out = z
        if self.mix:
            theta = torch.rand(b, k // 2, 1, 1, generator=rng, dtype=torch.float64).mul_(2 * math.pi).to(z.dtype)
            c, s = torch.cos(theta), torch.sin(theta)
            a, bb = z[:, 0 : k // 2 * 2 : 2], z[:, 1 : k // 2 * 2 : 2]
            mixed = torch.stack([a * c - bb * s, a * s + bb * c], 2).reshape(b, k // 2 * 2, *z.shape[2:])
            out = torch.cat([mixed, z[:, k // 2 * 2 :]], 1)
        if self.noise > 0:
            rms = out.detach().pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
            out = out + self.noise * rms * torch.randn(out.shape, generator=rng, dtype=out.dtype)
        return out.float()

    # --- attacker's public knowledge ----------------------------------------------------------
    def attacker_view(self, view: str, t: Tensor) -> Tensor:
        if view == "pair-energy":
            return pair_magnitudes(t) if self.mix else t
        return super().attacker_view(view, t)

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """An upload of ``x`` with every mixing angle 0 and no noise: the retained channels in the public
        order (the white-box attacker knows the pipeline, not the per-image draws). :meth:`whitebox_target`
        maps it, and every upload of ``x`` without noise, to the same pair magnitudes."""
        return self.retained(x)

    def whitebox_target(self, t: Tensor) -> Tensor:
        """What the white-box attacker matches: the rotation-invariant pair magnitudes (with mixing)."""
        return pair_magnitudes(t) if self.mix else t

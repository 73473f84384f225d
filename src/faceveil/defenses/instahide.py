"""InstaHide (Huang, Song, Li, Arora, ICML 2020, "InstaHide: Instance-hiding Schemes for Private
Distributed Learning"), cross-dataset variant with k = 2: each private image is mixed with k−1
public images and every pixel's sign is flipped at random.

Following the authors' code (``train_cross.py`` of Hazelsuko07/InstaHide): the k coefficients are
``|N(0,1)|`` draws normalised to sum 1, redrawn until none exceeds ``upper`` (0.65), so for k = 2
the private coefficient is uniform-ish in [0.35, 0.65] and the private image is *not* necessarily
dominant; pixels are mapped to [−1, 1] (``2x − 1``) before mixing; the sign mask is an independent
±1 per pixel and channel, fresh for every encryption. The authors' extra constraint on the sum of
the *private* coefficients (``dom``) only matters with several private images and is not used.

The output is not an image: values lie in [−1, 1], and mixing plus sign flips leave about half
of the values negative. The deployed recogniser cannot use it (``needs_adapted_server``); its
``frozen_server`` maps values back with ``(t + 1)/2`` and runs the recogniser, which is only a
reference point (it is at chance).
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import Tensor, nn

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.pool import PublicPoolMixin
from faceveil.models.base import Recognizer


def instahide_coefficients(n: int, k: int, upper: float, rng: torch.Generator) -> Tensor:
    """``[n,k]`` coefficients: ``|N(0,1)|`` normalised to sum 1, rows redrawn while max > upper."""
    lam = torch.empty(n, k, dtype=torch.float64)
    todo = torch.ones(n, dtype=torch.bool)
    while todo.any():
        idx = todo.nonzero().squeeze(1)
        g = torch.randn(len(idx), k, generator=rng, dtype=torch.float64).abs()
        g = g / g.sum(dim=1, keepdim=True)
        lam[idx] = g
        todo[idx] = g.max(dim=1).values > upper
    return lam


class _FromSigned(nn.Module):
    """[−1, 1] -> [0, 1] before the frozen recogniser."""

    def forward(self, t: Tensor) -> Tensor:
        return (t + 1.0) * 0.5


@register_defense("instahide")
class InstaHide(PublicPoolMixin, Defense):
    """InstaHide encryption of aligned chips: ``σ ⊙ (λ₀ (2x−1) + Σⱼ λⱼ (2pⱼ−1))`` with public
    chips ``pⱼ`` from the pool, random coefficients summing to 1 (each ≤ ``upper``) and a random
    ±1 mask ``σ``. Output ``[B,3,S,S]`` float32 in [−1, 1] (not a valid image). ``pool`` (a tensor
    of public chips) overrides the CelebA pool; ``data`` is the data folder for the default pool."""

    side = "client"
    stochastic = True
    differentiable = True
    needs_adapted_server = True
    #: value range of the transmitted tensor (not [0,1]: written as .npy, not PNG)
    output_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    HELP: ClassVar[dict[str, str]] = {
        "k": "images per mix (1 private + k-1 public), >= 2 (paper's face/CIFAR setting: 2..4; here 2)",
        "upper": "upper bound of every mixing coefficient, 1/k < upper <= 1 (authors' code: 0.65)",
        "pool_size": "number of public faces in the pool",
        "pool_seed": "seed choosing the pool's faces",
        "pool_source": "celeba-aligned | celeba-wild | lfw-nonpair",
    }

    def __init__(self, pool: Tensor | None = None, data: str | os.PathLike | None = None, *, k: int = 2,
                 upper: float = 0.65, pool_size: int = 256, pool_seed: int = 0, pool_source: str = "celeba-aligned",
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"instahide: k must be an integer >= 2, got {k!r}")
        if isinstance(upper, bool) or not isinstance(upper, int | float) or not 1.0 / k < upper <= 1.0:
            raise ValueError(f"instahide: upper must satisfy 1/k < upper <= 1 (k={k}), got {upper!r}")
        if isinstance(pool_seed, bool) or not isinstance(pool_seed, int):
            raise ValueError(f"instahide: pool_seed must be an integer, got {pool_seed!r}")
        self.k, self.upper = k, float(upper)
        self.pool_size, self.pool_seed, self.pool_source = pool_size, pool_seed, pool_source
        self._init_pool(pool, data)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.protect_with_coefficients(x, rng)[0]

    def protect_with_coefficients(self, x: Tensor, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`protect` also returning the coefficients ``[B,k]`` (column 0: the private image)."""
        x = self._check_images(x)
        rng = self._check_rng(rng)
        b, s = len(x), x.shape[-1]
        lam = instahide_coefficients(b, self.k, self.upper, rng).to(x.dtype)
        pub = self.draw_public(b, self.k - 1, s, rng).to(x.dtype)  # [B,k-1,3,S,S]
        mixed = lam[:, 0, None, None, None] * (2 * x - 1) + (lam[:, 1:, None, None, None] * (2 * pub - 1)).sum(1)
        sign = torch.randint(0, 2, x.shape, generator=rng).to(x.dtype) * 2 - 1
        return mixed * sign, lam

    def frozen_server(self) -> nn.Module:
        return nn.Sequential(_FromSigned(), self.recognizer)

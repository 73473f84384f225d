"""FaceMix: the client mixes its face with public faces before sending it to the cloud, whose
recogniser is adapted to mixed faces. The seed paper only describes the scheme (evaluated on CelebA
and LFW against N(0, 8) noise and 8×8 / 16×16 blur); the choices below are ours:

- k faces per mix: the private face and k−1 distinct faces drawn from a public pool (default k=3);
- the private face's weight ``w ~ U[w_min, w_max)`` (default [0.6, 0.8)); with ``w_min > 0.5`` the
  private face always outweighs all public faces together;
- the remaining ``1 − w`` is split among the public faces by a flat Dirichlet (uniform on the
  simplex), fresh for every call;
- mixing is a convex combination in [0,1] pixel space, so the output is a valid image.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.pool import PublicPoolMixin
from faceveil.models.base import Recognizer


def facemix_weights(n: int, k: int, w_min: float, w_max: float, rng: torch.Generator) -> Tensor:
    """``[n,k]`` weights summing to 1: column 0 ~ U[w_min, w_max), the rest a flat-Dirichlet split
    of the remainder."""
    w = w_min + (w_max - w_min) * torch.rand(n, 1, generator=rng, dtype=torch.float64)
    e = torch.empty(n, k - 1, dtype=torch.float64).exponential_(1.0, generator=rng)
    return torch.cat([w, (1 - w) * e / e.sum(dim=1, keepdim=True)], dim=1)


@register_defense("facemix")
class FaceMix(PublicPoolMixin, Defense):
    """Mix each aligned chip with k−1 public chips, the private face dominant (weight in
    [w_min, w_max)); output ``[B,3,S,S]`` in [0,1]. ``pool`` (a tensor of public chips) overrides the
    CelebA pool; ``data`` is the data folder for the default pool."""

    side = "client"
    stochastic = True
    differentiable = True
    needs_adapted_server = True
    HELP: ClassVar[dict[str, str]] = {
        "k": "faces per mix (1 private + k-1 public), >= 2",
        "w_min": "lowest weight of the private face, 0.5 < w_min <= w_max",
        "w_max": "private weight drawn from [w_min, w_max), w_max <= 1",
        "pool_size": "number of public faces in the pool",
        "pool_seed": "seed choosing the pool's faces",
        "pool_source": "celeba-aligned | celeba-wild | lfw-nonpair",
    }

    def __init__(self, pool: Tensor | None = None, data: str | os.PathLike | None = None, *, k: int = 3,
                 w_min: float = 0.6, w_max: float = 0.8, pool_size: int = 256, pool_seed: int = 0,
                 pool_source: str = "celeba-aligned", recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"facemix: k must be an integer >= 2, got {k!r}")
        for name, v in (("w_min", w_min), ("w_max", w_max)):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"facemix: {name} must be a number, got {v!r}")
        if not 0.5 < w_min <= w_max <= 1.0:
            raise ValueError(f"facemix: need 0.5 < w_min <= w_max <= 1 (private face dominant), got w_min={w_min}, w_max={w_max}")
        if isinstance(pool_seed, bool) or not isinstance(pool_seed, int):
            raise ValueError(f"facemix: pool_seed must be an integer, got {pool_seed!r}")
        self.k, self.w_min, self.w_max = k, float(w_min), float(w_max)
        self.pool_size, self.pool_seed, self.pool_source = pool_size, pool_seed, pool_source
        self._init_pool(pool, data)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.protect_with_weights(x, rng)[0]

    def protect_with_weights(self, x: Tensor, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`protect` also returning the weights ``[B,k]`` (column 0: the private face)."""
        x = self._check_images(x)
        rng = self._check_rng(rng)
        b, s = len(x), x.shape[-1]
        w = facemix_weights(b, self.k, self.w_min, self.w_max, rng).to(x.dtype)
        pub = self.draw_public(b, self.k - 1, s, rng).to(x.dtype)
        out = w[:, 0, None, None, None] * x + (w[:, 1:, None, None, None] * pub).sum(1)
        return out.clamp(0.0, 1.0), w

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

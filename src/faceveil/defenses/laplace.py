"""Laplace mechanism on face features: the differential-privacy baseline of AdvFace (Wang et al.,
"AdvFace: Towards Robust Face Recognition against Model Inversion with Adversarial Features", the
"Laplace" rows with ε = 1.0), here on dlib's 128-D embedding or a split-layer feature map.

Privacy guarantee (read this before quoting ε): every feature coordinate is clipped to [−c, c], so
changing the input face can change one coordinate by at most Δ = 2c; adding Laplace(Δ/ε) noise
independently to each coordinate makes *each coordinate on its own* ε-differentially private with
respect to replacing the face. The released vector has d coordinates, so by basic composition the
whole vector is only (d·ε)-DP (128ε for the dlib embedding, 32·37·37·ε for ``res1``). It is *not*
ε-DP for the vector, which is how the baseline is often described.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from faceveil.defenses.base import Defense, register_defense
from faceveil.models.base import Recognizer

#: default clip bound of dlib embedding coordinates, from real feature statistics (see Laplace)
DEFAULT_CLIP = 0.35


def _positive(name: str, v: object, what: str, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{what}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return float(v)


def laplace_noise(shape: torch.Size | tuple[int, ...], scale: float, rng: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Laplace(0, scale) samples as the difference of two Exp(1) variables (finite for every draw)."""
    e = torch.empty((2, *shape), dtype=torch.float64).exponential_(1.0, generator=rng)
    return ((e[0] - e[1]) * scale).to(dtype)


class FeatureDefense(Defense):
    """Base of defenses that perturb features on the client: the recogniser's embedding
    (``at="embedding"``) or the output of the client part of a split recogniser (``at`` = a layer
    name such as ``res1``). The frozen server is the identity (embedding) or the server part."""

    domain = "feature"
    side = "client"

    def __init__(self, at: str, recognizer: Recognizer | None) -> None:
        super().__init__(recognizer)
        if not isinstance(at, str) or not at:
            raise ValueError(f"{type(self).__name__}: at must be 'embedding' or a layer name, got {at!r}")
        self.at = at
        self._parts: tuple[nn.Module, nn.Module] | None = None
        if at != "embedding":
            self._split()  # validates the layer name

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return "vector" if self.at == "embedding" else "map"

    def _split(self) -> tuple[nn.Module, nn.Module]:
        if self._parts is None:
            self._parts = self.recognizer.split(self.at)
        return self._parts

    def clean_features(self, x: Tensor) -> Tensor:
        """Unprotected features of chips ``x`` (what the client would send without the defense)."""
        x = self.recognizer.prepare(self._check_images(x))
        return self.recognizer(x) if self.at == "embedding" else self._split()[0](x)

    def frozen_server(self) -> nn.Module:
        return nn.Identity() if self.at == "embedding" else self._split()[1]

    def stored_shape(self) -> tuple[int, ...]:
        if self.at == "embedding":
            return (self.recognizer.embedding_dim,)
        s = self.recognizer.input_size
        with torch.no_grad():
            return tuple(self._split()[0](torch.zeros(1, 3, s, s)).shape[1:])


@register_defense("laplace")
class Laplace(FeatureDefense):
    """Clip features to [−c, c], add i.i.d. Laplace noise of scale ``2c/ε`` per coordinate
    (per-coordinate ε-DP; the d-dimensional vector is d·ε-DP: see the module docstring).

    Default c = 0.35 for the dlib embedding: the 99th percentile of |coordinate| of the embeddings
    of 999 public CelebA-aligned chips (128k values; 99.9th percentile 0.45, max 0.59, std 0.13), so
    clipping touches ~1% of coordinates, slightly, while keeping Δ = 0.7. ``c`` does not adapt to
    ``at``: for a split layer pass a bound measured on that layer (``res1`` outputs are ReLU maps
    with 99th / 99.9th percentiles 3.8 / 5.6 on the same images)."""

    stochastic = True
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {
        "eps": "privacy budget per coordinate, > 0 (AdvFace: 1.0)",
        "c": "clip bound: features clipped to [-c, c], sensitivity 2c, > 0 (default calibrated for the dlib embedding)",
        "at": "embedding | a layer name of the recogniser (e.g. res1)",
    }

    def __init__(self, *, eps: float = 1.0, c: float = DEFAULT_CLIP, at: str = "embedding",
                 recognizer: Recognizer | None = None) -> None:
        self.eps = _positive("eps", eps, "laplace")
        self.c = _positive("c", c, "laplace")
        super().__init__(at, recognizer)

    @property
    def scale(self) -> float:
        """Laplace scale b = Δ/ε with Δ = 2c."""
        return 2.0 * self.c / self.eps

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        rng = self._check_rng(rng)
        f = self.clean_features(x).clamp(-self.c, self.c)
        return f + laplace_noise(f.shape, self.scale, rng, f.dtype)

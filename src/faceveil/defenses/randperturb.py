"""Random perturbation of features: the "random perturbation" baseline of AdvFace (Wang et al.,
"AdvFace: Towards Robust Face Recognition against Model Inversion with Adversarial Features"):
PGD-like steps in *random* directions instead of adversarial ones."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import register_defense
from faceveil.defenses.laplace import FeatureDefense, _positive
from faceveil.models.base import Recognizer


def random_sign_walk(shape: torch.Size | tuple[int, ...], iterations: int, alpha: float, eps: float,
                     rng: torch.Generator, dtype: torch.dtype) -> Tensor:
    """The perturbation ``δ`` after ``iterations`` steps ``δ ← clip(δ + α·sign(r), −ε, ε)``,
    ``r ~ N(0, I)`` (so ``sign(r)`` is a uniform ±1 vector). Independent of the features."""
    d = torch.zeros(shape, dtype=torch.float64)
    for _ in range(iterations):
        r = torch.randn(shape, generator=rng, dtype=torch.float64)
        d = (d + alpha * torch.sign(r)).clamp(-eps, eps)
    return d.to(dtype)


@register_defense("randperturb")
class RandomPerturbation(FeatureDefense):
    """``iterations`` steps (default 40) each adding ``α·sign(random direction)`` (α = 0.2) to the
    feature, each followed by projection onto the L∞ ball of radius ε (0.2) around the original
    feature: AdvFace's settings. The ball is L∞ (sign steps, as in PGD); with α = ε every
    coordinate ends at −ε, 0 or +ε from the original. No formal privacy guarantee."""

    stochastic = True
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {
        "iterations": "number of random sign steps, >= 1 (AdvFace: 40)",
        "alpha": "step size per iteration, > 0 (AdvFace: 0.2)",
        "eps": "L-infinity radius of the projection ball around the original feature, > 0 (AdvFace: 0.2)",
        "at": "embedding | a layer name of the recogniser (e.g. res1)",
    }

    def __init__(self, *, iterations: int = 40, alpha: float = 0.2, eps: float = 0.2, at: str = "embedding",
                 recognizer: Recognizer | None = None) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"randperturb: iterations must be an integer >= 1, got {iterations!r}")
        self.iterations = iterations
        self.alpha = _positive("alpha", alpha, "randperturb")
        self.eps = _positive("eps", eps, "randperturb")
        super().__init__(at, recognizer)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        rng = self._check_rng(rng)
        f = self.clean_features(x)
        return f + random_sign_walk(f.shape, self.iterations, self.alpha, self.eps, rng, f.dtype)

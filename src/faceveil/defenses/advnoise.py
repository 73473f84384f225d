"""AdvNoise: a Fawkes-style adversarial cloak (Shan et al., USENIX Security 2020, "Fawkes:
Protecting Privacy against Unauthorized Deep Learning Models"), the "AdvNoise" baseline of
DeepBlur's Tables 1–2: a small L∞-bounded perturbation, found by PGD (Madry et al., ICLR 2018)
through the deployed dlib recogniser, that moves the face's embedding away from the person's own
embedding (``untargeted``, default) or toward a public target identity's embedding (``targeted``).

Differences from Fawkes, stated plainly: Fawkes bounds the perturbation by DSSIM and optimises
with Adam against an ensemble of feature extractors; here the budget is L∞ in grey levels
(default 8/255), the optimiser sign-gradient PGD with a random start, and the single model dlib.
Targeted mode follows Fawkes's target choice: among ``candidates`` public faces drawn with the
caller's generator, the one whose embedding is farthest from the face's own.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.pool import PublicPoolMixin
from faceveil.models.base import Recognizer

ADV_MODES = ("untargeted", "targeted")


@register_defense("advnoise")
class AdvNoise(PublicPoolMixin, Defense):
    """PGD cloak within ``‖δ‖∞ ≤ eps`` grey levels (default 8, i.e. 8/255): ``steps`` sign-gradient
    steps of ``step_size`` grey levels from a uniform random start in the ball, each followed by
    projection onto the ball and [0,1]. Untargeted: maximise ``‖f(x+δ) − f(x)‖²``; targeted:
    minimise ``‖f(x+δ) − f(t)‖²``. The output is a valid image; protect() needs autograd (it runs
    its own ``torch.enable_grad``) and returns a detached tensor."""

    #: fast configuration for the contract tests
    EXAMPLE: ClassVar[dict] = {"steps": 2}

    side = "client"
    stochastic = True
    differentiable = False
    needs_grad_to_protect = True
    protect_ms_hint = 400.0  # 10 PGD steps through dlib at 150 px: ~300-540 ms/face
    HELP: ClassVar[dict[str, str]] = {
        "eps": "L-infinity budget in grey levels (0-255 units), > 0 (8 = 8/255)",
        "steps": "PGD iterations, >= 1",
        "step_size": "PGD step in grey levels, > 0",
        "mode": "untargeted (away from own embedding) | targeted (toward a public face's embedding)",
        "candidates": "targeted: public faces drawn per image; the farthest in embedding space is the target",
        "pool_size": "targeted: number of public faces in the pool",
        "pool_seed": "targeted: seed choosing the pool's faces",
        "pool_source": "targeted: celeba-aligned | celeba-wild | lfw-nonpair",
    }

    def __init__(self, pool: Tensor | None = None, data: str | os.PathLike | None = None, *, eps: float = 8.0,
                 steps: int = 10, step_size: float = 2.0, mode: str = "untargeted", candidates: int = 8,
                 pool_size: int = 256, pool_seed: int = 0, pool_source: str = "celeba-aligned",
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        for name, v in (("eps", eps), ("step_size", step_size)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"advnoise: {name} must be a finite number > 0 (0-255 units), got {v!r}")
        for name, v in (("steps", steps), ("candidates", candidates)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"advnoise: {name} must be an integer >= 1, got {v!r}")
        if mode not in ADV_MODES:
            raise ValueError(f"advnoise: mode must be one of {', '.join(ADV_MODES)}, got {mode!r}")
        if isinstance(pool_seed, bool) or not isinstance(pool_seed, int):
            raise ValueError(f"advnoise: pool_seed must be an integer, got {pool_seed!r}")
        self.eps, self.steps, self.step_size = float(eps), steps, float(step_size)
        self.mode, self.candidates = mode, candidates
        self.pool_size, self.pool_seed, self.pool_source = pool_size, pool_seed, pool_source
        self._init_pool(pool, data)
        self._pool_emb: Tensor | None = None

    def _embed(self, x: Tensor) -> Tensor:
        m = self.recognizer
        return m(m.prepare(x))

    def pool_embeddings(self) -> Tensor:
        """Embeddings of the public pool (computed once)."""
        if self._pool_emb is None:
            self._pool_emb = self.recognizer.embed(self.pool_images())
        return self._pool_emb

    def targets(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        """Target embeddings: per face, the farthest of ``candidates`` random pool embeddings."""
        pe = self.pool_embeddings()
        m = min(self.candidates, len(pe))
        idx = torch.rand(len(clean), len(pe), generator=rng).argsort(dim=1)[:, :m]  # [B,m]
        d = (pe[idx] - clean[:, None]).norm(dim=-1)
        return pe[idx.gather(1, d.argmax(dim=1, keepdim=True)).squeeze(1)]

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        x0 = self._check_images(x).detach()
        rng = self._check_rng(rng)
        self.recognizer.eval()
        eps, alpha = self.eps / 255.0, self.step_size / 255.0
        with torch.no_grad():
            clean = self._embed(x0)
            ref = clean if self.mode == "untargeted" else self.targets(clean, rng)
        start = (torch.rand(x0.shape, generator=rng, dtype=x0.dtype) * 2 - 1) * eps
        xa = (x0 + start).clamp(0.0, 1.0)
        direction = 1.0 if self.mode == "untargeted" else -1.0  # ascend the distance, or descend it
        with torch.enable_grad():
            for _ in range(self.steps):
                xa.requires_grad_(True)
                loss = ((self._embed(xa) - ref) ** 2).sum()
                (g,) = torch.autograd.grad(loss, xa)
                xa = xa.detach() + direction * alpha * g.sign()
                xa = torch.minimum(torch.maximum(xa, x0 - eps), x0 + eps).clamp(0.0, 1.0)
        return xa.detach()

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

"""``facemix-dominant``: the attacker who knows FaceMix's public pool finds the public faces in a mix and
removes them.

FaceMix (:mod:`faceveil.defenses.facemix`) sends ``m = w x + Σⱼ aⱼ pⱼ``: the private chip ``x`` with weight
``w ∈ [w_min, w_max)`` plus ``k − 1`` faces ``pⱼ`` of the public pool whose weights ``aⱼ`` split ``1 − w``
(a convex mix in [0,1] pixel space). The pool is seeded from public data, so under Kerckhoffs the attacker
holds it (``needs = {"defense"}``). The attack is a sparse decomposition of the mix over the pool
dictionary — orthogonal matching pursuit (Pati, Rezaiifar & Krishnaprasad 1993) with non-negative
coefficients — on high-pass images, where the unknown private face is only noise:

1. **Find the public faces.** With ``H`` the high-pass (5×5 box residual) of an image, ``H(m) = w H(x) +
   Σ aⱼ H(pⱼ)``; ``H(x)`` is nearly uncorrelated with any one pool face's ``H(p)`` while ``H(pⱼ)`` is
   present with weight ``aⱼ``. Greedily ``k − 1`` times: the pool face best correlated with the residual is
   added to the support and the weights are refitted by least squares of ``H(m)`` on the support's
   ``H(p)``; a face whose weight comes out ≤ 0 is dropped (a public face with a tiny weight, e.g. 0.03 of a
   Dirichlet split, is sometimes missed; its trace in the result is as faint as its weight).
2. **Unmix.** ``w = 1 − Σ aⱼ`` (the simplex constraint), clipped to the public range ``[w_min, w_max]``,
   and ``x = (m − Σ aⱼ pⱼ)/w``, clipped to [0, 1] and resized to ``target_size``.

About 0.1 s per 150-px face on one core (one [B × pool] correlation, then per face ``k − 1`` correlations
with the pool and tiny least-squares fits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from faceveil.attacks.base import DefenseSpecificAttack, register_attack
from faceveil.attacks.instahide_unmix import high_pass


@register_attack("facemix-dominant")
class FaceMixDominant(DefenseSpecificAttack):
    """Find the public faces of FaceMix mixes in the public pool and remove them (module docstring).
    ``hp_kernel``: the high-pass window."""

    defenses = ("facemix",)

    def __init__(self, *, defense=None, target_size: int = 112, seed: int = 0, hp_kernel: int = 5) -> None:
        super().__init__(defense=defense, target_size=target_size, seed=seed)
        if hp_kernel < 3 or hp_kernel % 2 == 0:
            raise ValueError(f"hp_kernel must be odd and >= 3, got {hp_kernel}")
        self.hp_kernel = hp_kernel
        #: per attacked face of the last call: pool indices found (−1: none) and their weights, and w
        self.found: dict[str, Tensor] = {}
        self._pool_key: tuple | None = None
        self._pool_feats: tuple[Tensor, Tensor, Tensor] | None = None

    def _pool(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The pool at ``size`` px, its high-pass images ``[P,D]`` and their unit-norm versions."""
        d = self.require_defense()
        key = (id(d), size)
        if self._pool_key != key:
            p = d.pool_images(size).float()
            h = high_pass(p, self.hp_kernel).flatten(1).double()
            self._pool_feats, self._pool_key = (p, h, h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)), key
        assert self._pool_feats is not None
        return self._pool_feats

    def decompose(self, hm: Tensor, h: Tensor, hn: Tensor, n: int) -> tuple[list[int], Tensor]:
        """Non-negative OMP of one high-pass mix ``hm`` ``[D]`` over the pool: (support, weights)."""
        support: list[int] = []
        coef = torch.zeros(0, dtype=h.dtype)
        excluded: set[int] = set()
        r = hm
        for _ in range(n):
            c = hn @ r
            if support or excluded:
                c[list(set(support) | excluded)] = -float("inf")
            j = int(c.argmax())
            if not torch.isfinite(c[j]) or float(c[j]) <= 0:
                break
            trial = [*support, j]
            sol = torch.linalg.lstsq(h[trial].T, hm[:, None]).solution[:, 0]
            while len(trial) and float(sol.min()) <= 0:  # drop non-positive weights, refit
                drop = int(sol.argmin())
                excluded.add(trial.pop(drop))
                sol = torch.linalg.lstsq(h[trial].T, hm[:, None]).solution[:, 0] if trial else sol[:0]
            support, coef = trial, sol
            r = hm - (h[support].T @ coef if support else 0)
        return support, coef

    def unmix(self, m: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``x`` (``[B,3,S,S]`` in [0,1], at the mix's size) and what was found for each mix."""
        d = self.require_defense()
        n = int(d.k) - 1
        p, h, hn = self._pool(m.shape[-1])
        hm = high_pass(m, self.hp_kernel).flatten(1).double()
        idx = torch.full((len(m), n), -1, dtype=torch.long)
        a = torch.zeros(len(m), n, dtype=torch.float64)
        for i in range(len(m)):
            support, coef = self.decompose(hm[i], h, hn, n)
            idx[i, : len(support)] = torch.tensor(support, dtype=torch.long)
            a[i, : len(support)] = coef
        total = a.sum(1)
        over = total > 1 - d.w_min  # the private weight is at least w_min: shrink the public ones to fit
        a[over] *= ((1 - d.w_min) / total[over])[:, None]
        w = (1 - a.sum(1)).clamp(d.w_min, d.w_max)
        pub = (a.float()[:, :, None, None, None] * p[idx.clamp_min(0)]).sum(1)
        x = (m - pub) / w.float().view(-1, 1, 1, 1)
        return x.clamp(0, 1), {"pool_index": idx, "weights": a.float(), "w": w.float()}

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        self.require_defense()
        m = self.check_protected(protected, (0.0, 1.0))
        return self.unmix_all(m, batch_size)

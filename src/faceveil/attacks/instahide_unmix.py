"""``instahide-unmix``: the attacker who knows InstaHide's public pool removes it and the sign mask.

InstaHide (Huang et al., ICML 2020), cross-dataset, k = 2, encodes a chip ``x`` as

    t = σ ⊙ (λ a + (1 − λ) b),   a = 2x − 1,  b = 2p − 1,  σ ∈ {±1} per value,  λ ∈ [1 − upper, upper],

with ``p`` one face of the public pool. Carlini et al. ("An Attack on InstaHide: Is Private Learning
Possible with Instance Encoding?", IEEE S&P 2021) break it by taking ``|t|`` — which removes the sign mask,
the scheme's only per-value secret — and treating the public images as known or as noise. Under
Kerckhoffs the attacker here *holds* the pool (it is seeded from public data: the defense's public
constants, ``needs = {"defense"}``), so with one encoding per face the attack is exact algebra plus a
smoothness prior. Per encoding, with ``u = |t|``:

1. **Which public face.** ``u = |λa + (1−λ)b|`` is large where ``|b|`` is (bright or dark public pixels),
   whatever ``a`` does there; the high-pass (5×5 box residual) of ``u`` correlates with the high-pass of
   ``|b|`` for the public face mixed in and not for the others (Pearson correlation against all pool faces
   at once, one matrix product). The ``candidates`` best pool faces go on to step 2.
2. **Which λ.** For a pool face ``b``, a value ``u`` is consistent with coefficient ``λ`` iff one of its two
   candidates ``a± = (±u − (1−λ)b)/λ`` lies in [−1, 1], i.e. ``|u − (1−λ)|b|| ≤ λ``, i.e.
   ``λ ≥ max((u − |b|)/(1 − |b|), (|b| − u)/(1 + |b|))``. Every value holds for the true ``(b, λ)``, and
   every ``λ' > λ`` is consistent too (its decoding is a convex blend of the face and ``b``), so the attack
   takes the *smallest* consistent coefficient, ``λ_min`` = the maximum of that bound over all values (exact
   as soon as the face has one saturated value in the right place; a lower bound otherwise), clipped to
   the public range [1 − upper, upper]. A wrong pool face is usually consistent only with ``λ_min`` above
   ``upper``: among the candidates, the best-correlated one with ``λ_min ≤ upper`` is taken (the best
   correlated one if none is).
3. **Which sign.** Each value has the two candidates ``a±``, mirror images about ``−(1−λ)b/λ``; where only
   one is in [−1, 1] it is taken (about half of the values), elsewhere the one closer to a prediction from
   the current estimate: pick, predict, re-pick, coarse to fine (box windows ``scales``, ``iters`` passes
   each; the first pass uses only the decided values). The prediction mixes (weight ``colour_weight``) a
   local mean of the channel with the pixel's two other channels plus the local colour offsets (the
   mask flips each channel independently, and a wrong pick is a smooth mirror image, so whole regions of
   one channel go wrong together unless the channels are tied: 0.93 → 0.98 mean SSIM on 32 LFW faces).

``x = (a + 1)/2`` is resized to ``target_size``. About 0.6 s per 150-px face on one core. InstaHide with
k > 2 (several public faces, a (k−1)-dimensional coefficient search) is not handled: the attack raises
a clear error for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.attacks.base import DefenseSpecificAttack, register_attack

#: faces unmixed at once (the consistency bound of step 2 holds [chunk, candidates, 3·S·S] values)
CHUNK = 16


def box_filter(z: Tensor, k: int) -> Tensor:
    """Separable k×k mean filter of ``[B,C,H,W]`` with replicated borders (same size out)."""
    p = k // 2
    z = F.avg_pool2d(F.pad(z, (0, 0, p, p), mode="replicate"), (k, 1), 1)
    return F.avg_pool2d(F.pad(z, (p, p, 0, 0), mode="replicate"), (1, k), 1)


def high_pass(z: Tensor, k: int = 5) -> Tensor:
    """``z`` minus its k×k local mean: the edges and texture that identify one particular image."""
    return z - box_filter(z, k)


def standardised(z: Tensor) -> Tensor:
    """Rows of ``[N, ...]`` flattened, centred and scaled to unit norm (a dot product is then Pearson's r)."""
    z = z.flatten(1)
    z = z - z.mean(1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def smallest_lambda(u: Tensor, babs: Tensor) -> Tensor:
    """``λ_min``: the smallest private coefficient for which every value of ``u = |t|`` has a candidate in
    [−1, 1] given public values of magnitude ``babs`` (module docstring, step 2); reduces the last dim."""
    lo = (u - babs) / (1 - babs).clamp_min(1e-6)
    hi = (babs - u) / (1 + babs)
    return torch.maximum(lo, hi).amax(-1)


def pick_signs(u: Tensor, b: Tensor, lam: Tensor, scales: tuple[int, ...], iters: int, colour_weight: float = 0.5,
               tol: float = 1e-4) -> Tensor:
    """``a = 2x − 1`` from ``u = |t|``, the public ``b = 2p − 1`` and λ (``[B]``): per value the in-range
    candidate of ``(±u − (1−λ)b)/λ``, ambiguous ones by the prediction of step 3 (module docstring),
    coarse to fine."""
    lam = lam.view(-1, 1, 1, 1)
    ap, am = (u - (1 - lam) * b) / lam, (-u - (1 - lam) * b) / lam
    in_p, in_m = ap.abs() <= 1 + tol, am.abs() <= 1 + tol
    both = in_p & in_m
    a = torch.where(in_p & ~in_m, ap, torch.where(in_m & ~in_p, am, torch.where(ap.abs() <= am.abs(), ap, am)))
    w = (~both).to(a.dtype)  # the first pass trusts only the decided values
    for k in scales:
        for _ in range(iters):
            bw = box_filter(w, k)
            m = torch.where(bw > 1e-3, box_filter(a * w, k) / bw.clamp_min(1e-6), box_filter(a, k))
            if colour_weight > 0:
                # the other two channels' value at the pixel, shifted by the local colour offsets
                wp = w.prod(1, keepdim=True).expand_as(w)  # pixels whose three values are decided
                dev = a - a.mean(1, keepdim=True)
                bo = box_filter(wp, scales[0])
                o = torch.where(bo > 1e-3, box_filter(dev * wp, scales[0]) / bo.clamp_min(1e-6), box_filter(dev, scales[0]))
                cross = (a.sum(1, keepdim=True) - a - (o.sum(1, keepdim=True) - o)) / 2 + o
                m = (1 - colour_weight) * m + colour_weight * cross
            a = torch.where(both, torch.where((ap - m).abs() <= (am - m).abs(), ap, am), a)
            w = torch.ones_like(w)
    return a.clamp(-1, 1)


@register_attack("instahide-unmix")
class InstaHideUnmix(DefenseSpecificAttack):
    """Unmix InstaHide (k = 2) encodings with the public pool (module docstring). ``candidates``: pool faces
    kept after the correlation step; ``scales``/``iters``/``colour_weight``: the coarse-to-fine sign picking; ``hp_kernel``:
    the high-pass window of the identification step."""

    defenses = ("instahide",)

    def __init__(self, *, defense=None, target_size: int = 112, seed: int = 0, candidates: int = 8,
                 scales: tuple[int, ...] | list[int] = (25, 15, 9, 5), iters: int = 3, colour_weight: float = 0.5,
                 hp_kernel: int = 5) -> None:
        super().__init__(defense=defense, target_size=target_size, seed=seed)
        scales = tuple(scales)
        if candidates < 1 or iters < 1 or not scales or any(k < 1 or k % 2 == 0 for k in scales):
            raise ValueError(f"need candidates >= 1, iters >= 1 and odd positive scales; got {candidates}, {iters}, {scales}")
        if hp_kernel < 3 or hp_kernel % 2 == 0:
            raise ValueError(f"hp_kernel must be odd and >= 3, got {hp_kernel}")
        if not 0 <= colour_weight <= 1:
            raise ValueError(f"colour_weight must be in [0, 1], got {colour_weight}")
        if defense is not None:
            self._check_k(defense)
        self.candidates, self.scales, self.iters, self.hp_kernel = candidates, scales, iters, hp_kernel
        self.colour_weight = float(colour_weight)
        #: per attacked face of the last call: chosen pool index, λ, and whether λ_min was in the public range
        self.found: dict[str, Tensor] = {}
        self._pool_key: tuple | None = None
        self._pool_feats: tuple[Tensor, Tensor] | None = None

    def config_value(self, param: str):
        return list(self.scales) if param == "scales" else super().config_value(param)

    @staticmethod
    def _check_k(defense) -> None:
        if getattr(defense, "k", 2) != 2:
            raise ValueError(f"instahide-unmix handles InstaHide with k = 2 (one public face per mix); this defense "
                             f"mixes k = {defense.k} (a (k-1)-dimensional coefficient search is not implemented)")

    def _pool(self, size: int) -> tuple[Tensor, Tensor]:
        """The public pool at ``size`` px as ``b = 2p − 1`` and the standardised high-pass of ``|b|``."""
        d = self.require_defense()
        key = (id(d), size)
        if self._pool_key != key:
            b = 2 * d.pool_images(size).float() - 1
            self._pool_feats, self._pool_key = (b, standardised(high_pass(b.abs(), self.hp_kernel))), key
        assert self._pool_feats is not None
        return self._pool_feats

    def unmix(self, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``x`` (``[B,3,S,S]`` in [0,1], at the encoding's size) and what was found for each encoding."""
        d = self.require_defense()
        self._check_k(d)
        b, feats = self._pool(t.shape[-1])
        upper = float(d.upper)
        u = t.abs()
        corr = standardised(high_pass(u, self.hp_kernel)) @ feats.T  # [B, pool]
        kc = min(self.candidates, len(b))
        top = corr.topk(kc, dim=1).indices  # [B, kc], best first
        lam_min = smallest_lambda(u.flatten(1)[:, None], b[top].abs().flatten(2))  # [B, kc]
        ok = lam_min <= upper + 1e-4
        first_ok = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(len(t), dtype=torch.long))
        rows = torch.arange(len(t))
        idx, lm = top[rows, first_ok], lam_min[rows, first_ok]
        lam = lm.clamp(1 - upper, upper)
        a = pick_signs(u, b[idx], lam, self.scales, self.iters, self.colour_weight)
        return (a + 1) / 2, {"pool_index": idx, "lam": lam, "lam_min": lm, "consistent": ok[rows, first_ok],
                             "correlation": corr[rows, idx]}

    def attack(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        d = self.require_defense()
        t = self.check_protected(protected, tuple(getattr(d, "output_range", (-1.0, 1.0))))
        return self.unmix_all(t, CHUNK)

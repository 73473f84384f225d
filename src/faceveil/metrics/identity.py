"""Identity metrics for attacks: cosine similarity (COS) and the success rate of replay attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.models.base import OperatingPoint, pairwise_distance


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity between two embedding batches (FaceObfuscator's COS)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def srra(recon_emb: Tensor, victim_emb: Tensor, op: OperatingPoint) -> Tensor:
    """Success of replay attacks (AdvFace / FaceObfuscator SRRA): a reconstruction succeeds when the
    deployed recogniser accepts it as the victim, i.e. its distance to the victim's template is at
    most the saved operating threshold. Returns a bool per pair; its mean is the SRRA."""
    return pairwise_distance(recon_emb.float(), victim_emb.float(), op.metric) <= op.threshold


def closer_to_own(recon_emb: Tensor, source_emb: Tensor, metric: str, seed: int = 0) -> Tensor:
    """For each reconstruction, whether it is closer to its own source than to a random other
    source (a derangement drawn with ``seed``). Returns a bool per reconstruction."""
    n = len(recon_emb)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    fix = perm == torch.arange(n)
    perm[fix] = (perm[fix] + 1) % n  # break fixed points
    d_own = pairwise_distance(recon_emb, source_emb, metric)
    d_other = pairwise_distance(recon_emb, source_emb[perm], metric)
    return d_own < d_other


def sar(recon_emb: Tensor, target_emb: Tensor, threshold: float, metric: str) -> float:
    """Successful attack rate (SAR) of template inversion (Mai et al., TPAMI 2019, Sec. 5; Dong et al.
    2021 and later template-inversion papers): the fraction of reconstructions the recogniser accepts
    as their target, i.e. whose distance to the target template is at most ``threshold`` (a threshold
    fitted at a false match rate, e.g. FMR 1e-3, on impostor comparisons). Type I: ``target_emb`` is
    the template of the image the reconstruction was made from; type II: the template of another image
    of the same person. Row ``i`` of ``recon_emb`` is compared with row ``i`` of ``target_emb``."""
    if len(recon_emb) == 0:
        raise ValueError("sar of no reconstructions")
    d = pairwise_distance(recon_emb.float(), target_emb.float(), metric)
    return float((d <= threshold).double().mean())

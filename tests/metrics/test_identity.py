"""Identity metrics on constructed embeddings with known answers."""

from __future__ import annotations

import pytest
import torch

from faceveil.metrics.identity import sar


def test_sar_euclidean_known_answer():
    """Reconstructions at distances 0.1, 0.2, ..., 1.0 from their targets: at threshold 0.45, 4 of 10 pass."""
    target = torch.randn(10, 128)
    direction = torch.nn.functional.normalize(torch.randn(10, 128), dim=1)
    dist = torch.arange(1, 11, dtype=torch.float32) / 10
    recon = target + dist[:, None] * direction
    assert sar(recon, target, 0.45, "euclidean") == pytest.approx(0.4)
    assert sar(recon, target, 0.05, "euclidean") == 0.0
    assert sar(recon, target, 1.01, "euclidean") == 1.0
    # accepted at the threshold itself (distance <= threshold), like the deployed recogniser
    assert sar(recon[:1], target[:1], float((recon[0] - target[0]).norm()), "euclidean") == 1.0


def test_sar_cosine_and_pairing():
    """Cosine distance 1 - cos; rows are compared pairwise (a permuted gallery changes the answer)."""
    target = torch.eye(4)
    recon = torch.stack([torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 1, 1, 0]),  # cos 1, cos 0.707
                         torch.tensor([0.0, 0, -1, 0]), torch.tensor([1.0, 0, 0, 0])])  # cos -1, cos 0
    assert sar(recon, target, 0.3, "cosine") == pytest.approx(0.5)  # rows 0 and 1 (1 - 0.707 = 0.29)
    assert sar(recon, target, 0.2, "cosine") == pytest.approx(0.25)
    assert sar(recon, target.roll(1, 0), 0.3, "cosine") == 0.0
    with pytest.raises(ValueError):
        sar(recon[:0], target[:0], 0.3, "cosine")

"""Real templates for the template-protection measures: dlib embeddings of LFW images."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def lfw_templates(dlib_model, lfw):
    """Unit-norm dlib embeddings (float64) and subject labels of the 1,549 images of LFW's
    ``pairsDevTest.txt`` (963 people, 983 same-person image pairs); cached after the first run."""
    from faceveil.models.embed import dataset_embeddings

    p = lfw.pairs("devtest")
    idx = np.unique(np.concatenate([p.a, p.b]))
    emb, status, _ = dataset_embeddings(dlib_model, lfw.dataset(), idx, progress=False)
    x = emb.double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True), lfw.dataset().labels[idx]


def random_orthonormal(dim: int, seed: int) -> np.ndarray:
    """A Haar-random orthonormal matrix (QR of a Gaussian matrix with the signs of R's diagonal
    folded in): the key of a keyed random projection."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))

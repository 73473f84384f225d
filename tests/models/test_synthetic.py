"""Synthetic aligned faces from the pretrained DigiFace DCGAN (extra training faces for attackers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.data.align import to_tensor
from faceveil.models.base import CropSpec
from faceveil.models.generators import synthetic_chips, synthetic_faces

CROP = CropSpec(150, 0.25)


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return synthetic_chips(40, CROP, seed=0)


def test_chips_have_the_crop_size_and_are_seeded(chips):
    assert chips.shape == (40, 150, 150, 3) and chips.dtype == np.uint8
    assert np.array_equal(synthetic_chips(40, CROP, seed=0), chips)  # reproducible
    assert not np.array_equal(synthetic_chips(5, CROP, seed=1), chips[:5])  # the seed matters
    # any slice of the stream on its own (a prefix of more faces, or a window starting mid-block)
    assert np.array_equal(synthetic_chips(7, CROP, seed=0), chips[:7])
    window = synthetic_faces(30, CROP, seed=0, start=10)
    assert torch.allclose(window, to_tensor(chips[10:40]), atol=0.5 / 255 + 1e-6)
    assert synthetic_chips(6, CropSpec(112, 0.25)).shape == (6, 112, 112, 3)
    assert synthetic_chips(0, CROP).shape == (0, 150, 150, 3)
    with pytest.raises(ValueError):
        synthetic_faces(-1, CROP)


def test_chips_are_faces_to_dlib(chips, dlib_model):
    """The deployed recogniser sees distinct faces, not nothing: finite embeddings, more similar to each
    other (raw cosine) than to a featureless grey image's, and spread like different people, where
    featureless images (grey, noise) all collapse onto one "nobody" (pairwise distances ~0.1-0.6). Measured
    on 300 samples: median pairwise distance 0.68 (LFW impostor pairs 0.82, genuine 0.44; 12 % of GAN pairs
    fall within dlib's 0.6 vs 0 % of impostors: the GAN's faces are less varied than real people), and
    dlib's HOG detector finds 69 % of the chips (99 % of LFW chips)."""
    from faceveil.data.align import detect
    from faceveil.errors import FaceNotFoundError

    e = dlib_model.embed(to_tensor(chips))
    assert torch.isfinite(e).all()
    iu = tuple(torch.triu_indices(len(e), len(e), 1))
    grey = dlib_model.embed(torch.full((1, 3, 150, 150), 0.5))
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[:, None], e[None], dim=-1)[iu].mean() > cos(e, grey).mean()
    noise = torch.rand(8, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    nothing = dlib_model.embed(torch.cat([noise, torch.full((1, 3, 150, 150), 0.5), torch.zeros(1, 3, 150, 150)]))
    d = torch.cdist(e, e)[iu]
    d0 = torch.cdist(nothing, nothing)[tuple(torch.triu_indices(len(nothing), len(nothing), 1))]
    assert 0.5 < float(d.median()) < 0.95 and d.median() > 2 * d0.median(), (float(d.median()), float(d0.median()))
    found = 0
    for c in chips[:20]:
        try:
            detect(c, cnn=False)
            found += 1
        except FaceNotFoundError:
            pass
    assert found >= 10, found

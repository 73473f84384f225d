"""LFW protocols, identity-disjoint training data, CelebA, folders, data-dir resolution."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.config import data_dir
from faceveil.data.datasets import celeba, folder_dataset, public_training_faces
from faceveil.errors import FaceveilDataError


def test_lfw_pairs_protocol(lfw):
    p = lfw.pairs("pairs")
    assert len(p.a) == 6000 and p.same.sum() == 3000
    assert np.bincount(p.fold).tolist() == [600] * 10
    assert all(p.same[p.fold == f].sum() == 300 for f in range(10))
    ds = lfw.dataset()
    same_names = {(ds.files[a].split("/")[0], ds.files[b].split("/")[0]) for a, b in zip(p.a[p.same], p.b[p.same], strict=True)}
    assert all(x == y for x, y in same_names)
    assert len(lfw.pairs("devtrain").a) == 2200 and len(lfw.pairs("devtest").a) == 1000


def test_non_pair_images_are_identity_disjoint(lfw):
    extra = lfw.non_pair_images()
    eval_ids = lfw.pair_identities()
    assert len(extra) == 1549
    assert not {f.split("/")[0] for f in extra.files} & eval_ids


def test_public_training_faces_exclude_eval_identities(lfw):
    sets = public_training_faces(lfw.base.parent)
    names = [s.name for s in sets]
    assert names[0] == "celeba-aligned" and names[-1] == "lfw"
    assert sum(len(s) for s in sets) >= 6000 + 1549


def test_celeba_attributes(data_root):
    c = celeba(data_root, "aligned")
    assert len(c) == 6000 and len(set(c.labels)) == 200
    assert (c.attributes["Male"] != 0).sum() == 548


def test_missing_folders_are_clear(tmp_path, monkeypatch):
    with pytest.raises(FaceveilDataError, match="CelebA wild"):
        celeba(tmp_path, "wild")
    with pytest.raises(FaceveilDataError, match="no images"):
        folder_dataset(tmp_path)
    monkeypatch.setenv("FACEVEIL_DATA", str(tmp_path / "absent"))
    with pytest.raises(FaceveilDataError, match="FACEVEIL_DATA"):
        data_dir()

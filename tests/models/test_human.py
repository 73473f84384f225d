"""Human's faceres and mobilefacenet through the TF.js graph interpreter vs TF.js 4.22.0 (CPU
backend, Human's own preprocessing) on six aligned LFW chips; registry, split and features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.models import RECOGNIZERS, get_recognizer
from faceveil.models.human import (
    FaceRes,
    FaceResAttributes,
    MobileFaceNet,
    faceres_age,
    gear_age,
)
from tests.models.conftest import load_tfjs_chips

TOL = 1e-5
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def faceres() -> FaceRes:
    return get_recognizer("faceres")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def mfn() -> MobileFaceNet:
    return get_recognizer("mobilefacenet")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def x224() -> torch.Tensor:
    return load_tfjs_chips("human_224", FaceRes.crop)


@pytest.fixture(scope="module")
def x112() -> torch.Tensor:
    return load_tfjs_chips("human_112", MobileFaceNet.crop)


def test_registered() -> None:
    assert "faceres" in RECOGNIZERS and "mobilefacenet" in RECOGNIZERS
    assert FaceRes.embedding_dim == 1024 and FaceRes.crop.size == 224
    assert MobileFaceNet.embedding_dim == 192 and MobileFaceNet.crop.size == 112


def test_faceres_matches_tfjs(faceres: FaceRes, x224: torch.Tensor, reference: dict) -> None:
    with torch.no_grad():
        desc = faceres(x224)
        attrs = FaceResAttributes(faceres.graph)(x224)
    assert desc.shape == (6, 1024)
    assert np.abs(desc.numpy() - reference["faceres_descriptor"]).max() <= TOL  # measured 2.0e-6
    assert np.abs(attrs["gender"][:, :1].numpy() - reference["faceres_gender"]).max() <= TOL
    assert np.abs(attrs["age_bins"].numpy() - reference["faceres_age"]).max() <= TOL


def test_faceres_bgr_variant(faceres: FaceRes, x224: torch.Tensor) -> None:
    bgr = get_recognizer("faceres-bgr")
    assert bgr.metric == "cosine" and bgr.crop == faceres.crop
    with torch.no_grad():
        assert torch.equal(bgr(x224[:2]), faceres(x224[:2].flip(1)))


def test_mobilefacenet_matches_tfjs(mfn: MobileFaceNet, x112: torch.Tensor, reference: dict) -> None:
    with torch.no_grad():
        emb = mfn(x112)
    assert emb.shape == (6, 192)
    assert np.abs(emb.numpy() - reference["mobilefacenet"]).max() <= TOL  # measured 2.2e-7
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)


def test_features_match_tfjs_intermediate(mfn: MobileFaceNet, x112: torch.Tensor, reference: dict) -> None:
    node = "MobileFaceNet/MobileFaceNet/Conv2d_6_InvResBlock_1/Add"
    with torch.no_grad():
        f = mfn.features(x112[:2], [node, "embeddings"])
    got = f[node].permute(0, 2, 3, 1).numpy()  # features are NCHW
    ref = reference["mobilefacenet_block6"]
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()  # relative: values reach ~180
    assert torch.equal(f["embeddings"], mfn(x112[:2]))


@pytest.mark.parametrize("which", [0, 1, 10, "MobileFaceNet/MobileFaceNet/Conv2d_4_InvResBlock_5/Add", -1])
def test_mobilefacenet_split_is_exact(mfn: MobileFaceNet, x112: torch.Tensor, which: int | str) -> None:
    names = mfn.layer_names()
    at = names[which] if which == -1 else which
    client, server = mfn.split(at)
    with torch.no_grad():
        h = client(x112)
        assert torch.equal(server(h), mfn(x112))
    assert h.ndim in (2, 4)
    # each half holds only its own weights (shared with the full model)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0 < n(client) < n(mfn) and n(client) + n(server) == n(mfn)


def test_faceres_split_is_exact(faceres: FaceRes, x224: torch.Tensor) -> None:
    names = faceres.layer_names()
    assert "conv_pw_13_relu/clip_by_value" in names and "global_pooling/Mean" not in names
    client, server = faceres.split("conv_dw_6_relu/clip_by_value")
    with torch.no_grad():
        h = client(x224[:2])
        assert h.shape[1] == 256  # NCHW
        assert torch.equal(server(h), faceres(x224[:2]))


def test_split_rejects_non_cut_nodes(mfn: MobileFaceNet) -> None:
    with pytest.raises(ValueError, match="cannot split"):
        mfn.split("MobileFaceNet/MobileFaceNet/Conv2d_2_InvResBlock_1/Conv/Relu")  # inside a PReLU
    with pytest.raises(ValueError, match="no such node"):
        mfn.split("nope")
    with pytest.raises(ValueError, match="out of range"):
        mfn.split(10_000)


def test_embed_resizes_and_is_differentiable(mfn: MobileFaceNet, x224: torch.Tensor) -> None:
    e = mfn.embed(x224[:2])  # 224 chips resized to 112 by prepare()
    assert e.shape == (2, 192)
    x = x224[:1, :, :112, :112].clone().requires_grad_(True)
    mfn(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    d = mfn.distance(e[:1], e[1:])
    assert d.shape == (1,) and float(d) > 0


def test_age_formulas() -> None:
    bins = torch.zeros(2, 100)
    bins[0, 30], bins[0, 29], bins[0, 31] = 0.6, 0.3, 0.1  # faceres.ts: 30 - 10*0.3
    bins[1, 0], bins[1, 1] = 0.9, 0.1  # no left neighbour: 0 + 10*0.1
    assert torch.allclose(faceres_age(bins), torch.tensor([27.0, 1.0]))
    p = torch.tensor([[0.1, 0.6, 0.3, 0, 0, 0, 0]])
    # gear.ts: start at 23 (best bin), then += 0.3*(28-age), then += 0.1*(15-age)
    age = 23.0
    age += 0.3 * (28 - age)
    age += 0.1 * (15 - age)
    assert torch.allclose(gear_age(p), torch.tensor([age]))


def test_mobilefacenet_published_graph_is_degenerate(mfn: MobileFaceNet, reference: dict) -> None:
    """Why mobilefacenet scores ~62 % on LFW (see the MobileFaceNet docstring): TF.js itself (the
    stored reference, no interpreter involved) gives six different people embeddings with cosine
    similarity >= 0.999, and the graph carries the converter's broken depthwise PReLUs."""
    e = torch.from_numpy(reference["mobilefacenet"])
    c = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T
    assert c[~torch.eye(6, dtype=torch.bool)].min() > 0.999
    g = mfn.graph
    consumers: dict[str, list[str]] = {}
    for n in g.nodes.values():
        for i in n.inputs:
            consumers.setdefault(i, []).append(n.op)
    broken = [n.name for n in g.nodes.values() if n.op == "FusedDepthwiseConv2dNative"
              and n.attr.get("fused_ops") == ["BiasAdd", "Relu"] and "Abs" in consumers.get(n.name, [])]
    assert len(broken) == 16  # PReLU's negative part reads the post-Relu tensor -> always 0

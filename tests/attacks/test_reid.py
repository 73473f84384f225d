"""Re-identification machinery: splits, scenarios, top-k, embedding attackers, from-scratch CNNs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.attacks.reid import (
    ReidBudget,
    ResNet18,
    VGGNet,
    cnn_attack,
    embedding_attack,
    fit_embedding_classifier,
    make_split,
    scenario_data,
    topk_accuracy,
)


def test_split_counts_and_determinism():
    labels = np.repeat(np.arange(12), [12, 10, 10, 3, 11, 10, 10, 10, 10, 15, 10, 10])
    s = make_split(labels, n_ids=5, per_id=10, split=(7, 1, 2), seed=1)
    assert s.n_ids == 5 and len(s.index) == 50 and len(set(s.index.tolist())) == 50
    assert (len(s.train), len(s.val), len(s.test)) == (35, 5, 10)
    assert set(s.train) | set(s.val) | set(s.test) == set(range(50))
    assert not (set(s.train) & set(s.test))
    for k in range(5):
        assert (s.labels[s.train] == k).sum() == 7 and (s.labels[s.test] == k).sum() == 2
        assert len(set(labels[s.index[s.labels == k]])) == 1  # one source identity per label
    assert 3 not in labels[s.index]  # identities with too few images are never chosen
    s2 = make_split(labels, n_ids=5, per_id=10, split=(7, 1, 2), seed=1)
    assert np.array_equal(s.index, s2.index)
    with pytest.raises(ValueError):
        make_split(labels, n_ids=12, per_id=10)
    with pytest.raises(ValueError):
        make_split(labels, n_ids=2, per_id=10, split=(7, 1, 1))


def test_split_is_nested():
    """A smaller subset is a prefix of identities of a larger one (per-identity caches are shared)."""
    labels = np.repeat(np.arange(40), 12)
    small, big = make_split(labels, 10, 10, seed=3), make_split(labels, 25, 10, seed=3)
    ids_small = set(labels[small.index].tolist())
    assert np.array_equal(small.index, big.index[: len(small.index)])  # a prefix, identities in the same order
    for ident in ids_small:  # the same images, in the same split, for every shared identity
        for part in ("train", "val", "test"):
            a = sorted(small.index[getattr(small, part)][labels[small.index[getattr(small, part)]] == ident].tolist())
            b = sorted(big.index[getattr(big, part)][labels[big.index[getattr(big, part)]] == ident].tolist())
            assert a == b


def test_topk():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.1, 0.3, 0.2]])
    y = np.array([1, 2, 0])
    assert topk_accuracy(scores, y, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, y, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, y, 5) == 1.0


def test_scenarios_pick_the_right_sources():
    labels = np.repeat(np.arange(3), 10)
    s = make_split(labels, 3, 10)
    orig, obf = torch.zeros(30, 1), torch.ones(30, 1)
    tr, va, te = scenario_data("T1", orig, obf, s)
    assert tr.sum() == 0 and va.sum() == 0 and te.mean() == 1
    tr, va, te = scenario_data("T2", orig, obf, s)
    assert tr.mean() == 1 and va.mean() == 1 and te.sum() == 0
    tr, _, te = scenario_data("T3", orig, obf, s)
    assert tr.mean() == 1 and te.mean() == 1
    with pytest.raises(ValueError):
        scenario_data("T4", orig, obf, s)


def _clustered(n_ids: int, per_id: int, dim: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    labels = np.repeat(np.arange(n_ids), per_id)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("kind", ["centroid", "linear"])
def test_embedding_attackers(kind):
    emb, labels = _clustered(20, 10, 32, 0.3)
    s = make_split(labels, 20, 10)
    e = emb[s.index]
    r = embedding_attack(e, e, s, "T1", kind)
    assert r["top1"] > 0.95 and r["top5"] == 1.0
    noise = torch.randn_like(e)  # obfuscation that destroys identity -> about chance
    r = embedding_attack(e, noise, s, "T1", kind)
    assert r["top1"] < 0.2
    clf = fit_embedding_classifier(e[s.train], s.labels[s.train], 20, kind)
    assert clf(e[:3]).shape == (3, 20)


def test_cnn_shapes():
    for net in (VGGNet(7, width=8), ResNet18(7, width=8)):
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["vgg", "resnet18"])
def test_cnn_learns_easy_classes(arch):
    """Three identities that differ in colour: a few epochs beat chance by far."""
    torch.manual_seed(0)
    labels = np.repeat(np.arange(3), 10)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    x = (colours[labels][:, :, None, None] + 0.1 * torch.rand(30, 3, 16, 16)).clamp(0, 1)
    s = make_split(labels, 3, 10)
    budget = ReidBudget(epochs=12, max_seconds=60, batch_size=8, width=8, size=16, lr=5e-3)
    acc, model, log = cnn_attack(arch, x[s.index], x[s.index], s, "T1", budget)
    assert acc["top1"] > 0.6 and log["epochs"] >= 1 and 0 <= log["best_epoch"] < log["epochs"]
    again, _, _ = cnn_attack(arch, x[s.index], x[s.index], s, "T3", budget, model=model)  # reuse, no training
    assert again == acc

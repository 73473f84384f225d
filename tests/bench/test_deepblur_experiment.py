"""DeepBlur experiment machinery: per-identity block caches shared by nested subsets, the
embedding-space Frechet distance, and (slow) the ci profile end to end."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from faceveil.attacks.reid import make_split
from faceveil.bench.experiments.deepblur import EXPERIMENT_PROFILES, Blocks, frechet_distance


def test_blocks_cache_is_shared_by_nested_subsets(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path))
    labels = np.repeat(np.arange(12), 4)
    files = [f"id{i // 4}/{i}.jpg" for i in range(len(labels))]
    calls: list[int] = []

    def fn(xb, seed):
        calls.append(seed)
        return (xb.float().mean((1, 2, 3)) * 0 + seed)[:, None], {"n": len(xb)}

    def run(n_ids):
        s = make_split(labels, n_ids, 4, (2, 1, 1), seed=0)
        blocks = Blocks.per_identity([files[i] for i in s.index], s.labels, labels[s.index], "root")
        x = torch.randint(0, 256, (len(s.index), 3, 4, 4), dtype=torch.uint8)
        y, ms, extras = blocks.map("unit", ("v1",), x, fn, progress=False)
        assert y.shape == (len(s.index), 1) and ms >= 0 and all(e["n"] == 4 for e in extras)
        assert torch.equal(y[:, 0], torch.as_tensor(labels[s.index], dtype=y.dtype))  # block seed = source identity
        return blocks

    small = run(3)
    assert len(calls) == 3
    big = run(6)
    assert len(calls) == 6  # only the 3 new identities were computed
    assert big.keys[:3] == small.keys
    head = big.head(3)
    assert head.keys == small.keys and [b.tolist() for b in head.index] == [b.tolist() for b in small.index]


def test_frechet_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = frechet_distance(a, a + 1.0)
    assert shifted == pytest.approx(8.0, rel=1e-6)  # |mu_a - mu_b|^2 with equal covariances


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gan_face_generate") is None, reason="pip install --no-deps gan-face-generate")
def test_ci_profile_end_to_end(tmp_path, monkeypatch):
    from faceveil.bench.experiments.deepblur import run_experiment

    cfg = EXPERIMENT_PROFILES["ci"]
    r = run_experiment(cfg, out_dir=tmp_path, progress=False)
    t2 = r["data"]["table2"]
    assert set(t2) == {"original", *cfg.baselines, *(f"deepblur σ={s:g}" for s in cfg.sigmas),
                       *(f"deepblur reflect σ={s:g}" for s in cfg.reflect_sigmas)}
    assert t2["original"]["dlib/centroid"]["T1"]["top1"] >= 0.8  # the strong attacker identifies originals
    assert set(r["data"]["table1"]) == set(t2) - {"original"}
    assert len(r["figures"]) == 3 and all((tmp_path / p).exists() for p in r["figures"])
    # the literal eq. 2 shares the latents: at the same sigma its output differs from the average border's
    assert r["data"]["methods"]["deepblur reflect σ=2"]["config"]["border"] == "reflect"
    assert r["data"]["table1"]["deepblur reflect σ=2"]["SSIM"] != r["data"]["table1"]["deepblur σ=2"]["SSIM"]
    # a re-run takes every trained classifier's row from the cache (none is trained again)
    from faceveil.bench.experiments import deepblur as exp

    calls = []
    real = exp.cnn_attack
    monkeypatch.setattr(exp, "cnn_attack", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    again = run_experiment(cfg, progress=False)
    assert calls == []
    assert json.dumps(again["data"]["table2"], default=str) == json.dumps(t2, default=str)

"""FaceObfuscator's channel importance (Algorithm 3) end to end on real faces, at a tiny budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.bench import channels
from faceveil.bench.channels import STAGES, ChannelBudget, channel_importance, format_channels
from faceveil.defenses.faceobfuscator import CHANNEL_NAMES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    channels.CHANNEL_BUDGETS["test"] = ChannelBudget(steps=3, seconds=60.0, train_images=96, per_fold=2, attack_profile="ci",
                                                     attack_steps=2, attack_images=96, attack_pairs=4)
    out = tmp_path_factory.mktemp("channels")
    yield channel_importance("test", out, progress=False, seed=1), out
    del channels.CHANNEL_BUDGETS["test"]


def test_stages_remove_the_least_important_channels(tiny):
    """Every stage keeps the channels of the previous stage with the largest |alpha|, down to one;
    the ranking is a permutation of the 64 zigzag names, led by the 64-channel stage's |alpha|."""
    r, _ = tiny
    st = r["stages"]
    assert [s["n"] for s in st] == list(STAGES) and sorted(r["ranking"]) == sorted(CHANNEL_NAMES)
    assert st[0]["kept"] == list(range(64))
    for prev, cur in zip(st, st[1:], strict=False):
        a = np.abs(np.asarray(prev["alpha"]))
        best = {prev["kept"][i] for i in np.argsort(-a)[: cur["n"]]}
        assert set(cur["kept"]) == best and len(cur["kept"]) == cur["n"]
        assert cur["names"] == ",".join(CHANNEL_NAMES[i] for i in cur["kept"])
    a0 = np.abs(np.asarray(st[0]["alpha"]))
    assert r["ranking"][0] == CHANNEL_NAMES[int(a0.argmax())]
    assert r["ac01_ac10_rank"] == [r["ranking"].index("AC01") + 1, r["ranking"].index("AC10") + 1]
    for s in st:
        assert 0.0 <= s["acc"] <= 1.0 and -1.0 <= s["cos"] <= 1.0 and np.isfinite(s["ssim"])


def test_outputs_written_and_stages_cached(tiny, tmp_path, monkeypatch):
    """The heat map, the curve and channels.json are written; a second run reads every stage from the
    cache (a stopped full run resumes at the next stage) and gives the same result."""
    r, out = tiny
    assert (out / "channel_importance.png").stat().st_size > 0 and (out / "channels_curve.png").stat().st_size > 0
    assert (out / "channels.json").is_file()
    monkeypatch.setattr(channels, "train_gated", lambda *a, **k: pytest.fail("stage retrained"))
    again = channel_importance("test", tmp_path, progress=False, seed=1)
    assert again["ranking"] == r["ranking"] and [s["acc"] for s in again["stages"]] == [s["acc"] for s in r["stages"]]
    assert "AC01/AC10 ranks" in format_channels(again)

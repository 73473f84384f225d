"""The AdvFace experiment's paper-style judge on real LFW data (ci profile)."""

from __future__ import annotations

import pytest
import torch

from faceveil.bench.experiments import advface as ax
from faceveil.bench.experiments.common import experiment_context
from faceveil.defenses import get_defense


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, data_root):
    torch.set_num_threads(1)
    return experiment_context("ci", tmp_path_factory.mktemp("advface"), data=data_root, progress=False)


def test_channel_judge_equals_the_unprotected_systems_channel_attack(ctx):
    """AdvFace's channel carries the plain z by design, so the plain-z attacker judged on AdvFace's
    channel (the experiment's ``judge``) gives exactly the harness's numbers for the unprotected
    split system; a second judgement is re-read from the judged-result cache."""
    adv = ax.advface(ctx)
    attacker = ax.plain_attacker("resrec", ctx)
    r = ax.judge(attacker, adv, "channel", ctx, grid="advface-channel-test")
    plain = ax.capped_privacy(get_defense("none", transmit=ax.AT), "resrec", ctx)
    assert r["cache"] == plain["cache"]  # the same trained attacker
    assert r["metrics"] == plain["metrics"] and r["eval"]["n"] == plain["eval"]["n"] > 0
    assert r["defense"]["name"] == "advface" and r["grid"].endswith("advface-channel-test.png")
    again = ax.judge(attacker, adv, "channel", ctx)
    assert again["eval_cache"] == r["eval_cache"] and again["metrics"] == r["metrics"]

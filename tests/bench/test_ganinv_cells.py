"""The harness gives the GAN-prior attacks what they declare they need (faceveil.attacks.ganinv): ``ganinv-es``
(``queries``) a query oracle against the deployed system, its queries per face counted and reported; ``ganinv``
(``pairs`` + ``forward_map``) a mapping trained once through fit_and_save and shared by every refinement setting,
its refinement's cost per face reported."""

from __future__ import annotations

import torch

from faceveil.attacks.base import ThreatModel, profile_budget
from faceveil.bench.privacy import run_attack
from faceveil.bench.privacy.run import format_result
from faceveil.context import RunContext
from faceveil.defenses import get_defense

CI = RunContext("ci", progress=False)
FORCE = CI.replace(force=True)
SMALL = dict(hidden=64, depth=2, gan_pairs=256, gan_batch=16, id_batch=2)


def test_query_attack_gets_an_oracle_and_reports_its_queries(tmp_path):
    torch.set_num_threads(1)
    d = get_defense("none", transmit="embedding")
    kw = dict(budget=profile_budget("ci"), eval_pairs_n=3, attack_kwargs=dict(queries=25, population=6))
    r = run_attack(d, "ganinv-es", ThreatModel(), FORCE.replace(out_dir=tmp_path), **kw)
    assert r["attack"]["name"] == "ganinv-es" and r["threat"]["knowledge"] == "black-box client"
    assert r["attack_per_face"] == {"queries": 24.0}  # 4 generations of 6: never more than the budget of 25
    assert r["attack_ms_per_face"] > 0 and r["train_log"] is None
    assert "24 queries/face" in format_result(r) and "s/face" in format_result(r)
    m = r["metrics"]["reconstruction"]
    assert 0 <= m["SAR_I@1e-3"] <= 1 and 0 <= m["judge_SAR_I@1e-3"] <= 1
    again = run_attack(d, "ganinv-es", ThreatModel(), CI, **kw)  # the searched reconstructions are cached
    assert again["attack_per_face"] == r["attack_per_face"] and again["attack_ms_per_face"] == r["attack_ms_per_face"]


def test_refinement_shares_the_trained_mapping_and_reports_its_cost():
    torch.set_num_threads(1)
    d = get_defense("none", transmit="embedding")
    budget = profile_budget("ci", max_steps=3, train_images=64)
    run = dict(budget=budget, eval_pairs_n=2)
    first = run_attack(d, "ganinv", ThreatModel(), FORCE, attack_kwargs=SMALL | dict(steps=2, feature_steps=1), **run)
    assert first["train_log"]["steps"] == 3 and first["cache"].split("/")[-1].startswith("ganinv-map-")
    assert first["attack_ms_per_face"] > 0
    # another refinement setting and the bare mapping load the same trained mapping (no retraining)
    other = run_attack(d, "ganinv", ThreatModel(), CI, attack_kwargs=SMALL | dict(steps=1, feature_steps=0), **run)
    mapping = run_attack(d, "ganinv-map", ThreatModel(), CI, attack_kwargs=SMALL, **run)
    assert other["cache"] == mapping["cache"] == first["cache"]
    assert other["train_log"]["seconds"] == mapping["train_log"]["seconds"] == first["train_log"]["seconds"]
    assert other["attack"] != first["attack"]

"""Template-protection measures of benchmarked systems, on real LFW faces."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.bench.build import bench_system
from faceveil.bench.protection import devtest_images, protection_table, template_protection
from faceveil.defenses import get_defense


def test_devtest_images_keep_mated_subjects(lfw):
    idx = devtest_images(lfw, 100)
    labels = lfw.dataset().labels[idx]
    _, counts = np.unique(labels, return_counts=True)
    assert len(idx) <= 100 and (counts >= 2).all()  # every subject taken has another image
    assert len(devtest_images(lfw, None)) == 1549


@pytest.fixture(scope="module")
def measured(lfw):
    out = {}
    for name, kw in (("none", {"transmit": "embedding"}), ("keyed-projection", {"research_key_seed": 0})):
        out[name] = template_protection(bench_system(get_defense(name, **kw), "frozen", "ci", progress=False), lfw,
                                        images=600)
    return out


def test_unprotected_embeddings_link_and_a_new_seed_renews_nothing(measured):
    p = measured["none"]
    assert p["second"] == "another seed" and p["mated"] > 1000
    # measured (599 images, 1,160 mated scores): D<->sys 0.972, 92.6 % of old templates still accepted, FNMR 7.4 %
    assert p["d_sys"] > 0.9 and p["renewability"] > 0.8 and p["fnmr@1e-3"] < 0.2


def test_keyed_projection_templates_under_two_keys_are_unlinkable_and_renewable(measured):
    p = measured["keyed-projection"]
    assert p["second"] == "another key"
    # measured (599 images, 1,160 mated scores): D<->sys 0.057 (the histogram estimator's bias at that count),
    # 0 % of old templates accepted, FNMR 14.5 %
    assert p["d_sys"] < 0.1 and p["renewability"] <= 0.01 and p["fnmr@1e-3"] < 0.3


def test_protection_table_renders_the_measures_beside_the_worst_case(measured):
    cells = [{"kind": "utility", "status": "ok", "setting": "keyed", "defense": "keyed-projection",
              "result": {"protection": measured["keyed-projection"]}},
             {"kind": "utility", "status": "ok", "setting": "broken one", "defense": "x",
              "result": {"protection": {"error": "ValueError: boom"}}}]
    prows = [{"setting": "keyed", "defense": "keyed-projection", "status": "ok", "who": "reconstruction",
              "attack": "dn", "leakage": "channel", "SAR_II@1e-3": 0.0, "SAR_I@1e-3": 0.0, "COS": 0.0, "n": 100}]
    md = protection_table({"cells": cells}, prows)
    assert "| keyed | " in md and "another key" in md and "0.0 (dn)" in md and "failed: `ValueError: boom`" in md
    assert protection_table({"cells": []}, []) is None

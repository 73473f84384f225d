"""The bench report's SAR columns and its ridge floor: a learned attack that does not beat the closed-form
``ridge`` decoder on the same setting and leakage is flagged (constructed results, no training)."""

from __future__ import annotations

import csv

from faceveil.bench.report import FLOOR_MARK, privacy_rows, privacy_table, write_report


def metrics(sar2: float, closer: float, cos: float = 0.1) -> dict:
    return {"MSE": 0.05, "PSNR": 13.0, "SSIM": 0.3, "COS": cos, "SRRA_same_image": 0.2, "SRRA_pair": 0.1,
            "closer_to_own": closer, "SAR_I@1e-3": sar2 + 0.1, "SAR_II@1e-3": sar2, "SAR_I@1e-4": sar2 / 2,
            "SAR_II@1e-4": sar2 / 4, "judge_SAR_I@1e-3": 0.05, "judge_SAR_II@1e-3": 0.02}


def cell(setting: str, attack: str, rec: dict, learned: bool = True, leakage: str = "channel") -> dict:
    return {"kind": "privacy", "setting": setting, "defense": "none", "status": "ok", "error": None,
            "result": {"attack": {"name": attack}, "threat": {"leakage": leakage}, "eval": {"n": 300},
                       "judge": {"cos": "faceres-bgr"},
                       "train_log": {"steps": 600} if learned else None,
                       "metrics": {"reconstruction": rec, "mean face": metrics(0.0, 0.5, 0.0),
                                   "random person": metrics(0.001, 0.5, 0.0)}}}


def results() -> dict:
    return {"profile": "quick", "seed": 0, "wall_seconds": 60.0, "failed": 0, "versions": {}, "cells": [
        cell("none (embedding)", "ridge", metrics(0.20, 0.90)),
        cell("none (embedding)", "dn", metrics(0.05, 0.95)),  # weak: below ridge in type-II SAR
        cell("none (embedding)", "cgan", metrics(0.30, 0.97)),  # beats it on both
        cell("none (embedding)", "whitebox", metrics(0.0, 0.5), learned=False),  # not learned: never flagged
        cell("none (res1 map)", "dn", metrics(0.01, 0.6)),  # no ridge cell on this setting: nothing to compare
        cell("blur", "ridge", metrics(0.0, 0.6)),
        cell("blur", "dn", metrics(0.0, 0.55)),  # ties at 0 % SAR are not flagged, closer-to-own is
    ]}


def test_learned_attacks_below_the_ridge_floor_are_flagged(tmp_path):
    rows = privacy_rows(results())
    rec = {(r["setting"], r["attack"]): r for r in rows if r.get("who") == "reconstruction"}
    assert rec[("none (embedding)", "dn")]["below_ridge_floor"] == "SAR_II@1e-3"
    assert rec[("none (embedding)", "cgan")]["below_ridge_floor"] == ""
    assert rec[("none (embedding)", "whitebox")]["below_ridge_floor"] is None
    assert rec[("none (embedding)", "ridge")]["below_ridge_floor"] is None
    assert rec[("none (res1 map)", "dn")]["below_ridge_floor"] is None
    assert rec[("blur", "dn")]["below_ridge_floor"] == "closer_to_own"

    table = privacy_table(rows).splitlines()
    line = {(r.split("|")[1].strip(), r.split("|")[2].strip()): r for r in table[2:]}
    assert FLOOR_MARK in line[("none (embedding)", "dn")] and FLOOR_MARK not in line[("none (embedding)", "cgan")]
    assert "| floor |" in line[("none (embedding)", "ridge")]
    assert "| 15.0 / 5.0 | 2.5 / 1.2 | 5.0 / 2.0 |" in line[("none (embedding)", "dn")]  # SAR I / II, in %
    assert all(r.count("|") == table[0].count("|") for r in table)

    md = write_report(results(), {}, tmp_path).read_text()
    assert "Ridge floor" in md and "2 learned attack cell(s) do not" in md
    assert "dn on none (embedding) (channel): SAR_II@1e-3" in md and "cgan on" not in md.split("Ridge floor")[1].split("\n")[0]
    assert "SAR I / II @FMR 1e-4" in md and "judge SAR" in md
    csv_rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    dn = next(r for r in csv_rows if r.get("attack") == "dn" and r.get("who") == "reconstruction")
    assert dn["below_ridge_floor"] == "SAR_II@1e-3" and float(dn["SAR_II@1e-4"]) == 0.0125


def test_results_judged_before_sar_still_render():
    r = results()
    for c in r["cells"]:
        for m in c["result"]["metrics"].values():
            for k in [k for k in m if "SAR" in k]:
                del m[k]
    rows = privacy_rows(r)
    table = privacy_table(rows)
    assert "— / —" not in table and "| — | — | — |" in table


def test_ties_at_a_bound_are_not_flagged():
    from faceveil.bench.report import _not_beaten

    assert not _not_beaten(1.0, 1.0) and not _not_beaten(0.0, 0.0)  # nothing to beat at 0 % or 100 %
    assert _not_beaten(0.5, 0.5) and _not_beaten(0.4, 0.5) and not _not_beaten(0.6, 0.5)


def test_scatter_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from faceveil.bench.report import _place_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(90 + 0.1 * i, 5.0 + 0.2 * (i % 3), f"setting number {i}") for i in range(8)]  # a tight cluster
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlim(80, 100)
    ax.set_ylim(0, 20)
    boxes = _place_labels(ax, pts)
    plt.close(fig)
    assert len(boxes) == len(pts)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_grid_rows_carry_their_labels_in_the_image(tmp_path):
    import numpy as np
    import pytest
    import torch
    from PIL import Image

    from faceveil.bench.privacy.figures import image_grid

    rows = [torch.ones(4, 3, 64, 64) for _ in range(3)]  # white faces: any dark pixel in the margin is text
    p = image_grid(rows, tmp_path / "g.png", labels=["originals", "blur k=16: what the attacker holds (channel)", ""])
    a = np.asarray(Image.open(p).convert("L"))
    assert a.shape[1] == 230 + 4 * 66 + 2
    margin = a[:, :230]
    row = [margin[2 + r * 66 : 2 + r * 66 + 64] for r in range(3)]
    assert (row[0] < 128).sum() > 20 and (row[1] < 128).sum() > (row[0] < 128).sum()  # longer label, more ink
    assert (row[2] < 128).sum() == 0  # an empty label draws nothing
    with pytest.raises(ValueError, match="2 labels for 3"):
        image_grid(rows, tmp_path / "h.png", labels=["a", "b"])


def test_grid_labels_draw_greek_letters():
    """Setting labels carry ε, σ, α (AdvFace ε=0.2, DeepBlur σ=2, PMT α=0.02): the label font has their glyphs
    (PIL's built-in font drew them as the same missing-glyph box)."""
    from faceveil.bench.privacy.figures import _label_font

    font = _label_font(12)
    glyphs = {ch: bytes(font.getmask(ch)) for ch in "εσα\uffff"}  # the last: a code point no font draws
    assert len(set(glyphs.values())) == 4

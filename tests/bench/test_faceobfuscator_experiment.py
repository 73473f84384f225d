"""The FaceObfuscator experiment's entry point (the tables themselves run in the bench, not in tests)."""

from __future__ import annotations

import sys

import pytest

from faceveil.bench.experiments import faceobfuscator as fo_exp


def test_unknown_part_is_refused_by_name(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["faceobfuscator", "--only", "table3,table9", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        fo_exp.main()
    assert e.value.code == 2
    assert "table9" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the arguments are valid


def test_no_part_selected_runs_nothing(tmp_path):
    from faceveil.bench.plan import ExperimentContext

    r = fo_exp.run(ExperimentContext(out_dir=tmp_path, options={"parts": ("none-of-them",)}))
    assert r["markdown"] == "" and r["figures"] == []
    assert all(v == {} for v in r["data"].values())

"""``faceveil report diff``: two benchmark runs compared cell by cell (constructed runs)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

from faceveil.bench.diff import diff_results


def run() -> dict:
    util = {"kind": "utility", "setting": "blur", "defense": "blur", "status": "ok", "error": None,
            "result": {"servers": {"frozen": {"acc_mean": 0.89, "acc_std": 0.02, "tpr_at_fpr_1e2": 0.5,
                                              "tpr_at_fpr_1e3": 0.1}}}}

    def priv(attack, steps, ssim, status="ok"):
        c = {"kind": "privacy", "setting": "blur", "defense": "blur", "status": status, "error": None,
             "attack": attack, "leakage": "channel", "view": None, "result": {}}
        if status == "ok":
            c["result"] = {"attack": {"name": attack}, "threat": {"leakage": "channel", "view": None},
                           "train_log": None if steps is None else {"steps": steps},
                           "metrics": {"reconstruction": {"SSIM": ssim, "SAR_II@1e-3": 0.2}}}
        return c

    return {"cells": [util, priv("whitebox", None, 0.93), priv("dn", 138, 0.51), priv("cgan", 70, 0.40),
                      priv("ridge", 1, 0.3, status="failed")]}


def test_identical_runs_do_not_differ():
    d = diff_results(run(), run())
    assert d.same and d.compared == 4 and not d.differences


def test_differences_beyond_tolerance_status_and_missing_cells():
    b = copy.deepcopy(run())
    b["cells"][0]["result"]["servers"]["frozen"]["acc_mean"] = 0.8905  # within 1e-3
    b["cells"][1]["result"]["metrics"]["reconstruction"]["SSIM"] = 0.90  # beyond
    b["cells"][2]["result"]["train_log"]["steps"] = 44  # wall-time bounded attacker: not comparable
    b["cells"][3]["status"], b["cells"][3]["result"] = "failed", {}
    b["cells"].append({"kind": "utility", "setting": "mask", "defense": "mask", "status": "ok", "result": {}})
    d = diff_results(run(), b)
    assert not d.same
    assert [(k[2], n) for k, n, *_ in d.differences] == [("whitebox", "reconstruction.SSIM")]
    assert [(k[2], x, y) for k, x, y in d.not_comparable] == [("dn", 138, 44)]
    assert [(k[2], x, y) for k, x, y in d.status] == [("cgan", "ok", "failed")]
    assert [k[1] for k in d.only_b] == ["mask"] and not d.only_a
    assert "reconstruction.SSIM: 0.93 vs 0.9" in d.text(1e-3)


def test_servers_trained_apart_are_named():
    """Two runs whose server weights differ (a student trained twice, e.g. under another thread count) say so
    beside their accuracy difference; same weights say nothing."""
    a, b = run(), run()
    a["cells"][0]["result"]["servers"]["frozen"]["model_digest"] = "aaaa"
    b["cells"][0]["result"]["servers"]["frozen"]["model_digest"] = "aaaa"
    assert not diff_results(a, b).retrained
    b["cells"][0]["result"]["servers"]["frozen"] |= {"model_digest": "bbbb", "acc_mean": 0.875}
    d = diff_results(a, b)
    assert [(k[1], s, x, y) for k, s, x, y in d.retrained] == [("blur", "frozen", "aaaa", "bbbb")]
    assert "server weights differ (trained apart; digests aaaa vs bbbb): utility / blur / frozen" in d.text(1e-3)


def test_cli_exit_codes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(run()))
    b = run()
    b["cells"][1]["result"]["metrics"]["reconstruction"]["SSIM"] = 0.5
    (tmp_path / "b" / "results.json").write_text(json.dumps(b))
    cli = [sys.executable, "-c", "from faceveil.cli import main; main()", "report", "diff"]
    same = subprocess.run(cli + [str(tmp_path / "a"), str(tmp_path / "a")], capture_output=True, text=True)
    assert same.returncode == 0 and "0 number(s) differ" in same.stdout
    differ = subprocess.run(cli + [str(tmp_path / "a"), str(tmp_path / "b" / "results.json")], capture_output=True, text=True)
    assert differ.returncode == 1 and "reconstruction.SSIM" in differ.stdout
    missing = subprocess.run(cli + [str(tmp_path / "a"), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no results.json" in missing.stderr

"""Attack cells (faceveil.bench.privacy) on real data: unprotected features are really reconstructed."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from faceveil.attacks.base import ThreatModel
from faceveil.bench.privacy import run_attack, visualise_held
from faceveil.cli import app
from faceveil.context import RunContext
from faceveil.data.align import to_tensor
from faceveil.data.chips import chip_images, recrop, resize
from faceveil.defenses import get_defense
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec

CI = RunContext("ci", progress=False)
FORCE = CI.replace(force=True)


@pytest.fixture(scope="module")
def res1_result(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("attack")
    return run_attack(get_defense("none", transmit="res1"), "urec", ThreatModel(), CI.replace(out_dir=out), return_images=True)


def test_unprotected_features_are_reconstructed(res1_result):
    m = res1_result["metrics"]
    rec, rnd, mean = m["reconstruction"], m["random person"], m["mean face"]
    # identity: reconstructions are closer to their own source than to a random other source
    assert rec["closer_to_own"] >= 0.65
    assert rnd["closer_to_own"] < 0.65 and mean["closer_to_own"] < 0.65
    # the independent judge sees the person, the baselines do not
    assert rec["COS"] > rnd["COS"] + 0.05 and rec["COS"] > mean["COS"] + 0.05
    assert rec["SSIM"] > mean["SSIM"] and rec["PSNR"] > rnd["PSNR"]


def test_result_records_threat_and_writes_grid(res1_result):
    r = res1_result
    assert r["threat"]["leakage"] == "channel" and r["threat"]["knowledge"] == "black-box client"
    assert r["judge"]["srra"] == "dlib" and r["eval"]["n"] == 100
    assert r["grid"].endswith(".png")
    im = r["images"]
    assert im["original"].shape == im["reconstruction"].shape == (8, 3, 64, 64)


def test_eval_pairs_override_reuses_cached_attacker(res1_result):
    """Fewer evaluation pairs: the same cached attacker (no retraining), judged on n pairs."""
    r = run_attack(get_defense("none", transmit="res1"), "urec", ThreatModel(), CI, eval_pairs_n=20)
    assert r["eval"]["n"] == 20 and r["cache"] == res1_result["cache"]
    assert r["metrics"]["reconstruction"]["COS"] > r["metrics"]["mean face"]["COS"]


def test_judged_results_are_cached_and_follow_the_attacker(res1_result, monkeypatch):
    """A re-run re-reads the judged result instead of re-embedding the reconstructions; a retrained
    attacker (a new file) is judged anew."""
    import os
    from pathlib import Path

    import faceveil.bench.privacy.run as run

    calls: list[int] = []
    real = run.judged
    monkeypatch.setattr(run, "judged", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(return_images=True)
    again = run_attack(get_defense("none", transmit="res1"), "urec", ThreatModel(), CI, **kw)
    assert calls == [] and again["metrics"] == res1_result["metrics"]
    torch.testing.assert_close(again["images"]["reconstruction"], res1_result["images"]["reconstruction"])
    path = Path(res1_result["cache"])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # what a retraining does to the key
    redo = run_attack(get_defense("none", transmit="res1"), "urec", ThreatModel(), CI, **kw)
    assert calls == [1] and redo["eval_cache"] != res1_result["eval_cache"]
    assert redo["metrics"]["reconstruction"]["COS"] == pytest.approx(res1_result["metrics"]["reconstruction"]["COS"], abs=1e-5)


def test_wrong_shape_for_trained_attacker(res1_result):
    from faceveil.attacks.base import profile_budget
    from faceveil.bench.privacy import train_attacker

    attack, _ = train_attacker(get_defense("none", transmit="res1"), "urec", ThreatModel(),
                               profile_budget("ci"), CI)
    with pytest.raises(FaceveilDataError, match="shape"):
        attack.attack(torch.zeros(2, 128))
    with pytest.raises(FaceveilDataError, match="float"):
        attack.attack(torch.zeros(2, 32, 35, 35, dtype=torch.int64))


def test_recrop_matches_direct_alignment(lfw_sample):
    sub, chips = lfw_sample
    other, _ = sub.subset(range(4)).chips(CropSpec(112, 0.1), progress=False)
    r = recrop(to_tensor(chips[:4]), CropSpec(150, 0.25), CropSpec(112, 0.1))
    assert (r - to_tensor(other)).abs().mean() * 255 < 1.5


def test_visualise_held_kinds():
    assert visualise_held(torch.randn(3, 128), 32).shape == (3, 3, 32, 32)
    assert visualise_held(torch.randn(3, 2, 112, 112), 32).shape == (3, 3, 32, 32)
    v = visualise_held(torch.rand(3, 3, 150, 150), 64)
    assert v.shape == (3, 3, 64, 64) and float(v.min()) >= 0 and float(v.max()) <= 1


def test_attack_cli_bad_defense(tmp_path):
    res = CliRunner().invoke(app, ["attack", "--defense", "nope", "--profile", "ci", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown defense" in res.output
    res = CliRunner().invoke(app, ["attack", "--defense", "none", "-p", "transmit=res99", "--profile", "ci"])
    assert res.exit_code == 2 and "res99" in res.output


def test_grids_show_the_same_faces_for_any_number_of_pairs(data_root):
    """Every cell's grid shows the same 8 LFW faces (issue: "same 8 LFW faces everywhere"), also when a
    slow client or the white-box attack is judged on fewer pairs than the others."""
    from faceveil.bench.privacy import eval_pairs, grid_positions
    from faceveil.data.datasets import LFW

    lfw = LFW(data_root)
    shown = []
    for n in (20, 50, 120, 300, None):
        ia, _ = eval_pairs(lfw, n)
        shown.append(ia[grid_positions(lfw, ia)].tolist())
    assert len(set(shown[0])) == 8 and all(s == shown[0] for s in shown)


def test_whitebox_reconstructions_are_cached():
    """A white-box cell's inversion is cached like a trained attacker: the re-run loads the same
    reconstructions, ``force`` recomputes them (same seed, same result)."""
    from faceveil.attacks.base import profile_budget

    torch.set_num_threads(1)
    d = get_defense("none", transmit="res1")
    budget = profile_budget("ci", whitebox_steps=5)
    kw = dict(threat=ThreatModel(knowledge="white-box"), budget=budget, eval_pairs_n=4, return_images=True)
    first = run_attack(d, "whitebox", ctx=FORCE, **kw)
    again = run_attack(d, "whitebox", ctx=CI, **kw)
    assert torch.equal(first["images"]["reconstruction"], again["images"]["reconstruction"])
    assert again["attack_ms_per_face"] == first["attack_ms_per_face"]  # the recorded cost of the inversion
    redo = run_attack(d, "whitebox", ctx=FORCE, **kw)
    assert torch.allclose(redo["images"]["reconstruction"], first["images"]["reconstruction"], atol=1e-5)
    assert redo["attack_ms_per_face"] != first["attack_ms_per_face"]


def test_whitebox_inversion_resumes_batch_by_batch(monkeypatch):
    """A stopped white-box cell keeps the batches it finished: the next run inverts only the rest and
    gets what one uninterrupted run gets; the per-batch files go once the whole set is saved."""
    from faceveil.attacks.base import profile_budget
    from faceveil.attacks.whitebox import WhiteBox
    from faceveil.config import cache_dir

    torch.set_num_threads(1)
    d = get_defense("none", transmit="res1")
    budget = profile_budget("ci", whitebox_steps=3)
    kw = dict(threat=ThreatModel(knowledge="white-box"), budget=budget, eval_pairs_n=70, return_images=True)
    whole = run_attack(d, "whitebox", ctx=FORCE, **kw)["images"]["reconstruction"]
    saved = max(cache_dir("whitebox").glob("none-*.pt"), key=lambda p: p.stat().st_mtime)
    saved.unlink()  # as before the first run
    real, calls = WhiteBox.attack, []

    def stopped_after_one_batch(self, protected, batch_size=64):
        calls.append(len(protected))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(self, protected, batch_size)

    monkeypatch.setattr(WhiteBox, "attack", stopped_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        run_attack(d, "whitebox", ctx=FORCE, **kw)
    assert calls == [64, 6] and len(list(cache_dir("whitebox").glob("none-*-part0.pt"))) >= 1
    calls.clear()
    resumed = run_attack(d, "whitebox", ctx=CI, **kw)["images"]["reconstruction"]
    assert calls == [6] and saved.is_file()
    assert torch.allclose(resumed, whole, atol=1e-5)
    assert not list(cache_dir("whitebox").glob("none-*-part*.pt"))


def test_slow_clients_attacker_set_is_cached_batch_by_batch_and_shared(monkeypatch):
    """A slow client's attacker training set is protected once, cached batch by batch (resumable), and
    reused by the next attacker of the same setting; the held LFW targets likewise. Pixelation declared
    slow stands in for DeepBlur/AdvNoise (the caching policy reads ``protect_ms_hint`` only)."""
    from faceveil.attacks.base import profile_budget
    from faceveil.config import cache_dir
    from faceveil.defenses.pixelate import Pixelate

    torch.set_num_threads(1)
    monkeypatch.setattr(Pixelate, "protect_ms_hint", 1000.0)
    d = get_defense("pixelate", k=7)
    for f in cache_dir("protected").glob("pixelate-attacker-*"):
        f.unlink()
    real, faces = Pixelate.protect, []

    def counted(self, x, rng=None):
        faces.append(len(x))
        return real(self, x, rng)

    monkeypatch.setattr(Pixelate, "protect", counted)
    budget = profile_budget("ci", max_steps=3, train_images=100)
    kw = dict(budget=budget, eval_pairs_n=4)
    dn = run_attack(d, "dn", None, FORCE, **kw)
    assert sum(faces) >= 100 and len(list(cache_dir("protected").glob("pixelate-attacker-*-part*.pt"))) == 2
    faces.clear()
    cg = run_attack(d, "cgan", None, FORCE, **kw)
    assert faces == []  # neither the training set nor the 4 held targets protected again
    assert dn["metrics"]["reconstruction"]["SSIM"] != cg["metrics"]["reconstruction"]["SSIM"]


def test_fast_clients_targets_are_attacked_batch_by_batch(res1_result, lfw):
    """A fast client's held targets are made and attacked one batch at a time (the whole set can exceed
    RAM): exactly the reconstructions and grid rows of attacking the whole held set, with the same seeded
    draws (random perturbation is stochastic, so other draws would give other data)."""
    import numpy as np

    from faceveil.attacks.base import profile_budget
    from faceveil.bench.privacy import train_attacker
    from faceveil.bench.privacy.leaks import attack_streamed, held_targets, leak_fn

    torch.set_num_threads(1)
    attack, _ = train_attacker(get_defense("none", transmit="res1"), "urec", ThreatModel(),
                               profile_budget("ci"), CI)
    d = get_defense("randperturb", at="res1", iterations=2)
    assert d.stochastic and not d.slow
    idx = lfw.pair_images()[:70]  # two batches, the second one partial
    chips, _ = lfw.dataset().subset(idx).chips(d.recognizer.crop, progress=False)
    leak, keep = leak_fn(d, ThreatModel()), np.array([69, 0, 65, 3])
    whole = held_targets(d, ThreatModel(), leak, chips, idx, 5, None, False)
    recon, rows, ms = attack_streamed(attack, leak, chips, 5, keep, False)
    assert torch.equal(recon, attack.attack(whole)) and torch.equal(rows, whole[keep]) and ms > 0
    assert not torch.equal(whole, held_targets(d, ThreatModel(), leak, chips, idx, 6, None, False))


def test_chip_images_made_in_chunks_equal_the_whole_batch(lfw_sample):
    """The attackers' targets, resized a chunk at a time to bound memory, are bit-identical to resizing
    the whole set at once (down- and up-sampling, a chunk that does not divide the set)."""
    chips = lfw_sample[1]
    for size in (64, 112, 200):
        assert torch.equal(chip_images(chips, size, chunk=3), resize(to_tensor(chips), size))


def test_large_deterministic_attacker_set_is_made_batch_by_batch(lfw_sample):
    """A fast deterministic client whose attacker set would exceed the memory bound (64 deletion-only
    FaceObfuscator channels of 13,566 faces: 43 GB) is run on each training batch as it is drawn: the
    same batches, value for value, as the precomputed set, and no set is held."""
    from faceveil.bench.privacy import attacker_source
    from faceveil.bench.privacy.leaks import leak_fn

    torch.set_num_threads(1)
    chips = lfw_sample[1][:10]
    d = get_defense("faceobfuscator", channels="AC01,AC10,DC", obfuscate=False)
    assert not d.stochastic
    leak, targets = leak_fn(d, ThreatModel()), chip_images(chips, 32)
    held = attacker_source(d, ThreatModel(), leak, chips, targets, 3)
    streamed = attacker_source(d, ThreatModel(), leak, chips, targets, 3, max_bytes=1000)
    assert held.protected is not None and streamed.protected is None
    assert held.protected.shape[1:] == (3, 112, 112)
    for (p, t), (q, u) in zip(held.batches(1, 4), streamed.batches(1, 4), strict=True):
        assert torch.equal(p, q) and torch.equal(t, u)


@pytest.mark.parametrize(("args", "msg"), [
    (["--max-seconds", "0"], "--max-seconds must be a positive number"),
    (["--max-seconds", "-5"], "--max-seconds must be a positive number"),
    (["--eval-pairs", "0"], "--eval-pairs must be a positive integer"),
    (["--profile", "fastest"], "--profile must be one of"),
    (["--leakage", "disk"], "--leakage must be one of channel, database"),
    (["--attack", "magic"], "--attack must be one of"),
    (["--view", "abs"], "--view 'abs': none has no such attacker view"),
    (["--identity-weight", "-1"], "--identity-weight must be >= 0"),
])
def test_attack_cli_validates_options_before_any_work(tmp_path, args, msg):
    res = CliRunner().invoke(app, ["attack", "--defense", "none", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2 and msg in res.output, res.output
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_cli_numeric_options_validated():
    for cmd in (["eval", "lfw", "--per-fold", "0"], ["eval", "utility", "--per-fold", "-2"], ["bench", "--jobs", "0"],
                ["bench", "--profile", "huge"], ["eval", "utility", "--server", "gpu"]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == 2 and "must be" in res.output, (cmd, res.output)


def test_attacker_stopped_by_the_time_guard_is_not_a_privacy_result(tmp_path):
    """`--max-seconds` so small the guard fires before training: the command fails with a clear message
    and writes no result; a cached undertrained attacker is refused the same way."""
    from faceveil.attacks.base import MIN_TRAIN_STEPS, AttackerUndertrainedError, TrainLog, check_trained, profile_budget

    cmd = ["attack", "--defense", "none", "-p", "transmit=res1", "--attack", "urec", "--profile", "ci",
           "--max-seconds", "0.001", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 2 and "not a privacy result" in res.output, res.output
    assert not list(tmp_path.glob("*.json"))
    res = CliRunner().invoke(app, cmd)  # the cached attacker is not judged either
    assert res.exit_code == 2 and "not a privacy result" in res.output
    b = profile_budget("quick")
    check_trained("dn", TrainLog(steps=3, stopped_by="steps", planned_steps=3), b)  # its whole budget: fine
    check_trained("dn", TrainLog(steps=200, stopped_by="time", planned_steps=600), b)
    with pytest.raises(AttackerUndertrainedError):
        check_trained("dn", TrainLog(steps=100, stopped_by="time", planned_steps=600), b)  # < a quarter
    with pytest.raises(AttackerUndertrainedError):
        check_trained("dn", TrainLog(steps=MIN_TRAIN_STEPS - 1, stopped_by="time"), profile_budget("ci"))

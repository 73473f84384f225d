"""Server adaptation by distillation on real faces: the student starts as the teacher, and a short
training on protected inputs brings its embeddings of protected faces closer to the teacher's
embeddings of the clean faces than the frozen recogniser's are."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faceveil.bench.build import server_model
from faceveil.data.align import to_tensor
from faceveil.defenses import get_defense
from faceveil.models.students import FinetuneStudent
from faceveil.train.distill import adapted_server


def test_finetune_student_starts_as_the_teacher(lfw_sample, dlib_model):
    _, chips = lfw_sample
    x = to_tensor(chips[:8])
    with torch.no_grad():
        assert torch.allclose(FinetuneStudent(3)(x), dlib_model(x), atol=1e-5)


def test_student_adapts_to_pixelation_and_is_cached(lfw_sample, dlib_model, data_root):
    torch.set_num_threads(1)
    d = get_defense("pixelate", k=12)
    with torch.no_grad():  # a call from a no_grad path must still train
        student = server_model(d, "adapted", profile="ci", data=data_root)
    log = student.train_log
    assert log["steps"] >= 5 and log["final_loss"] < log["first_loss"]
    assert adapted_server(d, profile="ci", data=data_root).train_log == log  # from the cache, not retrained

    _, chips = lfw_sample  # LFW pair images: identity-disjoint from the public training faces
    x = to_tensor(chips)
    p = d.protect(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = dlib_model(x)
        frozen = F.cosine_similarity(dlib_model(p), target).mean()
        adapted = F.cosine_similarity(student(p), target).mean()
    assert adapted > frozen + 0.01, (float(frozen), float(adapted))


def test_slow_clients_one_draw_sets_are_cached_by_batch_and_change_nothing(data_root, monkeypatch):
    """Protection by optimisation is drawn once per image; for a slow client those sets are cached batch
    by batch while the student trains (a stopped run resumes), the student is the one trained without
    the cache, and the sets are removed once the student is saved. Pixelation declared slow stands in
    for DeepBlur (the policy reads ``protect_ms_hint`` only)."""
    from faceveil.config import cache_dir
    from faceveil.defenses.pixelate import Pixelate
    from faceveil.train.distill import distill_config, train_student

    torch.set_num_threads(1)
    d = get_defense("pixelate", k=9)
    cfg = distill_config("ci", train_images=64, fresh_draws=False, max_seconds=None)
    plain, _ = train_student(d, cfg, data_root, progress=False)
    monkeypatch.setattr(Pixelate, "protect_ms_hint", 1000.0)
    slow, _ = train_student(d, cfg, data_root, progress=False)
    parts = sorted(cache_dir("protected").glob("pixelate-student-*-part*.pt"))
    assert len(parts) == 4  # 2 batches x (image, flip)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), slow.state_dict().values(), strict=True))
    adapted_server(d, profile="ci", data=data_root, train_images=64, fresh_draws=False, max_seconds=None, force=True)
    assert not any(p.exists() for p in parts)


def test_student_training_resumes_from_its_checkpoint_exactly(data_root, monkeypatch, tmp_path):
    """A student with fresh noise draws every epoch, killed at the start of its third epoch and resumed
    from the checkpoint of the second, ends with the weights and losses of the uninterrupted run."""
    from faceveil.train import distill

    torch.set_num_threads(1)
    d = get_defense("noise", sigma=0.05)
    cfg = distill.distill_config("ci", train_images=96, epochs=3, max_seconds=None)
    ref, ref_log = distill.train_student(d, cfg, data_root, progress=False)
    real = distill._lr_factor

    def killed_at_step_6(step, *a):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return real(step, *a)

    ckpt = tmp_path / "student.ckpt"
    monkeypatch.setattr(distill, "_lr_factor", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        distill.train_student(d, cfg, data_root, progress=False, checkpoint=ckpt, checkpoint_seconds=0)
    monkeypatch.setattr(distill, "_lr_factor", real)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed, log = distill.train_student(d, cfg, data_root, progress=False, checkpoint=ckpt)
    assert log["steps"] == ref_log["steps"] == 9 and log["final_loss"] == ref_log["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_plain_split_maps_get_the_server_part_student(lfw_sample, dlib_model):
    """AdvFace's Table 2 reference ("Ψ retrained on plain z"): the named server-part student is made for the plain
    res1 maps too, and starts as the deployed Ψ (same embeddings as the unsplit recogniser)."""
    from faceveil.defenses import get_defense
    from faceveil.train.advface_student import STUDENT_NAME, ServerPartStudent
    from faceveil.train.distill import DistillConfig, make_student

    plain = get_defense("none", transmit="res1", recognizer=dlib_model)
    x = to_tensor(lfw_sample[1][:4])
    z = plain.protect(x)
    student = make_student(z[0], DistillConfig(student=STUDENT_NAME), defense=plain)
    assert isinstance(student, ServerPartStudent)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(z), dlib_model(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="server-part student needs split maps"):
        make_student(torch.zeros(128), DistillConfig(student=STUDENT_NAME), defense=get_defense("none"))

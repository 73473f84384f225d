"""``--device``: resolution, the CLI option, and every network following ``.to(device)``.

The CI machine has no GPU, so "runs unchanged on a GPU" is checked on PyTorch's ``meta`` device: a module moved
with ``.to("meta")`` whose forward creates a tensor on the CPU (a constant made on the hot path instead of a
registered buffer) fails with a device mismatch there exactly as it would on CUDA.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from faceveil.attacks import attack_names
from faceveil.attacks.base import ReconstructionAttack, attack_class
from faceveil.cli import app
from faceveil.devices import DEVICE_ENV, FaceveilDeviceError, current_device, device_record, resolve_device, use_device
from faceveil.models import get_recognizer, recognizer_names
from faceveil.train.distill import DistillConfig, make_student

META = torch.device("meta")


def _expected_auto() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def test_resolve_device_names_and_refuses():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == _expected_auto()
    for bad in ("tpu", "cuda:x", "cpu:1", "gpu"):
        with pytest.raises(FaceveilDeviceError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(FaceveilDeviceError, match="no CUDA device"):
            resolve_device("cuda")


def test_current_device_defaults_to_cpu_and_follows_use_device(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert current_device() == torch.device("cpu")
    use_device("auto")
    assert current_device().type == _expected_auto()
    rec = device_record()
    assert rec["device"] == str(current_device()) and rec["device_name"]


@pytest.mark.parametrize("spec", ["cpu", "auto"])
def test_cli_device_option_runs_and_is_recorded(spec, data_root, tmp_path, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    out = tmp_path / "lfw.json"
    res = CliRunner().invoke(app, ["--device", spec, "eval", "lfw", "--per-fold", "5", "--data-dir", str(data_root),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["run_on"]["device"] == str(resolve_device(spec))
    acc = max(r["acc_mean"] for r in report["results"])
    assert acc >= 0.9  # dlib on 100 real LFW pairs, wherever it ran


def test_cli_refuses_an_unavailable_device(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    res = CliRunner().invoke(app, ["--device", "tpu", "models", "list"])
    assert res.exit_code == 2 and "unknown device 'tpu'" in res.output
    if not torch.cuda.is_available():
        res = CliRunner().invoke(app, ["--device", "cuda", "models", "list"])
        assert res.exit_code == 2 and "no CUDA device" in res.output


def _meta_forward(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    m = m.to(META).eval()
    with torch.no_grad():
        y = m(x.to(META))
    assert y.device == META
    return y


@pytest.mark.parametrize("name", [n for n in recognizer_names() if n in ("dlib", "faceres", "faceres-bgr", "mobilefacenet")])
def test_recognizers_follow_to_device(name):
    try:
        m = get_recognizer(name)
    except Exception as e:  # an npm model not installed on this machine
        pytest.skip(f"{name} not installed: {e}")
    y = _meta_forward(m, torch.empty(2, 3, m.input_size, m.input_size))
    assert tuple(y.shape) == (2, m.embedding_dim)
    client, server = m.split(m.layer_names()[1])
    z = _meta_forward(client, torch.empty(2, 3, m.input_size, m.input_size))
    assert _meta_forward(server, torch.empty(tuple(z.shape))).shape == (2, m.embedding_dim)


#: what attackers are trained on: an embedding, a feature map, an image
SHAPES = ((128,), (32, 35, 35), (3, 64, 64))


@pytest.mark.parametrize("name", [n for n in attack_names() if issubclass(attack_class(n), ReconstructionAttack)])
def test_attack_networks_follow_to_device(name):
    built = 0
    for shape in SHAPES:
        a = attack_class(name)(target_size=32)
        try:
            net = a.build(shape)
        except (ValueError, NotImplementedError):  # an attacker written for other inputs
            continue
        y = _meta_forward(net, torch.empty(2, *shape))
        # decoders give images; the GAN-prior attacks' mappers give the generator's latent
        assert tuple(y.shape) == ((2, a.gen.nz) if hasattr(a, "gen") else (2, 3, 32, 32))
        built += 1
    assert built, f"{name} built no network for any of {SHAPES}"


@pytest.mark.parametrize("student", ["finetune", "ir18"])
def test_students_follow_to_device(student):
    cfg = DistillConfig(student=student)
    for sample in (torch.rand(3, 150, 150), torch.rand(32, 35, 35), torch.rand(128)):
        if student == "ir18" and sample.ndim == 1:
            continue
        y = _meta_forward(make_student(sample, cfg, 128), torch.empty(2, *sample.shape))
        assert tuple(y.shape) == (2, 128)


# --- --precision ------------------------------------------------------------------------------------------------

def test_precision_names_refusals_and_cache_keys(monkeypatch):
    from faceveil.config import config_hash
    from faceveil.devices import PRECISION_ENV, current_precision, resolve_precision, use_precision

    monkeypatch.setenv(PRECISION_ENV, "fp32")  # restored (removed) after the test: use_precision sets it directly
    monkeypatch.delenv(PRECISION_ENV)
    assert current_precision() == "fp32" and device_record()["precision"] == "fp32"
    fp32_key = config_hash({"a": 1})
    with pytest.raises(FaceveilDeviceError, match="unknown precision"):
        resolve_precision("fp8")
    assert use_precision("BF16") == "bf16" and current_precision() == "bf16" and device_record()["precision"] == "bf16"
    assert config_hash({"a": 1}) != fp32_key  # a bf16 artefact never stands in for an fp32 one
    from faceveil.defenses import get_defense
    from faceveil.system.core import defense_digest

    d = get_defense("noise")
    bf16_ids = defense_digest(d), config_hash({"a": 1}, precision=False)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert config_hash({"a": 1}) == fp32_key  # and fp32 keys are those of runs before --precision existed
    # identities no arithmetic changes (a payload's defense, model weights, aligned chips) are the same in both
    assert bf16_ids == (defense_digest(d), config_hash({"a": 1}))


def test_bf16_embeddings_of_real_faces_are_within_tolerance(lfw_sample, dlib_model, monkeypatch):
    """The deployed recogniser under bf16 autocast: float32 embeddings within cosine 0.9999 of fp32's on real
    LFW faces, every pairwise distance within 0.02 of fp32's (dlib's threshold is 0.6) — and not bit-equal, so
    bf16 really ran."""
    from faceveil.data.align import to_tensor
    from faceveil.devices import PRECISION_ENV

    x = to_tensor(lfw_sample[1])
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    e32 = dlib_model.embed(x)
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    e16 = dlib_model.embed(x)
    assert e16.dtype == torch.float32 and (e16 - e32).abs().max() > 1e-5
    assert torch.nn.functional.cosine_similarity(e16, e32).min() > 0.9999
    assert (torch.cdist(e16, e16) - torch.cdist(e32, e32)).abs().max() < 0.02


def test_bf16_attacker_training_follows_fp32(lfw_sample, dlib_model, monkeypatch):
    """``dn`` trained 24 steps on real faces' embeddings, the same seed in fp32 and in bf16: the losses follow
    the same curve (within 5 %) and both decoders learn (the loss falls)."""
    from faceveil.attacks import Budget, PairSource, get_attack
    from faceveil.data.align import to_tensor
    from faceveil.data.chips import resize
    from faceveil.devices import PRECISION_ENV

    x = to_tensor(lfw_sample[1])
    emb = dlib_model.embed(x)
    x, emb = torch.cat([x, x.flip(-1)]), torch.cat([emb, dlib_model.embed(x.flip(-1))])
    target = resize(x, 32)
    losses = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setenv(PRECISION_ENV, precision)
        a = get_attack("dn", target_size=32, seed=0).fit(PairSource(target, protected=emb, seed=1),
                                                          Budget(epochs=100, max_steps=24, batch_size=16, target_size=32),
                                                          progress=False)
        losses[precision] = torch.tensor(a.log.losses)
        assert a.attack(emb[:4]).dtype == torch.float32
    l32, l16 = losses["fp32"], losses["bf16"]
    assert l32[-6:].mean() < 0.8 * l32[:3].mean() and l16[-6:].mean() < 0.8 * l16[:3].mean()
    assert abs(l16[-6:].mean() - l32[-6:].mean()) < 0.05 * l32[-6:].mean()


def test_cli_precision_option_is_recorded(data_root, tmp_path, monkeypatch):
    from faceveil.devices import PRECISION_ENV

    accs = {}
    monkeypatch.setenv(PRECISION_ENV, "fp32")  # restored after the test: the CLI's --precision sets it directly
    for precision in ("fp32", "bf16"):
        monkeypatch.delenv(PRECISION_ENV)
        out = tmp_path / f"lfw-{precision}.json"
        res = CliRunner().invoke(app, ["--precision", precision, "eval", "lfw", "--per-fold", "5", "--data-dir",
                                       str(data_root), "--out", str(out)])
        assert res.exit_code == 0, res.output
        report = json.loads(out.read_text())
        assert report["run_on"]["precision"] == precision
        accs[precision] = max(r["acc_mean"] for r in report["results"])
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.02 and accs["bf16"] >= 0.9
    res = CliRunner().invoke(app, ["--precision", "fp16", "models", "list"])
    assert res.exit_code == 2 and "unknown precision 'fp16'" in res.output

"""The dlib ResNet in PyTorch must be exactly dlib's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.data.align import to_tensor
from faceveil.errors import FaceveilDataError
from faceveil.models.dlib_resnet import Affine, dlib_model_path, load_dlib_file, parse_dlib_net


@pytest.fixture(scope="module")
def dlib_ref():
    import dlib
    import face_recognition_models as frm

    return dlib.face_recognition_model_v1(frm.face_recognition_model_location())


def test_parsed_file_facts():
    net = load_dlib_file(dlib_model_path())
    assert net.loss == "loss_metric_2"
    assert net.input_size == (150, 150)
    np.testing.assert_allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    fc = net.layers[-1]
    assert fc.kind == "fc" and fc.params["weight"].shape == (256, 128) and fc.params["bias"] is None


def test_architecture_counts(dlib_model):
    assert sum(p.numel() for p in dlib_model.parameters()) == 5_614_592
    assert sum(isinstance(m, torch.nn.Conv2d) for m in dlib_model.modules()) == 29
    assert sum(isinstance(m, Affine) for m in dlib_model.modules()) == 29


def test_matches_dlib_descriptor(dlib_model, dlib_ref, lfw_sample):
    _, chips = lfw_sample
    assert len(chips) >= 20
    ref = np.stack([np.array(dlib_ref.compute_face_descriptor(c)) for c in chips])
    with torch.no_grad():
        ours = dlib_model(to_tensor(chips)).double().numpy()
    assert np.abs(ours - ref).max() <= 1e-5


def test_batched_equals_single(dlib_model, lfw_sample):
    x = to_tensor(lfw_sample[1][:4])
    with torch.no_grad():
        batch = dlib_model(x)
        single = torch.cat([dlib_model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)


def test_gradients_reach_input(dlib_model, lfw_sample):
    x = to_tensor(lfw_sample[1][:2]).requires_grad_(True)
    dlib_model(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("at", ["pool1", "res1", "res4", "res10", 3])
def test_split_is_exact(dlib_model, lfw_sample, at):
    x = to_tensor(lfw_sample[1][:3])
    client, server = dlib_model.split(at)
    with torch.no_grad():
        torch.testing.assert_close(server(client(x)), dlib_model(x), atol=0, rtol=0)


def test_split_rejects_bad_points(dlib_model):
    with pytest.raises(ValueError):
        dlib_model.split("nope")
    with pytest.raises(ValueError):
        dlib_model.split("fc")  # nothing left for the server


def test_features_expose_intermediate_layers(dlib_model, lfw_sample):
    x = to_tensor(lfw_sample[1][:2])
    with torch.no_grad():
        f = dlib_model.features(x, ["res1", "res4", "fc"])
    assert f["res1"].shape == (2, 32, 35, 35)
    assert f["res4"].shape == (2, 64, 17, 17)
    torch.testing.assert_close(f["fc"], dlib_model(x))


def test_parser_rejects_garbage_and_truncation():
    with pytest.raises(FaceveilDataError):
        parse_dlib_net(b"\x01\x02garbage")
    data = dlib_model_path().read_bytes()
    with pytest.raises(FaceveilDataError, match="end of file"):
        parse_dlib_net(data[: len(data) // 2])

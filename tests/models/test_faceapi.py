"""face-api age/gender and expression nets in PyTorch vs the package's own TF.js code (4.22.0, CPU)
on six aligned LFW chips (tests/fixtures/tfjs, made by tools/tfjs_reference/make_fixture.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import faceveil.models.faceapi as fa
from faceveil.models.tfjs_graph import load_manifest_weights
from tests.models.conftest import load_tfjs_chips

TOL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chips() -> torch.Tensor:
    return load_tfjs_chips("faceapi_112", fa.FaceApiAgeGender.crop)


@pytest.fixture(scope="module")
def age_gender() -> fa.FaceApiAgeGender:
    return fa.faceapi_age_gender()


@pytest.fixture(scope="module")
def expression() -> fa.FaceApiExpression:
    return fa.faceapi_expression()


def test_age_gender_matches_tfjs(age_gender: fa.FaceApiAgeGender, chips: torch.Tensor, reference: dict) -> None:
    with torch.no_grad():
        out = age_gender(chips)
    assert np.abs(out["age"].numpy() - reference["faceapi_age"]).max() <= TOL  # measured 1.1e-5 (years)
    assert np.abs(out["gender"].numpy() - reference["faceapi_gender"]).max() <= TOL  # measured 2e-8
    assert out["gender"].shape == (6, 2) and age_gender.labels["gender"] == ("male", "female")


def test_expression_matches_tfjs(expression: fa.FaceApiExpression, chips: torch.Tensor, reference: dict) -> None:
    with torch.no_grad():
        out = expression(chips)["expression"]
    assert np.abs(out.numpy() - reference["faceapi_expression"]).max() <= TOL  # measured 1.2e-7
    assert expression.labels["expression"][:2] == ("neutral", "happy")


def test_symmetric_padding_visibly_changes_outputs(age_gender: fa.FaceApiAgeGender, chips: torch.Tensor,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is sensitive to TF's asymmetric SAME padding: PyTorch-style symmetric padding is off."""

    def symmetric(x, w, bias, stride, padding, dilation=(1, 1), groups=1):
        return torch.nn.functional.conv2d(x, w, bias, stride, w.shape[-1] // 2 if padding == "SAME" else 0,
                                          dilation, groups)

    with torch.no_grad():
        ref = age_gender(chips)["age"]
        monkeypatch.setattr(fa, "conv2d_tf", symmetric)
        off = age_gender(chips)["age"]
    assert (off - ref).abs().max() > 100 * TOL


def test_uint8_weights_are_dequantised_like_tfjs() -> None:
    """First manifest entry of age_gender_model.bin: value = q*scale + min, then [kh,kw,in,out]
    -> torch [out,in,kh,kw]."""
    from faceveil.models.store import model_files

    files = model_files("faceapi-age-gender")
    manifest = json.loads(files["model/age_gender_model-weights_manifest.json"].read_text())
    spec = manifest[0]["weights"][0]
    assert spec["name"] == "entry_flow/conv_in/filters" and spec["quantization"]["dtype"] == "uint8"
    q = np.frombuffer(files["model/age_gender_model.bin"].read_bytes()[: 3 * 3 * 3 * 32], dtype=np.uint8)
    expect = (q * spec["quantization"]["scale"] + spec["quantization"]["min"]).astype(np.float32).reshape(3, 3, 3, 32)
    w = load_manifest_weights(files["model/age_gender_model-weights_manifest.json"])
    np.testing.assert_array_equal(w["entry_flow/conv_in/filters"], expect)
    m = fa.faceapi_age_gender()
    np.testing.assert_array_equal(m.features.conv_in.weight.numpy(), expect.transpose(3, 2, 0, 1))


def test_batching_predict_and_gradients(age_gender: fa.FaceApiAgeGender, chips: torch.Tensor) -> None:
    with torch.no_grad():
        full = age_gender(chips)["age"]
        one = torch.cat([age_gender(chips[i : i + 1])["age"] for i in range(len(chips))])
    assert torch.allclose(full, one, atol=1e-4)
    big = torch.nn.functional.interpolate(chips[:2], size=150, mode="bilinear", align_corners=False)
    both = fa.FaceApiAttributes(age_gender, fa.faceapi_expression())
    out = both.predict(big, batch_size=1)  # resized to 112 by prepare()
    assert set(out) == {"age", "gender", "expression"}
    assert out["age"].shape == (2,) and out["expression"].shape == (2, 7)
    assert torch.allclose(out["expression"].sum(1), torch.ones(2))
    x = chips[:2].clone().requires_grad_(True)
    age_gender(x)["gender"][:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in age_gender.parameters())


def test_attribute_model_lookup() -> None:
    m = fa.get_attribute_model("faceapi-expression")
    assert isinstance(m, fa.AttributeModel) and m.crop.size == 112
    with pytest.raises(Exception, match="unknown attribute model"):
        fa.get_attribute_model("nope")

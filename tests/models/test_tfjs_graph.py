"""The TF.js weights decoder and graph interpreter: op semantics against a numpy re-implementation
of TensorFlow's rules, real Human graphs against TF.js 4.22.0 references, graph cutting."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceveil.errors import FaceveilDataError
from faceveil.models.tfjs_graph import (
    TFJSGraph,
    conv2d_tf,
    crop_and_resize_tf,
    decode_weights,
    dequantize,
    pool2d_tf,
    resize_bilinear_tf,
    same_pads,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tfjs"
torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Weights manifest
# ---------------------------------------------------------------------------------------------


def test_uint8_dequantisation() -> None:
    q = np.array([0, 1, 128, 255], dtype=np.uint8)
    got = dequantize(q, {"dtype": "uint8", "scale": 0.5, "min": -1.0})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [-1.0, -0.5, 63.0, 126.5])
    # value = q*scale + min computed in double then rounded to float32, as tfjs-core does
    scale, mn = 0.005431825039433498, -0.7441600304023892
    np.testing.assert_array_equal(dequantize(q, {"dtype": "uint8", "scale": scale, "min": mn}),
                                  np.float32(q.astype(np.float64) * scale + mn))
    # int32 targets round half up (JS Math.round)
    got = dequantize(np.array([0, 1, 2], dtype=np.uint8), {"dtype": "uint8", "scale": 1.0, "min": -2.5}, "int32")
    np.testing.assert_array_equal(got, [-2, -1, 0])
    h = np.array([1.5, -2.25, 65504], dtype=np.float16)
    np.testing.assert_array_equal(dequantize(h.view(np.uint16).view(np.float16), {"dtype": "float16"}),
                                  h.astype(np.float32))
    with pytest.raises(FaceveilDataError, match="scale/min"):
        dequantize(q, {"dtype": "uint8"})


def test_decode_weights_across_shards() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    qb = np.array([0, 10, 20], dtype=np.uint8)
    c = np.array([7, -8], dtype=np.int32)
    h = np.array([0.5, 1.0], dtype=np.float16)
    blob = a.tobytes() + qb.tobytes() + c.tobytes() + h.tobytes()
    shards = {"s1.bin": blob[:10], "s2.bin": blob[10:]}
    manifest = [{"paths": ["s1.bin", "s2.bin"], "weights": [
        {"name": "a", "shape": [2, 3], "dtype": "float32"},
        {"name": "b", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.1, "min": 1.0}},
        {"name": "c", "shape": [2], "dtype": "int32"},
        {"name": "h", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
    ]}]
    w = decode_weights(manifest, shards.__getitem__)
    np.testing.assert_array_equal(w["a"], a)
    np.testing.assert_allclose(w["b"], [1.0, 2.0, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(w["c"], c)
    np.testing.assert_array_equal(w["h"], [0.5, 1.0])
    with pytest.raises(FaceveilDataError, match="hold only"):
        decode_weights(manifest, lambda p: shards[p][:4])


# ---------------------------------------------------------------------------------------------
# TF padding and op semantics vs a numpy implementation of TensorFlow's definitions
# ---------------------------------------------------------------------------------------------


def test_same_padding_is_asymmetric_at_stride_2() -> None:
    assert same_pads(112, 3, 2) == (0, 1)  # the extra pixel goes bottom/right
    assert same_pads(7, 3, 1) == (1, 1)
    assert same_pads(56, 1, 2) == (0, 0)
    assert same_pads(5, 4, 1) == (1, 2)
    assert same_pads(9, 3, 2) == (1, 1)


def _np_pad(x: np.ndarray, k: int, s: int, value: float = 0.0) -> np.ndarray:
    (t, b), (lft, r) = same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s)
    return np.pad(x, ((0, 0), (t, b), (lft, r), (0, 0)), constant_values=value)


def _np_windows(xp: np.ndarray, k: int, s: int) -> np.ndarray:
    """[B, Ho, Wo, k, k, C] sliding windows of a padded NHWC array (VALID)."""
    ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    return np.stack([np.stack([xp[:, i * s : i * s + k, j * s : j * s + k] for j in range(wo)], 1)
                     for i in range(ho)], 1)


def np_conv_same(x: np.ndarray, w: np.ndarray, s: int) -> np.ndarray:
    return np.einsum("bhwijc,ijco->bhwo", _np_windows(_np_pad(x, w.shape[0], s), w.shape[0], s), w)


def np_depthwise_same(x: np.ndarray, w: np.ndarray, s: int) -> np.ndarray:
    y = np.einsum("bhwijc,ijcm->bhwcm", _np_windows(_np_pad(x, w.shape[0], s), w.shape[0], s), w)
    return y.reshape(*y.shape[:3], -1)  # channel c*mult + m


def np_maxpool_same(x: np.ndarray, k: int, s: int) -> np.ndarray:
    return _np_windows(_np_pad(x, k, s, -np.inf), k, s).max(axis=(3, 4))


def np_avgpool_same(x: np.ndarray, k: int, s: int) -> np.ndarray:
    total = _np_windows(_np_pad(x, k, s), k, s).sum(axis=(3, 4))
    count = _np_windows(_np_pad(np.ones_like(x[..., :1]), k, s), k, s).sum(axis=(3, 4))
    return total / count


def _node(name: str, op: str, inputs: list[str] | None = None, **attr: object) -> dict:
    enc: dict = {}
    for k, v in attr.items():
        if isinstance(v, str):
            enc[k] = {"s": base64.b64encode(v.encode()).decode()}
        elif isinstance(v, bool):
            enc[k] = {"b": v}
        elif isinstance(v, list) and v and isinstance(v[0], str):
            enc[k] = {"list": {"s": [base64.b64encode(s.encode()).decode() for s in v]}}
        elif isinstance(v, list):
            enc[k] = {"list": {"i": [str(i) for i in v]}}
        else:
            enc[k] = {"i": str(v)}
    return {"name": name, "op": op, "input": inputs or [], "attr": enc}


@pytest.fixture(scope="module")
def synthetic() -> tuple[TFJSGraph, dict[str, np.ndarray]]:
    """conv(SAME, s2, BiasAdd+Relu6) -> depthwise(x2) -> max/avg pool(SAME, s2) -> PReLU written
    out (Relu/Abs/Sub/Mul/Add) -> Mean -> MatMul(+bias) -> Softmax, plus shape ops."""
    rng = np.random.RandomState(0)
    w = {
        "w1": rng.randn(3, 3, 3, 4).astype(np.float32), "b1": rng.randn(4).astype(np.float32),
        "dw": rng.randn(3, 3, 4, 2).astype(np.float32), "alpha": rng.rand(8).astype(np.float32),
        "wfc": rng.randn(8, 5).astype(np.float32), "bfc": rng.randn(5).astype(np.float32),
        "axes": np.array([1, 2], dtype=np.int32), "shape": np.array([-1, 32], dtype=np.int32),
        "pads": np.array([[0, 0], [1, 0], [0, 1], [0, 0]], dtype=np.int32),
        "b0": np.array([0, 0, 0, 0], dtype=np.int32), "e0": np.array([0, 4, 4, 2], dtype=np.int32),
        "s1": np.array([1, 1, 1, 1], dtype=np.int32), "cat_axis": np.array(1, dtype=np.int32),
    }
    nodes = [_node("x", "Placeholder")] + [_node(k, "Const") for k in w] + [
        _node("conv", "_FusedConv2D", ["x", "w1", "b1"], strides=[1, 2, 2, 1], padding="SAME",
              fused_ops=["BiasAdd", "Relu6"], num_args=1, data_format="NHWC"),
        _node("dwc", "DepthwiseConv2dNative", ["conv", "dw"], strides=[1, 1, 1, 1], padding="SAME"),
        _node("maxp", "MaxPool", ["dwc"], ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME"),
        _node("avgp", "AvgPool", ["dwc"], ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME"),
        _node("sum", "AddV2", ["maxp", "avgp"]),
        _node("relu", "Relu", ["sum"]), _node("abs", "Abs", ["sum"]), _node("sub", "Sub", ["sum", "abs"]),
        _node("mul", "Mul", ["sub", "alpha"]), _node("prelu", "Add", ["relu", "mul"]),
        _node("mean", "Mean", ["prelu", "axes"], keep_dims=False),
        _node("fc", "_FusedMatMul", ["mean", "wfc", "bfc"], fused_ops=["BiasAdd"], transpose_a=False,
              transpose_b=False),
        _node("probs", "Softmax", ["fc"]),
        # shape ops on a side branch
        _node("pad", "Pad", ["x", "pads"]),
        _node("slice", "StridedSlice", ["pad", "b0", "e0", "s1"], begin_mask=1, end_mask=1),
        _node("flat", "Reshape", ["slice", "shape"]),
        _node("cat", "ConcatV2", ["flat", "fc", "cat_axis"]),
    ]
    model = {"format": "graph-model", "modelTopology": {"node": nodes}}
    return TFJSGraph(model, w, outputs=["probs", "cat"]), w


def test_interpreter_matches_tensorflow_rules(synthetic: tuple[TFJSGraph, dict]) -> None:
    g, w = synthetic
    x = np.random.RandomState(1).rand(2, 8, 7, 3)  # odd width: asymmetric padding on one axis
    probs, cat = copy.deepcopy(g).double()(torch.from_numpy(x))
    conv = np.clip(np_conv_same(x, w["w1"], 2) + w["b1"], 0, 6)
    dwc = np_depthwise_same(conv, w["dw"], 1)
    s = np_maxpool_same(dwc, 3, 2) + np_avgpool_same(dwc, 3, 2)
    prelu = np.maximum(s, 0) + (s - np.abs(s)) * w["alpha"]
    fc = prelu.mean(axis=(1, 2)) @ w["wfc"] + w["bfc"]
    e = np.exp(fc - fc.max(1, keepdims=True))
    np.testing.assert_allclose(probs.numpy(), e / e.sum(1, keepdims=True), rtol=1e-10, atol=1e-12)
    padded = np.pad(x, ((0, 0), (1, 0), (0, 1), (0, 0)))[:, :4, :4, :2]
    np.testing.assert_allclose(cat.numpy(), np.concatenate([padded.reshape(2, 32), fc], 1), rtol=1e-10)


def test_symmetric_padding_would_differ() -> None:
    """The pitfall: PyTorch's symmetric padding at stride 2 is not TF's SAME."""
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    wt = torch.rand(4, 3, 3, 3, dtype=torch.float64)
    tf_like = conv2d_tf(x, wt, None, (2, 2), "SAME")
    ref = np_conv_same(x.permute(0, 2, 3, 1).numpy(), wt.permute(2, 3, 1, 0).numpy(), 2)
    np.testing.assert_allclose(tf_like.permute(0, 2, 3, 1).numpy(), ref, rtol=1e-12)
    assert (F.conv2d(x, wt, stride=2, padding=1) - tf_like).abs().max() > 0.1
    xm = -torch.rand(1, 1, 4, 4, dtype=torch.float64)  # all negative: zero padding would win the max
    assert (pool2d_tf(xm, "max", (3, 3), (2, 2), "SAME") < 0).all()


def test_resize_and_crop_identities() -> None:
    x = torch.rand(2, 3, 10, 12)
    assert torch.equal(resize_bilinear_tf(x, (10, 12)), x)
    assert torch.equal(crop_and_resize_tf(x, (0, 0, 1, 1), (10, 12)), x)
    # TF legacy resize samples src = dst * in/out (no half-pixel shift): row 1 of a 2x downsample is row 2
    assert torch.equal(resize_bilinear_tf(x, (5, 6))[:, :, 1, 1], x[:, :, 2, 2])
    # boxes reaching outside the image extrapolate with 0
    out = crop_and_resize_tf(x + 1, (-0.5, 0, 1, 1), (4, 12))
    assert (out[:, :, 0] == 0).all() and (out[:, :, -1] > 0).all()


def test_cut_points_and_parts_are_exact(synthetic: tuple[TFJSGraph, dict]) -> None:
    g, _ = synthetic
    cuts = g.cut_points(["probs"])
    assert cuts[:2] == ["conv", "dwc"] and "sum" in cuts and "mean" in cuts
    assert "maxp" not in cuts and "relu" not in cuts  # another branch's value crosses those cuts
    x = torch.rand(3, 8, 7, 3)
    full = g.run({"x": x}, ["probs"])[0]
    for at in cuts:
        h = g.part(None, at)(x)
        assert torch.equal(g.part(at, "probs")(h), full)


def test_unsupported_op_is_named() -> None:
    model = {"modelTopology": {"node": [_node("x", "Placeholder"), _node("nms", "NonMaxSuppressionV5", ["x"])]}}
    with pytest.raises(FaceveilDataError, match="unsupported op 'NonMaxSuppressionV5'"):
        TFJSGraph(model, {})


def test_gradients_flow_to_the_input(synthetic: tuple[TFJSGraph, dict]) -> None:
    g, _ = synthetic
    x = torch.rand(2, 8, 7, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g.run({"x": x}, ["fc"])[0][:, 0].sum().backward()  # logits: the softmax can saturate
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Real graphs (Human's gear and emotion) against TF.js 4.22.0
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def face224() -> torch.Tensor:
    import io

    from PIL import Image

    with np.load(FIXTURES / "chips.npz") as z:
        keys = sorted((k for k in z.files if k.startswith("human_224/")), key=lambda k: int(k.split("/")[1]))
        chips = np.stack([np.asarray(Image.open(io.BytesIO(z[k].tobytes()))) for k in keys])
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255


def test_emotion_graph_matches_tfjs(reference: dict, face224: torch.Tensor) -> None:
    from faceveil.models.human import Emotion

    m = Emotion()
    with torch.no_grad():
        inp = m.preprocess(face224)  # resize_bilinear_tf + grey + (g - .5) * 2
        out = m.graph(inp)
    assert np.abs(inp[:2].numpy() - reference["emotion_input"]).max() <= 1e-6
    assert np.abs(out.numpy() - reference["emotion"]).max() <= 1e-5


def test_gear_graph_matches_tfjs(reference: dict, face224: torch.Tensor) -> None:
    from faceveil.models.human import Gear

    with torch.no_grad():
        out = Gear()(face224)  # crop_and_resize_tf box (0, .1, .9, .9) -> 198
    for key, ref in (("age_bins", "gear_age"), ("gender", "gear_gender"), ("race", "gear_race")):
        assert np.abs(out[key].numpy() - reference[ref]).max() <= 1e-5, key

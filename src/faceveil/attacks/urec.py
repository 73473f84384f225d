"""``urec``: U-Net reconstructor (Ronneberger et al., MICCAI 2015), the decoder family AdvFace
uses to invert split-network features (AdvFace's reconstruction attacker: features -> U-Net ->
face, trained with the L1 loss of its eq. 1).

The protected data is first brought to an image-shaped tensor ``[B,w,S,S]``
(:class:`~faceveil.attacks.nets.ToImageShape`: a fully connected stem for vectors, 1x1 conv +
resize for maps and images). The U-Net then has ``depth`` levels (default 4, bottleneck at
S/16): each encoder level is a stride-2 3x3 conv followed by a 3x3 conv (conv-BN-ReLU, channels
doubling per level: w at full resolution, 16w at S/16), each decoder level a x2 de-convolution
to the skip's channels, concatenation with the skip and a 3x3 conv-BN-ReLU; a 3x3 conv and a
sigmoid give the image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from faceveil.attacks.base import ReconstructionAttack, register_attack
from faceveil.attacks.nets import (
    InputNorm,
    ToImage,
    ToImageShape,
    base_size,
    channels_last,
    check_in_shape,
    conv_bn_act,
)


class UNet(nn.Module):
    """Input norm, image-shaped stem, U-Net with skip connections, sigmoid image."""

    def __init__(self, in_shape: tuple[int, ...], target_size: int, width: int = 8, depth: int = 4) -> None:
        super().__init__()
        in_shape = check_in_shape(in_shape, "urec")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.size = target_size
        self.work = base_size(target_size, 2**depth) * 2**depth  # a size that halves depth times
        self.norm = InputNorm(in_shape)
        self.stem = ToImageShape(in_shape, width, self.work)
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_act(chans[i], chans[i + 1], 3, 2, 1), conv_bn_act(chans[i + 1], chans[i + 1]))
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i]),
                          nn.ReLU(inplace=True))
            for i in range(depth)
        )
        self.fuse = nn.ModuleList(conv_bn_act(2 * chans[i], chans[i]) for i in range(depth))
        self.head = ToImage(width, target_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(self.norm(x))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for i in reversed(range(len(self.down))):
            h = self.fuse[i](torch.cat([self.up[i](h), skips[i]], 1))
        return self.head(h)


@register_attack("urec")
class URec(ReconstructionAttack):
    """U-Net reconstruction attack (AdvFace's attacker; Ronneberger et al. 2015), L1 loss by
    default. ``width`` w: channels at full resolution (doubling per level; thin full-resolution
    layers keep it CPU-friendly); ``depth``: number of x2 levels."""

    def __init__(self, *, width: int = 8, depth: int = 4, **kw) -> None:
        super().__init__(**kw)
        self.width, self.depth = width, depth

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        return channels_last(UNet(in_shape, self.target_size, self.width, self.depth))


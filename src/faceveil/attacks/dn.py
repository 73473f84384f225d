"""``dn``: NbNet-style de-convolution decoder (Mai et al., "On the reconstruction of face images
from deep face templates", IEEE TPAMI 2019).

NbNet maps a face template to an image with a stack of de-convolution blocks; its "neighborly"
block (NbBlock) follows each x2 de-convolution with convolutions whose inputs are the outputs of
all earlier layers of the block (dense connections), which repairs the noisy/redundant channels of
plain de-convolution blocks (D-CBlocks). Here:

- vectors ``[B,D]``: a fully connected stem to an ``8w x S/16 x S/16`` grid (NbNet's first
  de-convolution from the 1x1xD template, written as a Linear layer);
- maps, frequency maps, images ``[B,C,H,W]``: a convolutional stem (stride-2 convs, then adaptive
  pooling) to the same grid;
- three NbBlocks (x2 each) with channels 4w, 2w, w, then a last x2 de-convolution to RGB and a
  sigmoid (no layer works at full resolution: on a CPU those cost most of the time).

``refine`` picks the block: ``"dense"`` (NbBlock, default), ``"residual"`` (de-convolution + a
residual block) or ``"none"`` (NbNet's D-CBlock baseline: de-convolution + plain convs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from faceveil.attacks.base import ReconstructionAttack, register_attack
from faceveil.attacks.nets import (
    InputNorm,
    MapToGrid,
    ResidualBlock,
    ToImage,
    VectorToGrid,
    base_size,
    channels_last,
    check_in_shape,
    conv_bn_act,
    upconv_bn_relu,
)

REFINE = ("dense", "residual", "none")


class NbBlock(nn.Module):
    """One x2 up-sampling block of NbNet (TPAMI 2019, Sec. 3.2).

    ``dense``: de-conv to cout/2 channels, then ``n_conv`` 3x3 conv-BN-ReLU layers, each fed the
    concatenation of all earlier maps of the block and adding cout/(2 n_conv) channels; the block
    output is the concatenation (cout channels)."""

    def __init__(self, cin: int, cout: int, n_conv: int = 2, refine: str = "dense") -> None:
        super().__init__()
        if refine not in REFINE:
            raise ValueError(f"refine must be one of {REFINE}, got {refine!r}")
        self.refine = refine
        if refine == "dense" and n_conv > 0:
            c0 = cout - (cout // (2 * n_conv)) * n_conv
            self.up = upconv_bn_relu(cin, c0)
            convs, c = [], c0
            for _ in range(n_conv):
                g = cout // (2 * n_conv)
                convs.append(conv_bn_act(c, g))
                c += g
            self.convs = nn.ModuleList(convs)
        else:
            self.up = upconv_bn_relu(cin, cout)
            if refine == "residual":
                self.convs = nn.ModuleList([ResidualBlock(cout) for _ in range(max(1, n_conv // 2))])
            else:
                self.convs = nn.ModuleList([conv_bn_act(cout, cout) for _ in range(n_conv)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        if self.refine == "dense":
            feats = [x]
            for conv in self.convs:
                feats.append(conv(torch.cat(feats, 1) if len(feats) > 1 else feats[0]))
            return torch.cat(feats, 1)
        for conv in self.convs:
            x = conv(x)
        return x


def nbnet(in_shape: tuple[int, ...], target_size: int, width: int = 32, n_conv: int = 2, refine: str = "dense") -> nn.Sequential:
    """The ``dn`` network for one protected-data shape (see the module docstring)."""
    in_shape = check_in_shape(in_shape, "dn")
    grid = base_size(target_size, 16)
    c0 = 8 * width
    stem: nn.Module = VectorToGrid(in_shape[0], c0, grid) if len(in_shape) == 1 else MapToGrid(in_shape, c0, grid)  # type: ignore[arg-type]
    blocks, c = [], c0
    for i in range(1, 4):
        co = max(8, c0 >> i)
        blocks.append(NbBlock(c, co, n_conv, refine))
        c = co
    return channels_last(nn.Sequential(InputNorm(in_shape), stem, *blocks, ToImage(c, target_size, up=True)))


@register_attack("dn")
class DN(ReconstructionAttack):
    """NbNet-style de-convolution reconstructor (Mai et al. TPAMI 2019), trained with the base
    class's pixel loss (L1 by default; optional identity loss).

    ``width`` w sets the channels (8w on the coarsest grid, halving per block): w=32 gives 0.93 M
    parameters for 128-D vectors at 64x64 (2.0 M at 112x112), 1.4 M for 32x35x35 maps."""

    def __init__(self, *, width: int = 32, n_conv: int = 2, refine: str = "dense", **kw) -> None:
        super().__init__(**kw)
        if refine not in REFINE:
            raise ValueError(f"refine must be one of {REFINE}, got {refine!r}")
        self.width, self.n_conv, self.refine = width, n_conv, refine

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        return nbnet(in_shape, self.target_size, self.width, self.n_conv, self.refine)

"""``resrec``: ResNet encoder-decoder reconstructor (the image-transformation network of Johnson
et al., "Perceptual losses for real-time style transfer and super-resolution", ECCV 2016, built
from He et al. 2016 residual blocks), a standard learned inversion network for feature maps.

Layers: input norm; image-shaped stem ``[B,w,S,S]`` (:class:`~faceveil.attacks.nets.ToImageShape`:
fully connected stem for vectors, 1x1 conv + resize for maps and images); two stride-2 3x3
conv-BN-ReLU (2w at S/2, 4w at S/4); ``n_blocks`` residual blocks at S/4 with 4w channels; a x2
de-convolution to 2w (S/2) and a last x2 de-convolution to RGB, then a sigmoid.
"""

from __future__ import annotations

from torch import nn

from faceveil.attacks.base import ReconstructionAttack, register_attack
from faceveil.attacks.nets import (
    InputNorm,
    ResidualBlock,
    ToImage,
    ToImageShape,
    base_size,
    channels_last,
    check_in_shape,
    conv_bn_act,
    upconv_bn_relu,
)


def resnet_decoder(in_shape: tuple[int, ...], target_size: int, width: int = 16, n_blocks: int = 4) -> nn.Sequential:
    """The ``resrec`` network for one protected-data shape (see the module docstring)."""
    in_shape = check_in_shape(in_shape, "resrec")
    work = base_size(target_size, 4) * 4
    w = width
    return nn.Sequential(
        InputNorm(in_shape),
        ToImageShape(in_shape, w, work),
        conv_bn_act(w, 2 * w, 3, 2, 1),
        conv_bn_act(2 * w, 4 * w, 3, 2, 1),
        *[ResidualBlock(4 * w) for _ in range(n_blocks)],
        upconv_bn_relu(4 * w, 2 * w),
        ToImage(2 * w, target_size, up=True),
    )


@register_attack("resrec")
class ResRec(ReconstructionAttack):
    """ResNet encoder-decoder reconstruction attack (Johnson et al. 2016 transformation network),
    L1 loss by default. ``width`` w: channels of the image-shaped stem (2w, 4w deeper);
    ``n_blocks``: residual blocks at S/4."""

    def __init__(self, *, width: int = 16, n_blocks: int = 4, **kw) -> None:
        super().__init__(**kw)
        self.width, self.n_blocks = width, n_blocks

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        return channels_last(resnet_decoder(in_shape, self.target_size, self.width, self.n_blocks))

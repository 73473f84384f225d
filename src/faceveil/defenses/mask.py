"""Masking baseline: blank out the eyes, nose and/or mouth (or a solid box over the inner face).

Region geometry comes from dlib's mean face shape (the 68-point template of
``get_face_chip_details`` in dlib/image_transforms/interpolation.h, in the same unit frame as the
5-point template :data:`faceveil.data.align.TEMPLATE_5`): each region is the bounding box of its
mean-face points (eyes 36-47, nose 27-35, mouth 48-67, face 17-67) grown by ``margin`` template
units on every side. A box in template units is mapped into the chip by the similarity that sends
the 5-point template to the chip's landmarks: by default the exact positions the template takes in
a dlib chip (derived from the chip geometry of :func:`faceveil.data.align.chip_to_image_affine`),
or per-image landmarks passed to :meth:`Mask.protect_with_landmarks` (boxes then follow the head's
in-plane rotation and scale).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from faceveil.data.align import TEMPLATE_5, chip_to_image_affine, similarity_transform
from faceveil.defenses.base import Defense, register_defense
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, Recognizer

#: dlib's mean face shape, points 17-67 of the 68-point markup (x then y, template units)
MEAN_FACE_X = np.array([
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004,
    0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737,
    0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751,
    0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127,
    0.42689,
])
MEAN_FACE_Y = np.array([
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915,
    0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326,
    0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423,
    0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182,
    0.831803, 0.824182,
])
#: 68-point indices of each region
REGION_POINTS: dict[str, range] = {
    "eyes": range(36, 48),
    "nose": range(27, 36),
    "mouth": range(48, 68),
    "face": range(17, 68),
}


def region_box(region: str, margin: float) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a region in template units (bounding box of its mean-face points
    grown by ``margin``)."""
    idx = np.array(REGION_POINTS[region]) - 17
    x, y = MEAN_FACE_X[idx], MEAN_FACE_Y[idx]
    return np.array([x.min() - margin, y.min() - margin, x.max() + margin, y.max() + margin])


def template_chip_points(crop: CropSpec) -> np.ndarray:
    """Chip pixel coordinates ``(u, v)`` where the 5-point template lands in a ``crop`` chip.

    A face whose landmarks sit exactly on the scaled template gets the chip map ``A`` of
    :func:`chip_to_image_affine`; the template's chip position is ``A⁻¹`` of those points."""
    tmpl = (crop.padding + TEMPLATE_5) / (2 * crop.padding + 1) * crop.size
    a = chip_to_image_affine(tmpl, crop)
    return np.linalg.solve(a[:, :2], (tmpl - a[:, 2]).T).T


def image_to_chip_points(points: np.ndarray, crop: CropSpec) -> np.ndarray:
    """Detected image landmarks ``[5,2]`` -> their chip pixel coordinates in a ``crop`` chip."""
    a = chip_to_image_affine(points, crop)
    return np.linalg.solve(a[:, :2], (np.asarray(points, dtype=np.float64) - a[:, 2]).T).T


def region_mask(boxes: np.ndarray, chip_points: np.ndarray, h: int, w: int) -> Tensor:
    """Boolean mask ``[B,1,h,w]``: pixels whose template-frame position (inverse of the
    least-squares similarity template -> ``chip_points[b]``) falls in any box."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    out = []
    for pts in chip_points:
        s = similarity_transform(TEMPLATE_5, pts)
        inv = np.linalg.inv(s[:, :2])
        qu = inv[0, 0] * (u - s[0, 2]) + inv[0, 1] * (v - s[1, 2])
        qv = inv[1, 0] * (u - s[0, 2]) + inv[1, 1] * (v - s[1, 2])
        m = torch.zeros(h, w, dtype=torch.bool)
        for x0, y0, x1, y1 in boxes:
            m |= (qu >= x0) & (qu <= x1) & (qv >= y0) & (qv <= y1)
        out.append(m)
    return torch.stack(out)[:, None]


@register_defense("mask")
class Mask(Defense):
    """Fill facial regions with a constant grey level (``fill`` in [0,1]). ``regions`` is a
    comma-separated subset of eyes, nose, mouth, or ``face``: one solid box from the eyebrows to
    below the lower lip. Deterministic; gradients pass through unmasked pixels only."""

    side = "client"
    stochastic = False
    differentiable = True
    HELP: ClassVar[dict[str, str]] = {
        "regions": "comma-separated: eyes, nose, mouth, face (one solid box over the inner face)",
        "fill": "fill value in [0,1] (0 black, 0.5 grey)",
        "margin": "grow each region box by this many template units (1 unit = 100 px in the 150x150 dlib chip), >= 0",
    }

    def __init__(self, *, regions: str = "eyes,nose,mouth", fill: float = 0.0, margin: float = 0.05,
                 recognizer: Recognizer | None = None) -> None:
        super().__init__(recognizer)
        names = [r.strip() for r in str(regions).split(",") if r.strip()]
        if not names:
            raise ValueError("mask: regions must name at least one of eyes, nose, mouth, face")
        bad = [r for r in names if r not in REGION_POINTS]
        if bad:
            raise ValueError(f"mask: unknown region(s) {', '.join(bad)}; use eyes, nose, mouth, face")
        if isinstance(fill, bool) or not isinstance(fill, int | float) or not 0.0 <= fill <= 1.0:
            raise ValueError(f"mask: fill must be a number in [0, 1], got {fill!r}")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"mask: margin must be a finite number >= 0, got {margin!r}")
        self.regions = ",".join(names)
        self.fill, self.margin = float(fill), float(margin)
        self._boxes = np.stack([region_box(r, self.margin) for r in names])

    def _crop_for(self, x: Tensor) -> CropSpec:
        if x.shape[-2] != x.shape[-1]:
            raise FaceveilDataError(f"mask: expected square aligned chips, got {x.shape[-2]}x{x.shape[-1]}")
        return CropSpec(int(x.shape[-1]), self.recognizer.crop.padding)

    def mask(self, x: Tensor, chip_points: np.ndarray | None = None) -> Tensor:
        """The boolean region mask ``[B,1,S,S]`` for chips ``x`` (template positions, or per-image
        landmarks ``[B,5,2]`` in chip pixel coordinates, dlib 5-point order)."""
        x = self._check_images(x)
        s = x.shape[-1]
        if chip_points is None:
            pts = np.broadcast_to(template_chip_points(self._crop_for(x)), (len(x), 5, 2))
            return region_mask(self._boxes, pts[:1], s, s).expand(len(x), 1, s, s)
        pts = np.asarray(chip_points, dtype=np.float64)
        if pts.shape != (len(x), 5, 2) or not np.isfinite(pts).all():
            raise FaceveilDataError(f"mask: landmarks must be finite with shape [{len(x)},5,2], got {list(pts.shape)}")
        return region_mask(self._boxes, pts, s, s)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.protect_with_landmarks(x, None)

    def protect_with_landmarks(self, x: Tensor, chip_points: np.ndarray | None) -> Tensor:
        """:meth:`protect` with per-image 5-point landmarks in chip pixel coordinates (see
        :func:`image_to_chip_points` for detected image landmarks)."""
        m = self.mask(x, chip_points)
        return torch.where(m, torch.as_tensor(self.fill, dtype=x.dtype), x)

    def storage_bytes(self) -> int:
        s = self.recognizer.input_size
        return 3 * s * s  # a valid image: stored as a uint8 chip

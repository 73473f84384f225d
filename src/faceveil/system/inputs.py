"""What a protected system accepts as a face: photos (file paths, encoded image bytes, numpy arrays) are
detected and aligned to the recogniser's crop; tensors are taken as already aligned chips."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, check_images

#: one face: a path, encoded image bytes (JPEG, PNG, ...), an RGB/grey uint8 array (a photo), or an
#: aligned chip tensor ``[3,S,S]`` / batch ``[B,3,S,S]`` in [0, 1]
FaceInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Tensor]  # noqa: UP007


@dataclass(frozen=True)
class FaceInfo:
    """How one input became a chip: its source, how many faces the detector saw, which it kept."""

    source: str
    n_faces: int
    selected: str
    box: tuple[int, int, int, int] | None

    def note(self) -> str:
        return f"{self.n_faces} faces found, kept the {self.selected}" if self.n_faces > 1 else ""


def _photo(item: FaceInput, name: str) -> np.ndarray:
    from faceveil.data.io import decode_image, read_image

    if isinstance(item, str | os.PathLike):
        return read_image(Path(item))
    if isinstance(item, bytes | bytearray | memoryview):
        return decode_image(bytes(item), name)
    arr = item
    if arr.dtype != np.uint8:
        raise FaceveilDataError(f"{name}: a photo array must be uint8 (H,W,3) or (H,W), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise FaceveilDataError(f"{name}: a photo array must have shape (H,W,3) or (H,W), got {arr.shape}")
    return np.ascontiguousarray(arr)


def to_chips(images: FaceInput | Sequence[FaceInput], crop: CropSpec) -> tuple[Tensor, list[FaceInfo]]:
    """Aligned chips ``[B,3,S,S]`` (float32 in [0,1]) of one input or a list of inputs, with a
    :class:`FaceInfo` per chip. A photo without a face raises :class:`~faceveil.errors.FaceNotFoundError`
    naming it; a tensor must already be aligned at the crop's size."""
    from faceveil.data.align import align_image, to_tensor

    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        raise FaceveilDataError("no images given")
    chips: list[Tensor] = []
    infos: list[FaceInfo] = []
    for i, item in enumerate(items):
        name = str(item) if isinstance(item, str | os.PathLike) else f"input {i}"
        if isinstance(item, Tensor):
            t = item[None] if item.ndim == 3 else item
            check_images(t, f"{name} (aligned chips)", strict=True)
            if tuple(t.shape[-2:]) != (crop.size, crop.size):
                raise FaceveilDataError(
                    f"{name}: tensors are taken as aligned {crop.size}x{crop.size} chips, got {t.shape[-2]}x{t.shape[-1]}; "
                    "pass photos as paths, bytes or uint8 arrays to have them detected and aligned")
            chips.append(t)
            infos += [FaceInfo(name, 1, "given", None)] * len(t)
            continue
        if not isinstance(item, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray):
            raise FaceveilDataError(f"{name}: cannot read a face from a {type(item).__name__}")
        img = _photo(item, name)
        chip, lm = align_image(img, crop, source=name)
        chips.append(to_tensor(chip[None]))
        infos.append(FaceInfo(name, lm.n_faces, lm.select, tuple(int(v) for v in lm.rect)))
    return torch.cat(chips).float(), infos


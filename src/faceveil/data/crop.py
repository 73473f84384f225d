"""The geometry of an aligned face chip (shared by alignment, datasets and recognisers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CropSpec:
    """Aligned crop a model expects: dlib ``get_face_chip`` geometry (5-point similarity) at
    ``size`` pixels with ``padding`` (fraction of the landmark template added on each side)."""

    size: int
    padding: float

    def key(self) -> str:
        return f"{self.size}p{self.padding:g}"

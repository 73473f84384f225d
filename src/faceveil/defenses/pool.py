"""The public face pool that mixing defenses (InstaHide, FaceMix) and AdvNoise's targets draw from.

The pool is a fixed, seed-chosen set of aligned chips of *public* faces (default CelebA aligned,
identity-disjoint from the LFW evaluation pairs), loaded lazily once per process. Tests pass a pool
tensor directly. Per-image draws from the pool use the caller's ``torch.Generator``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, check_images

#: where public faces come from
POOL_SOURCES = ("celeba-aligned", "celeba-wild", "lfw-nonpair")

_CACHE: dict[tuple, Tensor] = {}


def _source_dataset(source: str, data: str | os.PathLike | None):
    from faceveil.data.datasets import LFW, celeba

    if source == "celeba-aligned":
        return celeba(data, "aligned")
    if source == "celeba-wild":
        return celeba(data, "wild")
    if source == "lfw-nonpair":
        return LFW(data).non_pair_images()
    raise ValueError(f"unknown public pool source {source!r}; use one of {', '.join(POOL_SOURCES)}")


def public_pool(size: int = 256, seed: int = 0, source: str = "celeba-aligned", crop: CropSpec = CropSpec(150, 0.25),
                data: str | os.PathLike | None = None) -> Tensor:
    """``size`` aligned public face chips ``[N,3,S,S]`` in [0,1], chosen by a seeded permutation of
    the source dataset (images where no face was detected are skipped, never centre-cropped).
    Cached per process; the chips themselves are cached on disk by :mod:`faceveil.data.align`."""
    check_pool_params(size, source)
    from faceveil.config import data_dir
    from faceveil.data.align import STATUS_FALLBACK, to_tensor

    root = Path(data_dir(data))
    key = (str(root), source, size, seed, crop)
    if key not in _CACHE:
        ds = _source_dataset(source, root)
        if len(ds) < size:
            raise FaceveilDataError(f"public pool: {source} has {len(ds)} images, fewer than pool_size={size}")
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).numpy()
        chips: list[np.ndarray] = []
        got, pos = 0, 0
        while got < size and pos < len(order):
            take = order[pos : pos + (size - got) + 8]
            pos += len(take)
            c, status = ds.subset(np.sort(take)).chips(crop, progress=False)
            c = c[status != STATUS_FALLBACK][: size - got]
            chips.append(c)
            got += len(c)
        if got < size:
            raise FaceveilDataError(f"public pool: only {got} faces detected in {source}, fewer than pool_size={size}")
        _CACHE[key] = to_tensor(np.concatenate(chips))
    return _CACHE[key]


def check_pool_params(size: int, source: str) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"pool_size must be an integer >= 1, got {size!r}")
    if source not in POOL_SOURCES:
        raise ValueError(f"pool_source must be one of {', '.join(POOL_SOURCES)}, got {source!r}")


class PublicPoolMixin:
    """Lazy access to the public pool for a defense with ``pool_size``/``pool_seed``/``pool_source``
    parameters; a tensor passed as ``pool`` overrides them (tests, custom pools)."""

    pool_size: int
    pool_seed: int
    pool_source: str

    def _init_pool(self, pool: Tensor | None, data: str | os.PathLike | None) -> None:
        check_pool_params(self.pool_size, self.pool_source)
        if pool is not None:
            check_images(pool, "public pool")
            if len(pool) < 1:
                raise ValueError("public pool tensor is empty")
        self._pool = pool
        self._pool_data = data

    def pool_images(self, size: int | None = None) -> Tensor:
        """The pool ``[N,3,S,S]``, resized to ``size`` pixels if given."""
        if self._pool is None:
            crop = self.recognizer.crop  # type: ignore[attr-defined]  (the defense's recogniser)
            self._pool = public_pool(self.pool_size, self.pool_seed, self.pool_source, crop, self._pool_data)
        p = self._pool
        if size is not None and p.shape[-2:] != (size, size):
            p = F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return p

    def draw_public(self, n: int, m: int, size: int, rng: torch.Generator) -> Tensor:
        """``m`` distinct pool images for each of ``n`` private images: ``[n,m,3,S,S]``."""
        pool = self.pool_images(size)
        if m > len(pool):
            raise ValueError(f"need {m} distinct public images per face but the pool holds {len(pool)}")
        idx = torch.rand(n, len(pool), generator=rng).argsort(dim=1)[:, :m]
        return pool[idx]

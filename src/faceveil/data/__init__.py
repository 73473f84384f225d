"""Datasets (LFW, CelebA, folders), safe image reading, alignment and caching."""

from faceveil.data.io import read_image

__all__ = ["read_image"]

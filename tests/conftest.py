"""Shared fixtures: real data from ../shared/data (or $FACEVEIL_DATA), a few aligned LFW chips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root():
    from faceveil.config import data_dir

    return data_dir()


@pytest.fixture(scope="session")
def lfw(data_root):
    from faceveil.data.datasets import LFW

    return LFW(data_root)


@pytest.fixture(scope="session")
def lfw_sample(lfw):
    """24 LFW pair images (fixed, spread over identities): (dataset subset, 150x150 dlib chips)."""
    idx = lfw.pair_images()[:: max(1, len(lfw.pair_images()) // 24)][:24]
    sub = lfw.dataset().subset(idx, name="lfw")
    from faceveil.models.base import CropSpec

    chips, status = sub.chips(CropSpec(150, 0.25), progress=False)
    assert (status >= 0).all()
    return sub, chips


@pytest.fixture(scope="session")
def dlib_model():
    from faceveil.models import get_recognizer

    return get_recognizer("dlib")


def pytest_collection_modifyitems(config, items):  # noqa: D103
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


def as_uint8(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint8)

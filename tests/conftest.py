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


@pytest.fixture(scope="session")
def fo_bundle(tmp_path_factory, data_root):
    """A FaceObfuscator system with an adapted server at the ci profile, built and saved once per session
    (the system and service tests share it): ``(system, bundle path)``."""
    from faceveil.bench.build import build_system
    from faceveil.defenses import get_defense

    system = build_system(get_defense("faceobfuscator"), "adapted", "ci", seed=0, data=data_root, progress=False)
    return system, system.save(tmp_path_factory.mktemp("sys") / "fo.fvsys")


def pytest_collection_modifyitems(config, items):  # noqa: D103
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


def as_uint8(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint8)


@pytest.fixture
def browser():
    """Headless Chromium: Debian's ``chromium`` driven through Playwright (no browser download)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()

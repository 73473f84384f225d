"""Shared fixtures of the TF.js model ports: the aligned LFW chips and the TF.js reference outputs
in tests/fixtures/tfjs (made by tools/tfjs_reference/make_fixture.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tfjs"


def load_tfjs_chips(key: str, crop) -> torch.Tensor:
    """The fixture chips stored under ``key``, checked to have been aligned with ``crop``."""
    with np.load(FIXTURES / "chips.npz") as z:
        keys = sorted((k for k in z.files if k.startswith(key + "/")), key=lambda k: int(k.split("/")[1]))
        chips = np.stack([np.asarray(Image.open(io.BytesIO(z[k].tobytes()))) for k in keys])
        assert json.loads(str(z["crops"]))[key] == [crop.size, crop.padding]
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """TF.js outputs on the fixture chips."""
    with np.load(FIXTURES / "reference.npz") as z:
        return {k: z[k] for k in z.files}

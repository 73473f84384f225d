"""Bad input to the Python API is named in a FaceveilDataError, never a raw torch error or a silent
broadcast: every registered defense's protect(), the recogniser's embed(), distances, batch sizes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceveil.defenses import defense_names, get_defense
from faceveil.errors import FaceveilDataError
from faceveil.models.base import check_batch_size, pairwise_distance

CASES = {
    "0-255 values": (torch.full((1, 3, 150, 150), 128.0), "0-255"),
    "negative values": (torch.full((1, 3, 150, 150), -0.5), r"\[0, 1\]"),
    "float64": (torch.rand(1, 3, 150, 150, dtype=torch.float64), "float32"),
    "float16": (torch.rand(1, 3, 150, 150).half(), "float32"),
    "uint8": (torch.zeros(1, 3, 150, 150, dtype=torch.uint8), "float"),
    "empty batch": (torch.rand(0, 3, 150, 150), "empty batch"),
    "1x1 image": (torch.rand(1, 3, 1, 1), "too small"),
    "NaN": (torch.full((1, 3, 150, 150), float("nan")), "NaN"),
    "channels last": (torch.rand(1, 150, 150, 3), r"\[B,3,H,W\]"),
    "no batch axis": (torch.rand(3, 150, 150), r"\[B,3,H,W\]"),
    "numpy array": (torch.rand(1, 3, 150, 150).numpy(), "torch.Tensor"),
}


@pytest.fixture(scope="module")
def defenses(dlib_model):
    """Every registered defense with its defaults (none does heavy work before validating its input)."""
    return {n: get_defense(n, recognizer=dlib_model) for n in defense_names()}


@pytest.mark.parametrize("case", list(CASES))
def test_every_defense_names_bad_input(defenses, case):
    x, msg = CASES[case]
    for name, d in defenses.items():
        with pytest.raises(FaceveilDataError, match=msg):
            d.protect(x, torch.Generator().manual_seed(0))
        assert name  # every defense reached


def test_embed_names_bad_input_and_batch_size(dlib_model):
    for x, msg in CASES.values():
        with pytest.raises(FaceveilDataError, match=msg):
            dlib_model.embed(x)
    with pytest.raises(FaceveilDataError, match="positive integer"):
        dlib_model.embed(torch.rand(2, 3, 150, 150), batch_size=0)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(FaceveilDataError, match="positive integer"):
            check_batch_size(bad)  # type: ignore[arg-type]


def test_distance_refuses_mismatched_sizes():
    with pytest.raises(FaceveilDataError, match="equal shapes"):
        pairwise_distance(torch.rand(1, 128), torch.rand(5, 128), "euclidean")
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distance(torch.rand(2, 8), torch.rand(2, 8), "manhattan")


_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8])
_shapes = st.lists(st.integers(0, 40), min_size=0, max_size=5).map(tuple)
_fill = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-300, 300))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=_shapes, dtype=_dtypes, fill=_fill, name=st.sampled_from(sorted(defense_names())))
def test_fuzz_protect_input_validation(defenses, shape, dtype, fill, name):
    """Random shapes, dtypes and values: protect() either returns a finite float32 tensor or raises
    FaceveilDataError; never another exception. Large valid inputs are skipped (slow defenses)."""
    try:
        x = torch.full(shape, fill, dtype=dtype)
    except (RuntimeError, OverflowError):
        return  # torch itself cannot make this tensor (e.g. inf in an integer dtype)
    valid = (len(shape) == 4 and shape[0] > 0 and shape[1] == 3 and min(shape[2:]) >= 8 and dtype == torch.float32
             and 0 <= float(fill) <= 1)
    if valid:
        return  # well-formed images are exercised by each defense's own tests
    with pytest.raises(FaceveilDataError):
        defenses[name].protect(x, torch.Generator().manual_seed(0))

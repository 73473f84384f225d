"""Caching helpers of faceveil.config."""

from __future__ import annotations

import weakref

import pytest
import torch

from faceveil.config import cat_parts, load_or_compute_parts


def test_parts_are_kept_until_the_whole_value_is_saved(tmp_path):
    """A computation stopped in part 2 keeps parts 0-1; the next call computes only parts 2-3, saves the
    combined value, removes the part files; a later call loads it; ``force`` recomputes every part."""
    path, calls, stop = tmp_path / "value.pt", [], [2]

    def part(i: int) -> torch.Tensor:
        calls.append(i)
        if i in stop:
            stop.remove(i)
            raise RuntimeError("killed")
        return torch.full((2,), float(i))

    with pytest.raises(RuntimeError, match="killed"):
        load_or_compute_parts(path, 4, part, torch.cat)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value-part0.pt", "value-part1.pt"]
    calls.clear()
    v = load_or_compute_parts(path, 4, part, torch.cat)
    assert calls == [2, 3] and torch.equal(v, torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3]))
    assert [p.name for p in tmp_path.iterdir()] == ["value.pt"]
    calls.clear()
    assert torch.equal(load_or_compute_parts(path, 4, part, torch.cat), v) and calls == []
    assert torch.equal(load_or_compute_parts(path, 4, part, torch.cat, force=True), v) and calls == [0, 1, 2, 3]


def test_cat_parts_equals_torch_cat_and_releases_the_parts():
    """Same values and dtype as ``torch.cat``; every part is released once copied (the list is emptied
    and no reference is kept), so the peak is the result plus one part."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.uint8):
        parts = [(torch.rand(n, 3, 5, 4, generator=g) * 200).to(dtype) for n in (7, 1, 64, 13)]
        want = torch.cat(parts)
        refs = [weakref.ref(p) for p in parts]
        got = cat_parts(parts)
        assert got.dtype == dtype and torch.equal(got, want)
        assert parts == [] and all(r() is None for r in refs)
    with pytest.raises(ValueError, match="no parts"):
        cat_parts([])

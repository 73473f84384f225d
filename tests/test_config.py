"""Caching helpers of faceveil.config."""

from __future__ import annotations

import pytest
import torch

from faceveil.config import load_or_compute_parts


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

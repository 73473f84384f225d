"""Caching helpers of faceveil.config."""

from __future__ import annotations

import weakref

import pytest
import torch

from faceveil.config import cat_parts, load_or_compute_parts


def _entries(folder) -> list[str]:
    """Cache entries in ``folder`` (each is checked to have its sha256 sidecar, which is not listed)."""
    names = sorted(p.name for p in folder.iterdir())
    entries = [n for n in names if not n.endswith(".sha256")]
    assert sorted(n + ".sha256" for n in entries) == [n for n in names if n.endswith(".sha256")]
    return entries


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
    assert _entries(tmp_path) == ["value-part0.pt", "value-part1.pt"]
    calls.clear()
    v = load_or_compute_parts(path, 4, part, torch.cat)
    assert calls == [2, 3] and torch.equal(v, torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3]))
    assert _entries(tmp_path) == ["value.pt"]
    calls.clear()
    assert torch.equal(load_or_compute_parts(path, 4, part, torch.cat), v) and calls == []
    assert torch.equal(load_or_compute_parts(path, 4, part, torch.cat, force=True), v) and calls == [0, 1, 2, 3]


def test_cat_parts_equals_torch_cat_made_batch_by_batch():
    """Same values and dtype as ``torch.cat``, each batch taken from the generator only when it is
    copied (so a batch is freed before the next is made); a batch longer than the first is refused."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.uint8):
        sizes = (16, 16, 16, 5)
        parts = [(torch.rand(k, 3, 5, 4, generator=g) * 200).to(dtype) for k in sizes]
        made, alive = [], []

        def gen(parts=parts, made=made, alive=alive):
            for p in parts:
                made.append(len(p))
                q = p.clone()
                alive.append(weakref.ref(q))
                yield q
                del q

        got = cat_parts(gen(), len(sizes))
        assert got.dtype == dtype and torch.equal(got, torch.cat(parts)) and made == list(sizes)
        assert all(r() is None for r in alive)
    with pytest.raises(ValueError, match="no parts"):
        cat_parts([], 1)
    with pytest.raises(ValueError, match="past the"):
        cat_parts([torch.zeros(2), torch.zeros(3)], 2)


def test_streamed_parts_are_cached_and_combined_lazily(tmp_path):
    """``stream=True``: combine sees each part as it is computed (and cached), in order."""
    seen = []

    def combine(it):
        for _p in it:
            seen.append(_entries(tmp_path))
        return len(seen)

    assert load_or_compute_parts(tmp_path / "v.pt", 3, lambda i: torch.full((2,), float(i)), combine, save=False,
                                 stream=True) == 3
    assert seen == [["v-part0.pt"], ["v-part0.pt", "v-part1.pt"], ["v-part0.pt", "v-part1.pt", "v-part2.pt"]]

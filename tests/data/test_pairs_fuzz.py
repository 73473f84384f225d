"""The LFW pairs parser on hostile input: only pairs or a FaceveilDataError naming the file, never a
traceback or a path outside the dataset."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceveil.data.datasets import read_pairs
from faceveil.errors import FaceveilDataError

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parse(tmp_path, blob: bytes):
    p = tmp_path / "pairs.txt"
    p.write_bytes(blob)
    try:
        out = read_pairs(p)
    except FaceveilDataError as e:
        assert str(p) in str(e)
        return None
    for a, b, same, fold in out:
        assert isinstance(same, bool) and fold >= 0
        for f in (a, b):
            assert ".." not in f.split("/") and not f.startswith("/") and f.count("/") == 1
    return out


@_SETTINGS
@given(blob=st.binary(max_size=400))
def test_fuzz_bytes(tmp_path, blob):
    _parse(tmp_path, blob)


_token = st.one_of(st.sampled_from(["Aaron_Eckhart", "1", "2", "0", "-1", "..", "a/b", "x" * 3, "1e3", "٣", "²", "10 300"]),
                   st.text(max_size=8))


@_SETTINGS
@given(header=st.lists(_token, max_size=3), rows=st.lists(st.lists(_token, max_size=5), max_size=6))
def test_fuzz_structured(tmp_path, header, rows):
    text = "\n".join(" ".join(r) for r in [header, *rows])
    _parse(tmp_path, text.encode("utf-8", "surrogatepass"))


def test_real_pairs_and_mutations(tmp_path, data_root):
    real = (data_root / "lfw" / "pairsDevTest.txt").read_bytes()
    assert len(_parse(tmp_path, real)) == 1000
    lines = real.decode().splitlines()
    for bad, msg in [(["../etc", "1", "2"], "not a person's name"), (["Aaron", "x", "2"], "positive integer"),
                     (["Aaron", "0", "2"], "positive integer"), (["Aaron", "1"], "bad pair line")]:
        p = tmp_path / "m.txt"
        p.write_text("\n".join([lines[0], " ".join(bad), *lines[2:]]))
        try:
            read_pairs(p)
        except FaceveilDataError as e:
            assert msg in str(e) and "line 2" in str(e)
        else:
            raise AssertionError(f"accepted {bad}")
    for text, msg in [("", "empty"), ("1 2 3\n", "header"), ("ten\n", "positive integer")]:
        p = tmp_path / "h.txt"
        p.write_text(text)
        try:
            read_pairs(p)
        except FaceveilDataError as e:
            assert msg in str(e)
        else:
            raise AssertionError(text)

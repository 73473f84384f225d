"""Conformance tests of the service's storage backends (SQLite and PostgreSQL+pgvector): the same tests on
both, on random numpy data. PostgreSQL runs on a throwaway server (tests/service/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from faceveil.errors import FaceveilDataError
from faceveil.service.storage import (
    SCHEMA_VERSION,
    ApiKeyRecord,
    Conflict,
    GalleryInfo,
    NotFound,
    Repository,
    StorageError,
    TemplateRecord,
    open_repository,
)
from faceveil.service.storage.base import template_array

SRC = Path(__file__).resolve().parents[2] / "src"
DIGEST = "sha256-" + "ab" * 32
D = 32


# --- backends ---------------------------------------------------------------------------------------
@dataclass
class Backend:
    kind: str
    url: str

    def open(self, **kw) -> Repository:
        if self.kind == "sqlite":
            from faceveil.service.storage.sqlite import SqliteRepository

            return SqliteRepository(self.url[len("sqlite:///"):], **kw)
        from faceveil.service.storage.postgres import PostgresRepository

        return PostgresRepository(self.url, **kw)

    def bound(self, metric: str = "cosine", dim: int = D, **kw) -> Repository:
        r = self.open(**kw)
        r.migrate(DIGEST, dim, metric)
        return r


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'faceveil.db'}")
    return Backend("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
def repo(backend: Backend):
    r = backend.bound()
    yield r
    r.close()


# --- helpers ----------------------------------------------------------------------------------------
def rec(rng: np.random.Generator, shape=(8,), dim: int = D) -> TemplateRecord:
    return TemplateRecord(rng.normal(size=shape).astype(np.float32), rng.normal(size=dim).astype(np.float32))


def table(repo: Repository, gallery: str) -> dict[str, np.ndarray]:
    """Every subject's stored embeddings ``[T, D]``, read back through the repository."""
    return {s: np.stack([t.embedding for t in repo.templates(gallery, s)]) for s in repo.subjects(gallery)}


def brute_force(gal: dict[str, np.ndarray], probe: np.ndarray, metric: str, k: int) -> list[tuple[str, float]]:
    """The k nearest subjects (each at its best template), float64 numpy, no index."""
    p = probe.astype(np.float64)
    best = {}
    for lab, e in gal.items():
        e = e.astype(np.float64)
        if metric == "cosine":
            d = 1 - e @ p / (np.linalg.norm(e, axis=1) * np.linalg.norm(p))
        else:
            d = np.linalg.norm(e - p, axis=1)
        best[lab] = float(d.min())
    return sorted(best.items(), key=lambda x: (x[1], x[0]))[:k]


def assert_search_exact(repo: Repository, gallery: str, metric: str, probes: np.ndarray, k: int) -> None:
    """search() equals the brute force over what the tables hold: same distances, same subjects (up to ties)."""
    gal = table(repo, gallery)
    got = repo.search(gallery, probes, k)
    assert len(got) == len(probes)
    for p, hits in zip(probes, got, strict=True):
        exp = brute_force(gal, p, metric, k)
        assert len(hits) == len(exp) == min(k, len(gal))
        np.testing.assert_allclose([h.distance for h in hits], [d for _, d in exp], atol=2e-5)
        for i, (h, (lab, d)) in enumerate(zip(hits, exp, strict=True)):
            tied = any(abs(d - d2) < 1e-4 for j, (_, d2) in enumerate(exp) if j != i)
            if not tied:
                assert h.subject == lab
            assert h.distance == pytest.approx(brute_force({h.subject: gal[h.subject]}, p, metric, 1)[0][1], abs=2e-5)


# --- galleries --------------------------------------------------------------------------------------
def test_galleries(repo: Repository) -> None:
    assert repo.list_galleries() == []
    repo.create_gallery("staff")
    repo.create_gallery("visitors 2026")
    with pytest.raises(Conflict):
        repo.create_gallery("staff")
    for bad in ("", "x" * 129, "a/b", "tab\there", "new\nline", None):
        with pytest.raises(FaceveilDataError):
            repo.create_gallery(bad)
    rng = np.random.default_rng(0)
    repo.enroll("staff", [("ann", [rec(rng), rec(rng)]), ("bob", [rec(rng)])])
    assert repo.list_galleries() == [GalleryInfo("staff", 2, 3), GalleryInfo("visitors 2026", 0, 0)]
    assert repo.delete_gallery("staff") == 3
    assert repo.list_galleries() == [GalleryInfo("visitors 2026", 0, 0)]
    for call in (lambda: repo.delete_gallery("staff"), lambda: repo.subjects("staff"),
                 lambda: repo.enroll("staff", [("ann", [rec(rng)])]), lambda: repo.search("staff", rng.normal(size=(1, D)), 1)):
        with pytest.raises(NotFound):
            call()
    # a gallery made again under the same name starts empty
    repo.create_gallery("staff")
    assert repo.subjects("staff") == [] and repo.search("staff", rng.normal(size=(2, D)), 3) == [[], []]


def test_open_repository_urls(tmp_path: Path) -> None:
    from faceveil.service.storage.sqlite import SqliteRepository

    for url in (f"sqlite:///{tmp_path / 'a.db'}", str(tmp_path / "b.db")):
        r = open_repository(url)
        assert isinstance(r, SqliteRepository)
        r.close()
    with pytest.raises(StorageError):
        open_repository("mysql://x/y")


# --- enrolment --------------------------------------------------------------------------------------
def test_enroll_round_trip(backend: Backend) -> None:
    repo = backend.bound(dim=128)
    rng = np.random.default_rng(1)
    repo.create_gallery("g")
    a = [TemplateRecord(rng.normal(size=(2, 112, 112)).astype(np.float32), rng.normal(size=128).astype(np.float32))
         for _ in range(2)]
    b = [TemplateRecord(rng.normal(size=128).astype(np.float32), rng.normal(size=128).astype(np.float32))]
    # extreme float32 values survive exactly too (the PostgreSQL vector goes through text)
    b.append(TemplateRecord(np.array([np.float32(1e-38), np.float32(3.4e38), -0.0, 1 / 3], np.float32),
                            np.r_[np.float32(1e-30), np.full(127, np.float32(np.pi))].astype(np.float32)))
    assert repo.enroll("g", [("alice", a), ("bob", b)]) == [2, 2]
    assert repo.subjects("g") == ["alice", "bob"]
    for label, recs in (("alice", a), ("bob", b)):
        got = repo.templates("g", label)
        assert len(got) == len(recs)
        for g, r in zip(got, recs, strict=True):
            assert g.template.dtype == np.float32 and g.template.shape == r.template.shape
            assert np.array_equal(g.template, r.template)
            assert g.embedding.dtype == np.float32 and np.array_equal(g.embedding, r.embedding)
    # more templates for an existing subject (and a new one, in the same call); ints and float64 are accepted
    c = TemplateRecord(np.arange(6).reshape(2, 3), rng.normal(size=128))
    assert repo.enroll("g", [("alice", [c]), ("carol", [c, c])]) == [3, 2]
    last = repo.templates("g", "alice")[-1]
    assert np.array_equal(last.template, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(last.embedding, c.embedding.astype(np.float32))
    with pytest.raises(NotFound):
        repo.templates("g", "nobody")
    repo.close()
    # what another process opening the database reads back
    again = backend.open()
    assert again.subjects("g") == ["alice", "bob", "carol"]
    assert np.array_equal(again.templates("g", "alice")[0].template, a[0].template)
    again.close()


def _bad_batches(rng: np.random.Generator) -> dict[str, list]:
    good1, good2 = ("first", [rec(rng), rec(rng)]), ("last", [rec(rng)])
    bad = {
        "bad name": ("no/slash", [rec(rng)]),
        "wrong embedding dimension": ("mid", [rec(rng), TemplateRecord(rng.normal(size=8), rng.normal(size=D + 1))]),
        "non-finite embedding": ("mid", [TemplateRecord(rng.normal(size=8), np.r_[np.nan, np.ones(D - 1)])]),
        "zero embedding": ("mid", [TemplateRecord(rng.normal(size=8), np.zeros(D))]),
        "non-finite template": ("mid", [TemplateRecord(np.array([1.0, np.inf]), rng.normal(size=D))]),
        "no templates": ("mid", []),
        "not a record": ("mid", [(np.ones(3), np.ones(D))]),
    }
    return {why: [good1, item, good2] for why, item in bad.items()}


def test_enroll_is_all_or_nothing(repo: Repository) -> None:
    rng = np.random.default_rng(2)
    repo.create_gallery("g")
    repo.enroll("g", [("first", [rec(rng)])])
    before = table(repo, "g")
    probes = rng.normal(size=(3, D))
    hits_before = repo.search("g", probes, 3)
    for why, batch in _bad_batches(rng).items():
        with pytest.raises(FaceveilDataError):
            repo.enroll("g", batch)
        assert repo.subjects("g") == ["first"], why
        assert len(repo.templates("g", "first")) == 1, why
        assert repo.list_galleries() == [GalleryInfo("g", 1, 1)], why
    assert {k: v.tolist() for k, v in table(repo, "g").items()} == {k: v.tolist() for k, v in before.items()}
    assert repo.search("g", probes, 3) == hits_before


def test_enroll_rolls_back_a_failure_inside_the_transaction(repo: Repository, backend: Backend,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the database itself refuses mid-batch (past the validation) stores nothing, and the index
    is untouched: the batch's third item carries an embedding of the wrong size."""
    import faceveil.service.storage.postgres as pg_mod
    import faceveil.service.storage.sqlite as sqlite_mod

    rng = np.random.default_rng(3)
    repo.create_gallery("g")
    repo.enroll("g", [("kept", [rec(rng)])])
    probes = rng.normal(size=(2, D))
    hits_before = repo.search("g", probes, 5)
    real = sqlite_mod.prepare_items

    def sneaky(items, dim, metric):
        out = real(items, dim, metric)
        label, recs = out[2]
        out[2] = (label, [(recs[0][0], np.ones(dim + 3, np.float32))])
        return out

    monkeypatch.setattr(sqlite_mod if backend.kind == "sqlite" else pg_mod, "prepare_items", sneaky)
    with pytest.raises(StorageError):
        repo.enroll("g", [("a", [rec(rng)]), ("kept", [rec(rng)]), ("c", [rec(rng)]), ("d", [rec(rng)])])
    monkeypatch.undo()
    assert repo.subjects("g") == ["kept"] and len(repo.templates("g", "kept")) == 1
    assert repo.search("g", probes, 5) == hits_before
    assert repo.enroll("g", [("a", [rec(rng)])]) == [1]  # the repository still works


def test_delete_subject(repo: Repository) -> None:
    rng = np.random.default_rng(4)
    repo.create_gallery("g")
    recs = {s: [rec(rng) for _ in range(n)] for s, n in (("a", 1), ("b", 3), ("c", 2))}
    repo.enroll("g", list(recs.items()))
    probe = recs["b"][1].embedding
    assert repo.search("g", probe[None], 1)[0][0].subject == "b"
    assert repo.delete_subject("g", "b") == 3
    assert repo.subjects("g") == ["a", "c"]
    assert repo.list_galleries() == [GalleryInfo("g", 2, 3)]
    with pytest.raises(NotFound):
        repo.templates("g", "b")
    with pytest.raises(NotFound):
        repo.delete_subject("g", "b")
    hits = repo.search("g", np.stack([r.embedding for r in recs["b"]]), 5)
    assert all(h.subject != "b" for hs in hits for h in hs) and all(len(hs) == 2 for hs in hits)
    assert_search_exact(repo, "g", "cosine", np.stack([r.embedding for r in recs["b"]]), 5)
    # enrolled again under the same label: a new subject with only the new template
    repo.enroll("g", [("b", [recs["b"][0]])])
    assert len(repo.templates("g", "b")) == 1
    assert repo.search("g", recs["b"][0].embedding[None], 1)[0][0].subject == "b"


# --- identification ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_search_equals_brute_force(backend: Backend, metric: str) -> None:
    repo = backend.bound(metric=metric)
    rng = np.random.default_rng(5)
    repo.create_gallery("g")
    repo.create_gallery("other")  # another gallery's rows never come back
    items = [(f"s{i:03d}", [rec(rng) for _ in range(1 + i % 4)]) for i in range(150)]
    for j in range(0, 150, 50):
        repo.enroll("g", items[j:j + 50])
    repo.enroll("other", [(f"o{i}", [rec(rng)]) for i in range(100)])
    stored = np.stack([items[i][1][-1].embedding for i in (0, 7, 99)])
    probes = np.concatenate([rng.normal(size=(20, D)), stored, stored * 3.0 + 0.01])
    for k in (1, 5, 20):
        assert_search_exact(repo, "g", metric, probes, k)
    hits = repo.search("g", stored, 1)
    assert [h[0].subject for h in hits] == ["s000", "s007", "s099"]
    assert all(h[0].distance == pytest.approx(0, abs=1e-5) for h in hits)
    # k beyond the gallery: every subject once; a single probe vector is one probe
    assert len(repo.search("g", probes[0], 1000)[0]) == 150
    with pytest.raises(FaceveilDataError):
        repo.search("g", rng.normal(size=(2, D + 1)), 3)
    with pytest.raises(FaceveilDataError):
        repo.search("g", probes, 0)
    repo.close()


def test_search_returns_k_distinct_subjects(backend: Backend) -> None:
    """Subjects with many near-identical templates: the k nearest *templates* are one or two subjects, yet
    k distinct subjects come back (the candidate set grows until it holds k). PostgreSQL: exactly (a
    small gallery) and through the HNSW index."""
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(30, D)) * 10
    items = [(f"c{i}", [TemplateRecord(np.ones(2), c + rng.normal(size=D) * 0.01) for _ in range(60)])
             for i, c in enumerate(centres)]
    probes = centres[:5] + rng.normal(size=(5, D)) * 0.01
    modes = [{}] if backend.kind == "sqlite" else [{"exact_below": 10**9}, {"exact_below": 0}]
    repo = backend.bound(metric="euclidean", **modes[0])
    repo.create_gallery("g")
    repo.enroll("g", items)
    repo.close()
    for kw in modes:
        repo = backend.bound(metric="euclidean", **kw)
        for hits in repo.search("g", probes, 12):
            assert len({h.subject for h in hits}) == len(hits) == 12
        if kw.get("exact_below", 1) > 0:
            assert_search_exact(repo, "g", "euclidean", probes, 12)
        else:
            assert "templates_hnsw_g" in repo.explain_search("g", probes[0], 12)
        repo.close()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pgvector_hnsw_recall(pg_url: str, metric: str) -> None:
    """Through the gallery's HNSW index (exact_below=0): recall@10 >= 0.95 against brute force on 2,000
    random templates (1,000 subjects), and the plan uses that index."""
    from faceveil.service.storage.postgres import PostgresRepository

    repo = PostgresRepository(pg_url, exact_below=0)
    repo.migrate(DIGEST, 64, metric)
    repo.create_gallery("g")
    repo.create_gallery("small")
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(1000, 2, 64)).astype(np.float32)
    for j in range(0, 1000, 250):
        repo.enroll("g", [(f"s{i:04d}", [TemplateRecord(np.ones(1), e) for e in emb[i]]) for i in range(j, j + 250)])
    repo.enroll("small", [("x", [TemplateRecord(np.ones(1), rng.normal(size=64))])])
    assert "templates_hnsw_g" in repo.explain_search("g", emb[0, 0], 10)
    gal = {f"s{i:04d}": emb[i] for i in range(1000)}
    probes = rng.normal(size=(50, 64)).astype(np.float32)
    k, found = 10, 0
    for p, hits in zip(probes, repo.search("g", probes, k), strict=True):
        exp = {lab for lab, _ in brute_force(gal, p, metric, k)}
        assert len(hits) == k
        found += len(exp & {h.subject for h in hits})
    assert found / (k * len(probes)) >= 0.95
    # a one-template gallery next to a large one still answers (a partial index per gallery)
    assert [h.subject for h in repo.search("small", probes[:3], 5)[0]] == ["x"]
    # the default: a small gallery is searched exactly
    exact = PostgresRepository(pg_url)
    assert "templates_hnsw_g" not in exact.explain_search("g", emb[0, 0], 10)
    exact.close()
    repo.close()


# --- binding and migrations -------------------------------------------------------------------------
def test_system_binding(backend: Backend) -> None:
    r = backend.open()
    with pytest.raises(StorageError):
        r.create_gallery("g")  # not set up yet
    for bad in (("", D, "cosine"), (DIGEST, 0, "cosine"), (DIGEST, D, "manhattan"), ("a/b", D, "cosine")):
        with pytest.raises(FaceveilDataError):
            r.migrate(*bad)
    r.migrate(DIGEST, D, "cosine")
    assert (r.dim, r.metric) == (D, "cosine")
    r.migrate(DIGEST, D, "cosine")
    for other in (("sha256-other", D, "cosine"), (DIGEST, D + 1, "cosine"), (DIGEST, D, "euclidean")):
        with pytest.raises(Conflict):
            r.migrate(*other)
    r.close()
    again = backend.open()  # reopened: bound already
    assert (again.dim, again.metric) == (D, "cosine")
    assert again.list_galleries() == []
    with pytest.raises(Conflict):
        again.migrate("sha256-other", D, "cosine")
    again.close()


def test_migrations_versioned_and_idempotent(backend: Backend) -> None:
    r = backend.bound()
    r.create_gallery("g")
    rng = np.random.default_rng(8)
    r.enroll("g", [("a", [rec(rng)])])
    for _ in range(2):
        r.migrate(DIGEST, D, "cosine")
    assert r.schema_version() == SCHEMA_VERSION == 1
    dump = r.dump_columns()
    assert dict(dump["schema_version"])["version"] == [1]
    assert sorted(zip(*[v for _, v in dump["meta"]], strict=True)) == [("dim", str(D)), ("metric", "cosine"),
                                                                       ("system_digest", DIGEST)]
    r.close()

    # a later schema step (as a release would add one) runs once, in order, on the existing database
    base = type(r)
    ran: list[int] = []

    def v2(conn, binding):
        ran.append(2)
        conn.execute("CREATE TABLE v2_marker (x integer)")  # a sqlite3 connection or a psycopg cursor

    def v3(conn, binding):
        assert ran == [2]
        ran.append(3)

    Later = type("Later", (base,), {"migrations": [*base.migrations, (2, v2), (3, v3)]})
    later = Later(backend.url[len("sqlite:///"):] if backend.kind == "sqlite" else backend.url)
    later.migrate(DIGEST, D, "cosine")
    later.migrate(DIGEST, D, "cosine")
    assert ran == [2, 3] and later.schema_version() == 3
    assert later.subjects("g") == ["a"]
    assert dict(later.dump_columns()["schema_version"])["version"] == [1, 2, 3]
    later.close()
    # this (older) faceveil refuses a database of a newer schema
    old = backend.open()
    with pytest.raises(StorageError, match="newer"):
        old.migrate(DIGEST, D, "cosine")
    old.close()


# --- API keys ---------------------------------------------------------------------------------------
def test_api_keys(repo: Repository) -> None:
    h1, h2 = hashlib.sha256(b"key one").hexdigest(), hashlib.sha256(b"key two").hexdigest()
    assert repo.api_keys() == []
    repo.add_api_key(ApiKeyRecord("ops", h1, None, True))
    repo.add_api_key(ApiKeyRecord("kiosk", h2, ("staff", "visitors 2026"), False))
    assert repo.api_keys() == [ApiKeyRecord("kiosk", h2, ("staff", "visitors 2026"), False), ApiKeyRecord("ops", h1, None, True)]
    with pytest.raises(Conflict):
        repo.add_api_key(ApiKeyRecord("ops", hashlib.sha256(b"3").hexdigest(), None, False))
    with pytest.raises(Conflict):
        repo.add_api_key(ApiKeyRecord("other", h1, None, False))
    for bad in (ApiKeyRecord("x", "not-a-hash", None, False), ApiKeyRecord("x", h1.upper(), None, False),
                ApiKeyRecord("bad/name", hashlib.sha256(b"4").hexdigest(), None, False),
                ApiKeyRecord("x", hashlib.sha256(b"5").hexdigest(), ("a/b",), False)):
        with pytest.raises(FaceveilDataError):
            repo.add_api_key(bad)
    assert repo.revoke_api_key("ops") is True
    assert repo.revoke_api_key("ops") is False
    assert [k.name for k in repo.api_keys()] == ["kiosk"]
    repo.add_api_key(ApiKeyRecord("empty scope", hashlib.sha256(b"6").hexdigest(), (), False))
    assert repo.api_keys()[0] == ApiKeyRecord("empty scope", hashlib.sha256(b"6").hexdigest(), (), False)


# --- audit ------------------------------------------------------------------------------------------
def _schema_columns(backend: Backend) -> dict[str, list[str]]:
    """Every table's columns, read from the database's own catalogue (not through the repository)."""
    if backend.kind == "sqlite":
        con = sqlite3.connect(backend.url[len("sqlite:///"):])
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        out = {t: [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')] for t in tables}
        con.close()
        return out
    import psycopg

    out: dict[str, list[str]] = {}
    with psycopg.connect(backend.url) as con:
        for t, c in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
            out.setdefault(t, []).append(c)
    return out


def test_dump_columns_lists_everything_stored(repo: Repository, backend: Backend) -> None:
    rng = np.random.default_rng(9)
    repo.create_gallery("g")
    recs = [rec(rng, shape=(2, 4)) for _ in range(3)]
    repo.enroll("g", [("ann", recs[:2]), ("bob", recs[2:])])
    key = "fv_secret_key_value_0123456789"
    repo.add_api_key(ApiKeyRecord("ops", hashlib.sha256(key.encode()).hexdigest(), ("g",), True))
    dump = repo.dump_columns()
    assert {t: [c for c, _ in cols] for t, cols in dump.items()} == _schema_columns(backend)
    assert set(dump) == {"schema_version", "meta", "galleries", "subjects", "templates", "api_keys"}
    for t, cols in dump.items():
        assert len({len(v) for _, v in cols}) == 1, t  # whole rows
    rows = {t: len(cols[0][1]) for t, cols in dump.items()}
    assert rows["galleries"] == 1 and rows["subjects"] == 2 and rows["templates"] == 3 and rows["api_keys"] == 1
    stored = [template_array(b) for b in dict(dump["templates"])["template"]]
    assert all(any(np.array_equal(s, r.template) for s in stored) for r in recs)
    # the key itself is nowhere, only its hash
    flat = [v for cols in dump.values() for _, vals in cols for v in vals]
    assert not any(key in v if isinstance(v, str) else key.encode() in v if isinstance(v, bytes) else False for v in flat)
    assert hashlib.sha256(key.encode()).hexdigest() in flat


# --- concurrency and crashes ------------------------------------------------------------------------
def test_concurrent_enrolment_loses_nothing(repo: Repository) -> None:
    repo.create_gallery("g")
    n_threads, n_calls = 6, 12
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        try:
            barrier.wait()
            for i in range(n_calls):
                repo.enroll("g", [(f"t{t}_{i}_a", [rec(rng), rec(rng)]), (f"t{t}_{i}_b", [rec(rng)]),
                                  ("shared", [rec(rng)])])  # every thread also adds to one subject
                if i % 4 == 0:
                    repo.search("g", rng.normal(size=(2, D)), 3)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    subjects = repo.subjects("g")
    assert len(subjects) == 2 * n_threads * n_calls + 1
    assert len(repo.templates("g", "shared")) == n_threads * n_calls
    assert all(len(repo.templates("g", f"t{t}_{i}_a")) == 2 for t in range(n_threads) for i in range(n_calls))
    assert repo.list_galleries() == [GalleryInfo("g", len(subjects), 3 * n_threads * n_calls + n_threads * n_calls)]
    assert_search_exact(repo, "g", "cosine", np.random.default_rng(0).normal(size=(5, D)), 10)


def test_sqlite_sees_writes_of_another_process(tmp_path: Path) -> None:
    """Two repositories on one file (two server processes): each one's search sees the other's writes."""
    from faceveil.service.storage.sqlite import SqliteRepository

    a, b = SqliteRepository(tmp_path / "x.db"), SqliteRepository(tmp_path / "x.db")
    a.migrate(DIGEST, D, "cosine")
    b.migrate(DIGEST, D, "cosine")
    a.create_gallery("g")
    rng = np.random.default_rng(10)
    r = rec(rng)
    a.enroll("g", [("ann", [r])])
    assert b.search("g", r.embedding[None], 1)[0][0].subject == "ann"
    b.delete_subject("g", "ann")
    assert a.search("g", r.embedding[None], 1) == [[]]
    a.close()
    b.close()


CHILD = textwrap.dedent("""
    import sys, zlib
    import numpy as np
    from faceveil.service.storage import Conflict, TemplateRecord, open_repository

    url, run = sys.argv[1], int(sys.argv[2])
    repo = open_repository(url)
    repo.migrate("crash-test", 16, "euclidean")
    try:
        repo.create_gallery("g")
    except Conflict:
        pass

    def records(label, n):
        rng = np.random.default_rng(zlib.crc32(label.encode()))
        return [TemplateRecord(rng.normal(size=(3, 5)), rng.normal(size=16)) for _ in range(n)]

    b = 0
    while True:
        items = []
        for i in range(6):
            n = 1 + (b + i) % 4
            label = f"r{run}_b{b}_s{i}_n{n}"
            items.append((label, records(label, n)))
        repo.enroll("g", items)
        if b == 0:
            print("ready", flush=True)
        b += 1
""")


def test_killed_writer_leaves_only_complete_subjects(backend: Backend, tmp_path: Path) -> None:
    """A process enrolling batches in a loop is SIGKILLed at random moments, five times; reopened, the
    database holds only whole subjects with exactly their templates, and search agrees with the tables."""
    import zlib

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    rnd = random.Random(11)
    for run in range(5):
        p = subprocess.Popen([sys.executable, str(script), backend.url, str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            time.sleep(rnd.uniform(0.05, 0.6))
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read()
    repo = backend.open()
    repo.migrate("crash-test", 16, "euclidean")
    subjects = repo.subjects("g")
    assert {s.split("_")[0] for s in subjects} == {f"r{i}" for i in range(5)}
    for s in subjects:
        n = int(s.rsplit("_n", 1)[1])
        got = repo.templates("g", s)
        assert len(got) == n, s
        rng = np.random.default_rng(zlib.crc32(s.encode()))
        for g in got:
            assert np.array_equal(g.template, rng.normal(size=(3, 5)).astype(np.float32))
            assert np.array_equal(g.embedding, rng.normal(size=16).astype(np.float32))
    # whole batches only: the batches of a run are numbered 0..last with no gap, each with its 6 subjects
    for run in range(5):
        batches = sorted({int(s.split("_")[1][1:]) for s in subjects if s.startswith(f"r{run}_")})
        assert batches == list(range(len(batches)))
        assert sum(s.startswith(f"r{run}_") for s in subjects) == 6 * len(batches)
    assert_search_exact(repo, "g", "euclidean", np.random.default_rng(12).normal(size=(5, 16)), 8)
    repo.close()
    if backend.kind == "sqlite":
        con = sqlite3.connect(backend.url[len("sqlite:///"):])
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        con.close()


def test_pgtest_runs_a_copy_of_an_unreachable_install(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under root, a wheel the server's user cannot reach (a venv under /root) is run from a copy."""
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user (and may need the copy)")
    import psycopg

    from faceveil.service.storage import pgtest

    monkeypatch.setattr(pgtest, "_reachable_by_others", lambda path: False)
    with pgtest.pg_server() as server:
        assert server.root in server.prefix.parents
        with psycopg.connect(server.url(), autocommit=True) as con:
            con.execute("CREATE EXTENSION vector")
            assert con.execute("SELECT '[3,4]'::vector <-> '[0,0]'::vector").fetchone()[0] == 5
    assert not server.root.exists()

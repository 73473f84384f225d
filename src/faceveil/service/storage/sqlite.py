"""The SQLite backend: one database file (WAL journal, foreign keys on, synchronous=FULL) and an exact
in-memory index per gallery for identification.

Every write is one ``BEGIN IMMEDIATE`` transaction; the in-memory index is changed only after the commit,
so a failed write leaves both the file and the index as they were. One connection serves every thread,
behind a lock (writes to one SQLite file are serial anyway; the search arithmetic runs outside the lock
on a snapshot of the index). Another process writing the same file is noticed (``PRAGMA data_version``)
and the index rebuilt from the tables before the next search.

Schema (v1): ``schema_version(version, applied_at)`` (one row per applied migration), ``meta(key, value)``
(the bound system: ``system_digest``, ``dim``, ``metric``), ``galleries(id, name)``,
``subjects(id, gallery_id, label)``, ``templates(id, subject_id, template BLOB .npy, embedding BLOB
float32)``, ``api_keys(name, key_hash, galleries JSON|NULL, admin)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import numpy as np

from faceveil.service.storage.base import (
    SCHEMA_VERSION,
    ApiKeyRecord,
    Conflict,
    GalleryInfo,
    Hit,
    NotFound,
    Repository,
    StorageError,
    TemplateRecord,
    check_name,
    template_array,
)
from faceveil.service.storage.common import check_api_key, check_binding, check_k, check_probes, prepare_items
from faceveil.service.storage.index import GalleryIndex

log = logging.getLogger(__name__)

Binding = tuple[str, int, str]


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Statements one by one (``executescript`` would commit the open transaction first)."""
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _v1(conn: sqlite3.Connection, binding: Binding) -> None:
    nbytes = 4 * int(binding[1])  # float32 embeddings of the bound dimension, like PostgreSQL's vector(D)
    _run_script(conn, f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE galleries (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE subjects (
            id INTEGER PRIMARY KEY,
            gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            label TEXT NOT NULL,
            UNIQUE (gallery_id, label));
        CREATE TABLE templates (
            id INTEGER PRIMARY KEY,
            subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
            template BLOB NOT NULL,
            embedding BLOB NOT NULL CHECK (length(embedding) = {nbytes}));
        CREATE INDEX templates_subject ON templates(subject_id);
        CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            galleries TEXT,
            admin INTEGER NOT NULL CHECK (admin IN (0, 1)));
    """)


#: (version, step) in order; a step runs inside migrate()'s transaction. Add a step to change the schema
#: (and bump base.SCHEMA_VERSION); never edit a released one.
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection, Binding], None]]] = [(1, _v1)]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


class SqliteRepository(Repository):
    """The service's storage in one SQLite file (see the module docstring)."""

    migrations = MIGRATIONS

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._binding: Binding | None = None
        self._indexes: dict[str, tuple[int, GalleryIndex]] = {}  # gallery name -> (gallery id, index)
        self._stale = True
        self._data_version = -1
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the SQLite database {self.path}: {e}") from e
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StorageError(f"{self.path}: cannot use the WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            with self._lock:
                if self._version(conn) >= 1:
                    self._binding = self._read_binding(conn)
                    if self._binding is not None:
                        self.dim, self.metric = self._binding[1], self._binding[2]
                        self._rebuild()
        except sqlite3.Error as e:
            conn.close()
            raise StorageError(f"cannot open the SQLite database {self.path}: {e}") from e
        except BaseException:
            conn.close()
            raise

    # --- plumbing ---------------------------------------------------------------------------------
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("the repository is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE``: the write lock up front); rolled back on any error."""
        with self._lock:
            conn = self._c()
            try:
                conn.execute(f"BEGIN {mode}")
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: cannot begin a transaction: {e}") from e
            try:
                yield conn
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StorageError(f"{self.path}: {e}") from e
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StorageError(f"{self.path}: commit failed: {e}") from e

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone() is None:
            return 0
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])

    @staticmethod
    def _read_binding(conn: sqlite3.Connection) -> Binding | None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "system_digest" not in meta:
            return None
        return meta["system_digest"], int(meta["dim"]), meta["metric"]

    def _bound(self) -> Binding:
        if self._binding is None:
            raise StorageError(f"{self.path}: the database is not set up (call migrate() first)")
        return self._binding

    @staticmethod
    def _gallery_id(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM galleries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no gallery {name!r}")
        return int(row[0])

    @staticmethod
    def _subject_id(conn: sqlite3.Connection, gid: int, gallery: str, label: str) -> int:
        row = conn.execute("SELECT id FROM subjects WHERE gallery_id = ? AND label = ?", (gid, label)).fetchone()
        if row is None:
            raise NotFound(f"no subject {label!r} in gallery {gallery!r}")
        return int(row[0])

    def _rebuild(self) -> None:
        """The in-memory indexes from the tables (one read transaction: a consistent snapshot)."""
        _, dim, metric = self._bound()
        with self._tx("DEFERRED") as conn:
            galleries = conn.execute("SELECT id, name FROM galleries").fetchall()  # starts the snapshot
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            indexes = {name: (gid, GalleryIndex(dim, metric)) for gid, name in galleries}
            by_id = {gid: idx for gid, idx in indexes.values()}
            labels = {gid: {} for gid in by_id}
            for sid, gid, label in conn.execute("SELECT id, gallery_id, label FROM subjects"):
                labels[gid][sid] = label
            rows: dict[int, tuple[list[int], list[bytes]]] = {gid: ([], []) for gid in by_id}
            for sid, gid, emb in conn.execute(
                    "SELECT t.subject_id, s.gallery_id, t.embedding FROM templates t JOIN subjects s ON s.id = t.subject_id "
                    "ORDER BY t.id"):
                rows[gid][0].append(sid)
                rows[gid][1].append(emb)
        for gid, (sids, embs) in rows.items():
            if sids:
                by_id[gid].add(np.array(sids), np.frombuffer(b"".join(embs), np.float32).reshape(-1, dim), labels[gid])
        self._indexes = indexes
        self._data_version = version
        self._stale = False

    def _after_commit(self, update: Callable[[], None]) -> None:
        """Apply a committed write to the in-memory index; if that fails, rebuild it before the next search."""
        try:
            update()
        except Exception:  # the write is committed: the index is rebuilt from the tables, not the caller failed
            log.exception("index update failed; the index will be rebuilt from the database")
            self._stale = True

    # --- lifecycle ----------------------------------------------------------------------------------
    def migrate(self, system_digest: str, dim: int, metric: str) -> None:
        binding = check_binding(system_digest, dim, metric)
        target = self.migrations[-1][0]
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = self._version(conn)
            if current > target:
                raise StorageError(f"{self.path}: schema v{current} is newer than this faceveil's (v{target}); upgrade faceveil")
            if current >= 1:
                bound = self._read_binding(conn)
                if bound is not None and bound != binding:
                    raise Conflict(f"{self.path} serves another system (digest {bound[0]}, dim {bound[1]}, {bound[2]}), "
                                   f"not {binding[0]} (dim {binding[1]}, {binding[2]})")
            for version, step in self.migrations:
                if version > current:
                    step(conn, binding)
                    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                                 (version, datetime.now(UTC).isoformat(timespec="seconds")))
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                             [("system_digest", binding[0]), ("dim", str(binding[1])), ("metric", binding[2])])
        with self._lock:
            self._binding = binding
            self.dim, self.metric = binding[1], binding[2]
            self._rebuild()

    def schema_version(self) -> int:
        with self._lock:
            return self._version(self._c())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._indexes = {}

    # --- galleries ----------------------------------------------------------------------------------
    def create_gallery(self, name: str) -> None:
        check_name(name, "gallery name")
        _, dim, metric = self._bound()
        with self._lock:
            with self._tx() as conn:
                if conn.execute("SELECT 1 FROM galleries WHERE name = ?", (name,)).fetchone():
                    raise Conflict(f"gallery {name!r} exists")
                gid = conn.execute("INSERT INTO galleries (name) VALUES (?)", (name,)).lastrowid
            self._after_commit(lambda: self._indexes.__setitem__(name, (gid, GalleryIndex(dim, metric))))

    def list_galleries(self) -> list[GalleryInfo]:
        self._bound()
        with self._lock:
            rows = self._c().execute("""
                SELECT g.name, count(DISTINCT s.id), count(t.id) FROM galleries g
                LEFT JOIN subjects s ON s.gallery_id = g.id LEFT JOIN templates t ON t.subject_id = s.id
                GROUP BY g.id ORDER BY g.name""").fetchall()
        return [GalleryInfo(n, int(s), int(t)) for n, s, t in rows]

    def delete_gallery(self, name: str) -> int:
        check_name(name, "gallery name")
        self._bound()
        with self._lock:
            with self._tx() as conn:
                gid = self._gallery_id(conn, name)
                n = conn.execute("SELECT count(*) FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.gallery_id = ?",
                                 (gid,)).fetchone()[0]
                conn.execute("DELETE FROM galleries WHERE id = ?", (gid,))
            self._after_commit(lambda: self._indexes.pop(name, None))
        return int(n)

    # --- subjects -----------------------------------------------------------------------------------
    def enroll(self, gallery: str, items: Sequence[tuple[str, Sequence[TemplateRecord]]]) -> list[int]:
        check_name(gallery, "gallery name")
        _, dim, metric = self._bound()
        prepared = prepare_items(items, dim, metric)
        with self._lock:
            with self._tx() as conn:
                gid = self._gallery_id(conn, gallery)
                sids, new_sids, new_emb, labels = [], [], [], {}
                for label, recs in prepared:
                    conn.execute("INSERT INTO subjects (gallery_id, label) VALUES (?, ?) ON CONFLICT (gallery_id, label) DO NOTHING",
                                 (gid, label))
                    sid = self._subject_id(conn, gid, gallery, label)
                    conn.executemany("INSERT INTO templates (subject_id, template, embedding) VALUES (?, ?, ?)",
                                     [(sid, tb, e.tobytes()) for tb, e in recs])
                    sids.append(sid)
                    labels[sid] = label
                    new_sids += [sid] * len(recs)
                    new_emb += [e for _, e in recs]
                counts = [int(conn.execute("SELECT count(*) FROM templates WHERE subject_id = ?", (s,)).fetchone()[0]) for s in sids]

            def update() -> None:
                entry = self._indexes.get(gallery)
                if entry is None or entry[0] != gid:
                    raise RuntimeError(f"no index for gallery {gallery!r}")
                entry[1].add(np.array(new_sids), np.stack(new_emb), labels)

            self._after_commit(update)
        return counts

    def subjects(self, gallery: str) -> list[str]:
        check_name(gallery, "gallery name")
        self._bound()
        with self._lock:
            conn = self._c()
            gid = self._gallery_id(conn, gallery)
            return [r[0] for r in conn.execute("SELECT label FROM subjects WHERE gallery_id = ? ORDER BY label", (gid,))]

    def templates(self, gallery: str, subject: str) -> list[TemplateRecord]:
        check_name(gallery, "gallery name")
        check_name(subject, "subject")
        self._bound()
        with self._tx("DEFERRED") as conn:
            sid = self._subject_id(conn, self._gallery_id(conn, gallery), gallery, subject)
            rows = conn.execute("SELECT template, embedding FROM templates WHERE subject_id = ? ORDER BY id", (sid,)).fetchall()
        return [TemplateRecord(template_array(t), np.frombuffer(e, np.float32).copy()) for t, e in rows]

    def delete_subject(self, gallery: str, subject: str) -> int:
        check_name(gallery, "gallery name")
        check_name(subject, "subject")
        self._bound()
        with self._lock:
            with self._tx() as conn:
                gid = self._gallery_id(conn, gallery)
                sid = self._subject_id(conn, gid, gallery, subject)
                n = conn.execute("SELECT count(*) FROM templates WHERE subject_id = ?", (sid,)).fetchone()[0]
                conn.execute("DELETE FROM subjects WHERE id = ?", (sid,))

            def update() -> None:
                entry = self._indexes.get(gallery)
                if entry is None or entry[0] != gid:
                    raise RuntimeError(f"no index for gallery {gallery!r}")
                entry[1].remove(sid)

            self._after_commit(update)
        return int(n)

    # --- identification -----------------------------------------------------------------------------
    def search(self, gallery: str, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        check_name(gallery, "gallery name")
        _, dim, metric = self._bound()
        probes = check_probes(embeddings, dim, metric)
        k = check_k(k)
        with self._lock:
            version = int(self._c().execute("PRAGMA data_version").fetchone()[0])
            if self._stale or version != self._data_version:
                self._rebuild()
            entry = self._indexes.get(gallery)
            if entry is None:
                raise NotFound(f"no gallery {gallery!r}")
            snap = entry[1].snapshot()
        return snap.search(probes, k)

    # --- API keys -----------------------------------------------------------------------------------
    def add_api_key(self, record: ApiKeyRecord) -> None:
        r = check_api_key(record)
        self._bound()
        galleries = None if r.galleries is None else json.dumps(list(r.galleries))
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM api_keys WHERE name = ? OR key_hash = ?", (r.name, r.key_hash)).fetchone():
                raise Conflict(f"an API key named {r.name!r} or with the same hash exists")
            conn.execute("INSERT INTO api_keys (name, key_hash, galleries, admin) VALUES (?, ?, ?, ?)",
                         (r.name, r.key_hash, galleries, int(r.admin)))

    def api_keys(self) -> list[ApiKeyRecord]:
        self._bound()
        with self._lock:
            rows = self._c().execute("SELECT name, key_hash, galleries, admin FROM api_keys ORDER BY name").fetchall()
        return [ApiKeyRecord(n, h, None if g is None else tuple(json.loads(g)), bool(a)) for n, h, g, a in rows]

    def revoke_api_key(self, name: str) -> bool:
        check_name(name, "API key name")
        self._bound()
        with self._tx() as conn:
            return conn.execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount > 0

    # --- audit --------------------------------------------------------------------------------------
    def dump_columns(self) -> dict[str, list[tuple[str, list]]]:
        out: dict[str, list[tuple[str, list]]] = {}
        with self._tx("DEFERRED") as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            for t in tables:
                cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
                rows = conn.execute(f'SELECT * FROM "{t}"').fetchall()
                out[t] = [(c, [row[i] for row in rows]) for i, c in enumerate(cols)]
        return out


__all__ = ["MIGRATIONS", "SqliteRepository"]

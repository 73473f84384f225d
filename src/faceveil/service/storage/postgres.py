"""The PostgreSQL backend (psycopg 3, a connection pool, and the pgvector extension).

Templates are ``bytea`` (``.npy``), embeddings a ``vector(D)`` column. Each gallery has its own partial
HNSW index (``... USING hnsw (embedding vector_cosine_ops | vector_l2_ops) WHERE gallery_id = G``, made
with the gallery, dropped with it): pgvector 0.6 filters an index scan *after* it, so one index over all
galleries would return too few rows of a small gallery; a partial index searches the gallery's rows only.

Search: a gallery with fewer than ``exact_below`` templates is searched exactly (sequential scan and
top-N sort); a larger one through its HNSW index with ``hnsw.ef_search`` at least ``ef_search`` and at
least the candidate count. ``ef_search`` is 400 by default: on 100,000 synthetic 128-D templates
(``bench/storage_search.py``) 100 found the exact nearest subject of 95% of genuine probes, 400 of all of
them, at a p99 of about 27 ms on two busy cores (pgvector's own default, 40: 75%).

The candidates (``LIMIT c`` nearest templates) are reduced to subjects (a subject at its best template);
when they hold fewer than ``k`` distinct subjects the search is redone with 4x the candidates (past
pgvector's ef_search limit of 1000, exactly), so ``k`` subjects come back whenever the gallery has ``k``.

Every write is one transaction of one pooled connection (the pool commits on success and rolls back on
any error): a batch of subjects is stored all or none. Schema migrations are versioned like the SQLite
backend's and run under a transaction-level advisory lock, so two servers starting at once migrate once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
from faceveil.service.storage.common import best_per_subject, check_api_key, check_binding, check_k, check_probes, prepare_items

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as _e:  # pragma: no cover - the optional extra
    raise ImportError("the PostgreSQL backend needs psycopg 3 and psycopg-pool: pip install 'faceveil[service]'") from _e

Binding = tuple[str, int, str]
OPCLASS = {"cosine": "vector_cosine_ops", "euclidean": "vector_l2_ops"}
OPERATOR = {"cosine": "<=>", "euclidean": "<->"}
MIGRATE_LOCK = 0x66616365  # pg_advisory_xact_lock key of migrate()
EF_SEARCH_MAX = 1000  # pgvector's limit of hnsw.ef_search


def _v1(cur: psycopg.Cursor, binding: Binding) -> None:
    dim = int(binding[1])
    for stmt in [
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
        "CREATE TABLE galleries (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE)",
        """CREATE TABLE subjects (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            gallery_id bigint NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            label text NOT NULL,
            UNIQUE (gallery_id, label),
            UNIQUE (id, gallery_id))""",
        f"""CREATE TABLE templates (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            subject_id bigint NOT NULL,
            gallery_id bigint NOT NULL,
            template bytea NOT NULL,
            embedding vector({dim}) NOT NULL,
            FOREIGN KEY (subject_id, gallery_id) REFERENCES subjects(id, gallery_id) ON DELETE CASCADE)""",
        "CREATE INDEX templates_subject ON templates (subject_id)",
        "CREATE INDEX templates_gallery ON templates (gallery_id)",
        """CREATE TABLE api_keys (
            name text PRIMARY KEY,
            key_hash text NOT NULL UNIQUE,
            galleries jsonb,
            admin boolean NOT NULL)""",
    ]:
        cur.execute(stmt)


#: (version, step) in order; a step runs inside migrate()'s transaction. Add a step to change the schema
#: (and bump base.SCHEMA_VERSION); never edit a released one.
MIGRATIONS: list[tuple[int, Callable[[Any, Binding], None]]] = [(1, _v1)]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def vector_text(e: np.ndarray) -> str:
    """pgvector's text form of a float32 vector (every value exact: shortest float64 repr of each float32)."""
    return "[" + ",".join(map(repr, np.asarray(e, np.float32).astype(np.float64).tolist())) + "]"


class PostgresRepository(Repository):
    """The service's storage in PostgreSQL with pgvector (see the module docstring)."""

    migrations = MIGRATIONS

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 30.0, exact_below: int = 5000,
                 ef_search: int = 400, hnsw_m: int = 16, ef_construction: int = 64) -> None:
        self.url = url
        self.exact_below, self.ef_search = int(exact_below), int(ef_search)
        self.hnsw_m, self.ef_construction = int(hnsw_m), int(ef_construction)
        self._binding: Binding | None = None
        try:
            self._pool: ConnectionPool | None = ConnectionPool(
                url, min_size=1, max_size=max(1, pool_size), timeout=timeout, open=True,
                # no server-side prepared statements: a generic plan could not pick a gallery's partial index;
                # check a connection before lending it (a restarted server leaves broken ones in the pool)
                kwargs={"prepare_threshold": None, "autocommit": False}, check=ConnectionPool.check_connection,
                name="faceveil")
            self._pool.wait(timeout=timeout)
        except (psycopg.Error, PoolTimeout) as e:
            with contextlib.suppress(Exception):
                self._pool.close()
            raise StorageError(f"cannot connect to PostgreSQL ({self._safe_url()}): {e}") from e
        try:
            with self._tx() as cur:
                if self._version(cur) >= 1:
                    self._binding = self._read_binding(cur)
        except BaseException:
            self.close()
            raise
        if self._binding is not None:
            self.dim, self.metric = self._binding[1], self._binding[2]

    # --- plumbing ---------------------------------------------------------------------------------
    def _safe_url(self) -> str:
        """The URL without a password."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return "?"
        info.pop("password", None)
        return psycopg.conninfo.make_conninfo(**info)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor]:
        """One transaction on a pooled connection: committed on success, rolled back on any error."""
        if self._pool is None:
            raise StorageError("the repository is closed")
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except psycopg.errors.UniqueViolation as e:
            raise Conflict(f"already stored: {e.diag.message_detail or e}") from e
        except psycopg.errors.ForeignKeyViolation as e:
            raise NotFound(f"the gallery or subject was removed meanwhile: {e.diag.message_detail or e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            raise StorageError(f"PostgreSQL: {e}") from e

    @staticmethod
    def _version(cur: psycopg.Cursor) -> int:
        if cur.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        return int(cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])

    @staticmethod
    def _read_binding(cur: psycopg.Cursor) -> Binding | None:
        meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
        if "system_digest" not in meta:
            return None
        return meta["system_digest"], int(meta["dim"]), meta["metric"]

    def _bound(self) -> Binding:
        if self._binding is None:
            raise StorageError("the PostgreSQL database is not set up (call migrate() first)")
        return self._binding

    @staticmethod
    def _gallery_id(cur: psycopg.Cursor, name: str, lock: bool = False) -> int:
        row = cur.execute("SELECT id FROM galleries WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,)).fetchone()
        if row is None:
            raise NotFound(f"no gallery {name!r}")
        return int(row[0])

    @staticmethod
    def _subject_id(cur: psycopg.Cursor, gid: int, gallery: str, label: str) -> int:
        row = cur.execute("SELECT id FROM subjects WHERE gallery_id = %s AND label = %s", (gid, label)).fetchone()
        if row is None:
            raise NotFound(f"no subject {label!r} in gallery {gallery!r}")
        return int(row[0])

    @staticmethod
    def _hnsw_name(gid: int) -> sql.Identifier:
        return sql.Identifier(f"templates_hnsw_g{int(gid)}")

    # --- lifecycle ----------------------------------------------------------------------------------
    def migrate(self, system_digest: str, dim: int, metric: str) -> None:
        binding = check_binding(system_digest, dim, metric)
        target = self.migrations[-1][0]
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as e:
                raise StorageError(f"PostgreSQL has no usable pgvector extension (CREATE EXTENSION vector): {e}") from e
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                        "applied_at timestamptz NOT NULL DEFAULT now())")
            current = self._version(cur)
            if current > target:
                raise StorageError(f"the database schema v{current} is newer than this faceveil's (v{target}); upgrade faceveil")
            if current >= 1:
                bound = self._read_binding(cur)
                if bound is not None and bound != binding:
                    raise Conflict(f"the database serves another system (digest {bound[0]}, dim {bound[1]}, {bound[2]}), "
                                   f"not {binding[0]} (dim {binding[1]}, {binding[2]})")
            for version, step in self.migrations:
                if version > current:
                    step(cur, binding)
                    cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            cur.executemany("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                            [("system_digest", binding[0]), ("dim", str(binding[1])), ("metric", binding[2])])
        self._binding = binding
        self.dim, self.metric = binding[1], binding[2]

    def schema_version(self) -> int:
        with self._tx() as cur:
            return self._version(cur)

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    # --- galleries ----------------------------------------------------------------------------------
    def create_gallery(self, name: str) -> None:
        check_name(name, "gallery name")
        _, _, metric = self._bound()
        with self._tx() as cur:
            row = cur.execute("INSERT INTO galleries (name) VALUES (%s) ON CONFLICT (name) DO NOTHING RETURNING id",
                              (name,)).fetchone()
            if row is None:
                raise Conflict(f"gallery {name!r} exists")
            cur.execute(sql.SQL("CREATE INDEX {} ON templates USING hnsw (embedding {}) WITH (m = {}, ef_construction = {}) "
                                "WHERE gallery_id = {}").format(
                self._hnsw_name(row[0]), sql.SQL(OPCLASS[metric]), sql.Literal(self.hnsw_m),
                sql.Literal(self.ef_construction), sql.Literal(int(row[0]))))

    def list_galleries(self) -> list[GalleryInfo]:
        self._bound()
        with self._tx() as cur:
            rows = cur.execute("""
                SELECT g.name,
                       (SELECT count(*) FROM subjects s WHERE s.gallery_id = g.id),
                       (SELECT count(*) FROM templates t WHERE t.gallery_id = g.id)
                FROM galleries g ORDER BY g.name COLLATE "C" """).fetchall()
        return [GalleryInfo(n, int(s), int(t)) for n, s, t in rows]

    def delete_gallery(self, name: str) -> int:
        check_name(name, "gallery name")
        self._bound()
        with self._tx() as cur:
            gid = self._gallery_id(cur, name, lock=True)
            n = cur.execute("SELECT count(*) FROM templates WHERE gallery_id = %s", (gid,)).fetchone()[0]
            cur.execute("DELETE FROM galleries WHERE id = %s", (gid,))
            cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._hnsw_name(gid)))
        return int(n)

    # --- subjects -----------------------------------------------------------------------------------
    def enroll(self, gallery: str, items: Sequence[tuple[str, Sequence[TemplateRecord]]]) -> list[int]:
        check_name(gallery, "gallery name")
        _, dim, metric = self._bound()
        prepared = prepare_items(items, dim, metric)
        labels = sorted({label for label, _ in prepared})  # one order for every writer: no deadlock between batches
        with self._tx() as cur:
            gid = self._gallery_id(cur, gallery)
            cur.execute("INSERT INTO subjects (gallery_id, label) SELECT %s, unnest(%s::text[]) "
                        "ON CONFLICT (gallery_id, label) DO NOTHING", (gid, labels))
            ids = dict(cur.execute("SELECT label, id FROM subjects WHERE gallery_id = %s AND label = ANY(%s)",
                                   (gid, labels)).fetchall())
            with cur.copy("COPY templates (subject_id, gallery_id, template, embedding) FROM STDIN") as copy:
                for label, recs in prepared:
                    for tb, e in recs:
                        copy.write_row((ids[label], gid, tb, vector_text(e)))
            sids = [int(ids[label]) for label, _ in prepared]
            counts = dict(cur.execute("SELECT subject_id, count(*) FROM templates WHERE subject_id = ANY(%s) GROUP BY subject_id",
                                      (sids,)).fetchall())
        return [int(counts[s]) for s in sids]

    def subjects(self, gallery: str) -> list[str]:
        check_name(gallery, "gallery name")
        self._bound()
        with self._tx() as cur:
            gid = self._gallery_id(cur, gallery)
            return [r[0] for r in cur.execute('SELECT label FROM subjects WHERE gallery_id = %s ORDER BY label COLLATE "C"', (gid,))]

    def templates(self, gallery: str, subject: str) -> list[TemplateRecord]:
        check_name(gallery, "gallery name")
        check_name(subject, "subject")
        self._bound()
        with self._tx() as cur:
            sid = self._subject_id(cur, self._gallery_id(cur, gallery), gallery, subject)
            rows = cur.execute("SELECT template, embedding::real[] FROM templates WHERE subject_id = %s ORDER BY id", (sid,)).fetchall()
        return [TemplateRecord(template_array(bytes(t)), np.array(e, np.float32)) for t, e in rows]

    def delete_subject(self, gallery: str, subject: str) -> int:
        check_name(gallery, "gallery name")
        check_name(subject, "subject")
        self._bound()
        with self._tx() as cur:
            gid = self._gallery_id(cur, gallery)
            row = cur.execute("SELECT id FROM subjects WHERE gallery_id = %s AND label = %s FOR UPDATE", (gid, subject)).fetchone()
            if row is None:
                raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
            n = cur.execute("SELECT count(*) FROM templates WHERE subject_id = %s", (row[0],)).fetchone()[0]
            cur.execute("DELETE FROM subjects WHERE id = %s", (row[0],))  # its templates go with it (ON DELETE CASCADE)
        return int(n)

    # --- identification -----------------------------------------------------------------------------
    def search(self, gallery: str, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        check_name(gallery, "gallery name")
        _, dim, metric = self._bound()
        probes = check_probes(embeddings, dim, metric)
        k = check_k(k)
        with self._tx() as cur:
            gid = self._gallery_id(cur, gallery)
            n = cur.execute("SELECT count(*) FROM (SELECT 1 FROM templates WHERE gallery_id = %s LIMIT %s) t",
                            (gid, max(1, self.exact_below))).fetchone()[0]
            if n == 0:
                return [[] for _ in probes]
            exact_gallery = n < self.exact_below
            query = self._search_sql(gid, metric)
            return [self._search_one(cur, query, vector_text(q), k, exact_gallery) for q in probes]

    @staticmethod
    def _search_sql(gid: int, metric: str) -> sql.Composed:
        op = sql.SQL(OPERATOR[metric])
        return sql.SQL("SELECT s.label, c.d FROM (SELECT subject_id, embedding {op} %(q)s::vector AS d FROM templates "
                       "WHERE gallery_id = {gid} ORDER BY embedding {op} %(q)s::vector LIMIT %(c)s) c "
                       "JOIN subjects s ON s.id = c.subject_id ORDER BY c.d").format(op=op, gid=sql.Literal(int(gid)))

    def _plan(self, cur: psycopg.Cursor, exact: bool, c: int) -> None:
        """Planner settings of this transaction: exact (no index scan) or the HNSW index with ef_search >= c."""
        if exact:
            cur.execute("SELECT set_config('enable_indexscan', 'off', true), set_config('enable_seqscan', 'on', true)")
        else:
            ef = str(min(EF_SEARCH_MAX, max(self.ef_search, c)))
            cur.execute("SELECT set_config('enable_indexscan', 'on', true), set_config('enable_seqscan', 'off', true), "
                        "set_config('enable_bitmapscan', 'off', true), set_config('hnsw.ef_search', %s, true)", (ef,))

    def _search_one(self, cur: psycopg.Cursor, query: sql.Composed, q: str, k: int, exact: bool) -> list[Hit]:
        c = max(4 * k, 32)
        while True:
            if not exact and c > EF_SEARCH_MAX:
                exact = True
            self._plan(cur, exact, c)
            rows = cur.execute(query, {"q": q, "c": c}).fetchall()
            hits = best_per_subject([r[0] for r in rows], [r[1] for r in rows], k)
            if len(hits) >= k or (exact and len(rows) < c):
                return hits
            if not exact and len(rows) < c:  # the graph gave fewer rows than asked: redo it exactly
                exact = True
            else:
                c *= 4

    def explain_search(self, gallery: str, embedding: np.ndarray, k: int) -> str:
        """The query plan of one probe's search (which index it uses: for tests and the benchmark)."""
        _, dim, metric = self._bound()
        q = vector_text(check_probes(embedding, dim, metric)[0])
        with self._tx() as cur:
            gid = self._gallery_id(cur, gallery)
            n = cur.execute("SELECT count(*) FROM (SELECT 1 FROM templates WHERE gallery_id = %s LIMIT %s) t",
                            (gid, max(1, self.exact_below))).fetchone()[0]
            c = max(4 * k, 32)
            self._plan(cur, n < self.exact_below, c)
            rows = cur.execute(sql.SQL("EXPLAIN ") + self._search_sql(gid, metric), {"q": q, "c": c}).fetchall()
        return "\n".join(r[0] for r in rows)

    # --- API keys -----------------------------------------------------------------------------------
    def add_api_key(self, record: ApiKeyRecord) -> None:
        r = check_api_key(record)
        self._bound()
        with self._tx() as cur:
            row = cur.execute("INSERT INTO api_keys (name, key_hash, galleries, admin) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT DO NOTHING RETURNING name",
                              (r.name, r.key_hash, None if r.galleries is None else Jsonb(list(r.galleries)), r.admin)).fetchone()
            if row is None:
                raise Conflict(f"an API key named {r.name!r} or with the same hash exists")

    def api_keys(self) -> list[ApiKeyRecord]:
        self._bound()
        with self._tx() as cur:
            rows = cur.execute('SELECT name, key_hash, galleries, admin FROM api_keys ORDER BY name COLLATE "C"').fetchall()
        return [ApiKeyRecord(n, h, None if g is None else tuple(g), bool(a)) for n, h, g, a in rows]

    def revoke_api_key(self, name: str) -> bool:
        check_name(name, "API key name")
        self._bound()
        with self._tx() as cur:
            return cur.execute("DELETE FROM api_keys WHERE name = %s", (name,)).rowcount > 0

    # --- audit --------------------------------------------------------------------------------------
    def dump_columns(self) -> dict[str, list[tuple[str, list]]]:
        out: dict[str, list[tuple[str, list]]] = {}
        with self._tx() as cur:
            cols: dict[str, list[str]] = {}
            for t, c in cur.execute("SELECT table_name, column_name FROM information_schema.columns "
                                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"):
                cols.setdefault(t, []).append(c)
            for t, cs in cols.items():
                rows = cur.execute(sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in cs), sql.Identifier(t))).fetchall()
                out[t] = [(c, [_plain(row[i]) for row in rows]) for i, c in enumerate(cs)]
        return out


def _plain(v: Any) -> Any:
    """A stored value as plain Python (bytea as bytes, jsonb as its JSON text)."""
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


__all__ = ["MIGRATIONS", "PostgresRepository", "vector_text"]

"""Fixtures of the service tests: a throwaway PostgreSQL+pgvector server for the session, a database each."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL (with pgvector) superuser database: ``$FACEVEIL_TEST_PG_URL``, or a throwaway
    server started for the session (:mod:`faceveil.service.storage.pgtest`). Skips the test, with the
    reason, when no server can be had; fails instead when ``$FACEVEIL_REQUIRE_PG`` is set (CI)."""
    url = os.environ.get("FACEVEIL_TEST_PG_URL")
    if url:
        yield url
        return
    from faceveil.service.storage.pgtest import NoServer, pg_server

    try:
        import psycopg  # noqa: F401  (the backend's driver: the `service` extra)
        import psycopg_pool  # noqa: F401

        cm = pg_server()
        server = cm.__enter__()
    except (NoServer, ImportError) as e:
        msg = f"no PostgreSQL with pgvector could be started: {e}"
        if os.environ.get("FACEVEIL_REQUIRE_PG") not in (None, "", "0"):
            pytest.fail(msg + " (FACEVEIL_REQUIRE_PG is set)")
        pytest.skip(msg)
    try:
        yield server.url()
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh empty database on the test server (dropped afterwards)."""
    from faceveil.service.storage.pgtest import create_database, drop_database

    url = create_database(pg_admin_url)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, url)

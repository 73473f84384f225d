"""The API fuzzed from its own OpenAPI schema (schemathesis, bounded): no request makes the server fail
(5xx), every error is JSON, and the server keeps serving."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from faceveil.service.app import ServiceSettings, create_app
from faceveil.service.security import new_key
from faceveil.service.storage import open_repository
from faceveil.system.core import defense_digest


@pytest.fixture(scope="module")
def fuzzed(fo_bundle, tmp_path_factory):
    system, _ = fo_bundle
    repo = open_repository(f"sqlite:///{tmp_path_factory.mktemp('fuzzdb') / 'fuzz.db'}")
    repo.migrate(defense_digest(system.defense), system.defense.recognizer.embedding_dim, system.metric)
    key = new_key(repo, "admin", None, admin=True)
    app = create_app(system, repo, ServiceSettings(accept_photos=True, rate=0, max_request_bytes=1 << 20))
    client = TestClient(app, raise_server_exceptions=False)
    client.post("/v1/galleries", json={"name": "g"}, headers={"X-API-Key": key})
    return app, {"X-API-Key": key}


def test_no_request_fails_the_server(fuzzed):
    """Cases drawn from every operation of the schema (schemathesis strategies; its pytest plugin does not
    run under pytest 9), bounded to a few hundred requests."""
    from hypothesis import given
    from hypothesis import strategies as st

    app, headers = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 15

    @given(case=st.one_of(*[op.as_strategy() for op in ops]))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        r = case.call(headers=headers)
        assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert "error" in r.json(), r.text[:300]

    check()
    assert TestClient(app).get("/v1/health").json() == {"status": "ok"}

"""The HTTP API in process (FastAPI's test client) on a real FaceObfuscator system and a real SQLite
database: every bad input is a 4xx JSON error naming the problem, nothing is stored by a failed request,
keys are scoped and rate-limited, and the OpenAPI schema survives a bounded fuzz."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from faceveil.keys import Randomness
from faceveil.service.app import ServiceSettings, create_app
from faceveil.service.security import hash_key, new_key
from faceveil.service.storage import open_repository
from faceveil.system import Payload, ProtectedSystem
from faceveil.system.core import defense_digest


@pytest.fixture(scope="module")
def service(fo_bundle, tmp_path_factory):
    system, _ = fo_bundle
    repo = open_repository(f"sqlite:///{tmp_path_factory.mktemp('db') / 'svc.db'}")
    repo.migrate(defense_digest(system.defense), system.defense.recognizer.embedding_dim, system.metric)
    admin = new_key(repo, "admin", None, admin=True)
    user = new_key(repo, "staff-only", ("staff",))
    app = create_app(system, repo, ServiceSettings(accept_photos=True, rate=0, max_request_bytes=4 << 20))
    client = TestClient(app, raise_server_exceptions=False)
    h = {"Authorization": f"Bearer {admin}"}
    assert client.post("/v1/galleries", json={"name": "staff"}, headers=h).status_code == 201
    assert client.post("/v1/galleries", json={"name": "other"}, headers=h).status_code == 201
    return {"system": system, "repo": repo, "client": client, "admin": h, "user": {"X-API-Key": user}, "user_key": user,
            "admin_key": admin}


def _photo(lfw, i: int) -> bytes:
    return (lfw.root / lfw.dataset().files[i]).read_bytes()


def _payload(system: ProtectedSystem, faces, seed: int | None = None) -> str:
    c = system.client(Randomness.research(seed) if seed is not None else None)
    return base64.b64encode(c.protect(faces).to_bytes()).decode()


def _templates(repo) -> int:
    return sum(g.templates for g in repo.list_galleries())


def test_enrol_verify_identify_and_erase(service, lfw):
    c, h, system = service["client"], service["admin"], service["system"]
    ds = lfw.dataset()
    people = {}
    for i, f in enumerate(ds.files):
        people.setdefault(f.split("/")[0], []).append(i)
    names = [n for n, idx in sorted(people.items()) if len(idx) >= 2][:6]
    for n in names:
        r = c.post(f"/v1/galleries/staff/subjects/{n}/enroll", json={"payload": _payload(system, str(lfw.root / ds.files[people[n][0]]))},
                   headers=h)
        assert r.status_code == 200 and r.json() == {"subject": n, "templates": 1}
    assert sorted(c.get("/v1/galleries/staff/subjects", headers=h).json()) == names
    probe = str(lfw.root / ds.files[people[names[0]][1]])
    d = c.post(f"/v1/galleries/staff/subjects/{names[0]}/verify", json={"payload": _payload(system, probe)}, headers=h).json()
    assert set(d) == {"accepted", "distance", "threshold", "metric"} and d["metric"] == "cosine"
    rows = c.post("/v1/galleries/staff/identify", json={"payload": _payload(system, probe), "k": 3}, headers=h).json()
    assert len(rows) == 1 and len(rows[0]) == 3 and rows[0][0]["distance"] <= rows[0][1]["distance"]
    # a photo through the trusted path gives the same kind of answer
    r = c.post(f"/v1/galleries/staff/subjects/{names[0]}/verify/photo", files={"photo": ("p.jpg", Path(probe).read_bytes())}, headers=h)
    assert r.status_code == 200 and "accepted" in r.json()
    assert c.delete(f"/v1/galleries/staff/subjects/{names[0]}", headers=h).json() == {"removed_templates": 1}
    assert names[0] not in c.get("/v1/galleries/staff/subjects", headers=h).json()
    r = c.post(f"/v1/galleries/staff/subjects/{names[0]}/verify", json={"payload": _payload(system, probe)}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"


def test_batch_enrolment_is_all_or_nothing(service, lfw):
    c, h, system, repo = service["client"], service["admin"], service["system"], service["repo"]
    good = _payload(system, str(lfw.root / lfw.dataset().files[10]))
    before = _templates(repo)
    bad_items = [{"subject": "b1", "payload": good}, {"subject": "b2", "payload": "!!notbase64"}]
    r = c.post("/v1/galleries/staff/enroll-batch", json={"items": bad_items}, headers=h)
    assert r.status_code == 422 and "base64" in r.json()["error"]["message"]
    assert _templates(repo) == before and "b1" not in c.get("/v1/galleries/staff/subjects", headers=h).json()
    r = c.post("/v1/galleries/staff/enroll-batch", json={"items": [{"subject": "b1", "payload": good},
                                                                   {"subject": "b2", "payload": good}]}, headers=h)
    assert r.status_code == 200 and [x["subject"] for x in r.json()] == ["b1", "b2"]
    assert _templates(repo) == before + 2


BAD_PHOTOS = {
    "empty": (b"", "empty upload"),
    "text": (b"hello, not an image", "not an image"),
    "truncated": (None, "corrupt or truncated"),
    "no face": (None, "no face found"),
    "too many pixels": (None, "pixel limit"),
}


def _bad_photo(kind: str, lfw) -> bytes:
    blob, _ = BAD_PHOTOS[kind]
    if blob is not None:
        return blob
    if kind == "truncated":
        b = _photo(lfw, 0)
        return b[: len(b) // 3]
    buf = io.BytesIO()
    size = (96, 96) if kind == "no face" else (6000, 5000)
    Image.new("RGB", size, (120, 120, 120)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(BAD_PHOTOS))
def test_bad_photos_are_named_and_store_nothing(service, lfw, kind):
    c, h, repo = service["client"], service["admin"], service["repo"]
    before = _templates(repo)
    r = c.post("/v1/galleries/staff/subjects/x/enroll/photo", files={"photo": ("p.png", _bad_photo(kind, lfw))}, headers=h)
    assert r.status_code == 422, r.text
    assert BAD_PHOTOS[kind][1] in r.json()["error"]["message"]
    assert _templates(repo) == before
    assert c.get("/v1/health").json() == {"status": "ok"}  # still serving


def test_bad_payloads_are_named(service, lfw):
    c, h, system, repo = service["client"], service["admin"], service["system"], service["repo"]
    p = system.client().protect(str(lfw.root / lfw.dataset().files[0]))
    before = _templates(repo)

    def send(payload: Payload | bytes | str):
        b64 = payload if isinstance(payload, str) else base64.b64encode(
            payload if isinstance(payload, bytes) else payload.to_bytes()).decode()
        return c.post("/v1/galleries/staff/subjects/y/enroll", json={"payload": b64}, headers=h)

    cases = [
        (Payload(p.defense, p.digest, p.data[:, :1]), "expected shape"),
        (Payload(p.defense, p.digest, torch.full_like(p.data, float("nan"))), "NaN"),
        (Payload(p.defense, "0" * 16, p.data), "payload made for defense"),
        (b"garbage bytes", "not a faceveil payload"),
        ("***", "base64"),
    ]
    buf = io.BytesIO()
    np.savez(buf, data=p.data.double().numpy(), head=np.array(json.dumps({"format": Payload.FORMAT, "defense": p.defense,
                                                                           "digest": p.digest})))
    cases.append((buf.getvalue(), "float32"))
    for payload, msg in cases:
        r = send(payload)
        assert r.status_code == 422 and msg in r.json()["error"]["message"], (msg, r.text)
    assert _templates(repo) == before
    r = c.post("/v1/galleries/staff/subjects/y/enroll", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ValidationError"
    r = c.post("/v1/galleries/nope/subjects/y/enroll", json={"payload": base64.b64encode(p.to_bytes()).decode()}, headers=h)
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = c.post("/v1/galleries/staff/identify", json={"payload": base64.b64encode(p.to_bytes()).decode(), "k": 0}, headers=h)
    assert r.status_code == 422 and "k must be" in r.json()["error"]["message"]
    r = c.post("/v1/galleries/staff/subjects/y/enroll", content=b"x" * (5 << 20), headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "PayloadTooLarge"


def test_keys_are_required_scoped_hashed_and_rate_limited(service, fo_bundle):
    c, repo = service["client"], service["repo"]
    assert c.get("/v1/galleries").status_code == 401
    r = c.get("/v1/galleries", headers={"Authorization": "Bearer fv_wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    u = service["user"]
    assert [g["name"] for g in c.get("/v1/galleries", headers=u).json()] == ["staff"]
    assert c.get("/v1/galleries/other/subjects", headers=u).status_code == 403
    assert c.post("/v1/galleries", json={"name": "mine"}, headers=u).status_code == 403
    stored = [r.key_hash for r in repo.api_keys()]
    assert hash_key(service["user_key"]) in stored and service["user_key"] not in json.dumps(repo.dump_columns(), default=str)
    # a rate-limited server: the burst passes, then 429 with Retry-After
    system, _ = fo_bundle
    limited = TestClient(create_app(system, repo, ServiceSettings(rate=1.0, burst=3)), raise_server_exceptions=False)
    codes = [limited.get("/v1/galleries", headers=service["admin"]).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    r = limited.get("/v1/galleries", headers=service["admin"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_payload_only_server_refuses_photos(service, fo_bundle, lfw):
    system, _ = fo_bundle
    strict = TestClient(create_app(system, service["repo"], ServiceSettings(rate=0)), raise_server_exceptions=False)
    r = strict.post("/v1/galleries/staff/subjects/z/enroll/photo", files={"photo": ("p.jpg", _photo(lfw, 0))},
                    headers=service["admin"])
    assert r.status_code == 403 and "protected payloads only" in r.json()["error"]["message"]


def test_errors_carry_no_stack_trace_and_logs_no_secrets(service, caplog, lfw):
    import logging

    c, h = service["client"], service["admin"]
    caplog.set_level(logging.INFO, logger="faceveil.service")
    payload = _payload(service["system"], str(lfw.root / lfw.dataset().files[0]))
    c.post("/v1/galleries/staff/subjects/logged/enroll", json={"payload": payload}, headers=h)
    c.post("/v1/galleries/staff/subjects/logged/verify", json={"payload": payload[:50]}, headers=h)
    text = caplog.text
    assert service["admin_key"] not in text and payload[:40] not in text and "Traceback" not in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "faceveil.service"]
    assert {x["route"] for x in lines} >= {"/v1/galleries/{gallery}/subjects/{subject}/enroll"}
    assert all(set(x) <= {"event", "rid", "method", "route", "status", "ms", "key", "error"} for x in lines)

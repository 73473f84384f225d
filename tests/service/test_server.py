"""A real server process on loopback (`faceveil serve`) driven by the client SDK with LFW photos: its
decisions equal the in-process system's on the same pairs, the database holds protected data only, and a
kill -9 in the middle of batch enrolments loses no acknowledged enrolment and leaves no partial subject."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceveil.client import Client, ServiceError
from faceveil.keys import Randomness
from faceveil.service.storage import open_repository
from faceveil.service.storage.base import template_array


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`faceveil serve` in a subprocess; ``start()`` waits for /v1/health."""

    def __init__(self, bundle: Path, db: str, workdir: Path, data_root, *extra: str) -> None:
        self.bundle, self.db, self.workdir, self.data_root, self.extra = bundle, db, workdir, data_root, extra
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> Server:
        import httpx

        env = {**os.environ, "FACEVEIL_DATA": str(self.data_root), "OMP_NUM_THREADS": "1"}
        self.log = open(self.workdir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", "from faceveil.cli import main; main()", "serve", "--system",
                                      str(self.bundle), "--db", self.db, "--port", str(self.port), "--rate", "0",
                                      *self.extra],
                                     cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.workdir / f'server-{self.port}.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _admin_key(workdir: Path, db: str) -> str:
    from faceveil.service.serve import admin_key_path

    p = admin_key_path(db)
    p = p if p.is_absolute() else workdir / p
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    return p.read_text().strip()


def _pairs(lfw, n: int):
    """``n`` same-person and ``n`` different-people pairs of pairsDevTest: (enrolled photo, probe photo, same)."""
    p = lfw.pairs("devtest")
    files = lfw.dataset().files
    idx = np.r_[np.flatnonzero(p.same)[:n], np.flatnonzero(~p.same)[:n]]
    return [(str(lfw.root / files[p.a[i]]), str(lfw.root / files[p.b[i]]), bool(p.same[i])) for i in idx]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("pg_url")


def test_sdk_against_a_real_server_matches_the_in_process_system(fo_bundle, backend_db, tmp_path, lfw, data_root):
    system, bundle = fo_bundle
    server = Server(bundle, backend_db, tmp_path, data_root).start()
    try:
        key = _admin_key(tmp_path, backend_db)
        pairs = _pairs(lfw, 8)
        with Client(server.url, key, None, randomness=Randomness.research(11)) as c:  # bundle fetched from the server
            c.create_gallery("lfw")
            c.enroll_batch("lfw", {f"p{i}": a for i, (a, _, _) in enumerate(pairs)})
            remote = [c.verify("lfw", f"p{i}", b) for i, (_, b, _) in enumerate(pairs)]
            top1 = [c.identify("lfw", b, k=3)[0].label for _, b, _ in pairs]
            with pytest.raises(ServiceError, match="404 NotFound"):
                c.verify("lfw", "nobody", pairs[0][1])
        # in process, the same randomness: the same payloads, templates and distances
        cl, srv = system.client(Randomness.research(11)), system.server()  # each protect() call: batch 0 draws
        local = [srv.verify(cl.protect(b), srv.template(cl.protect(a)))[0] for a, b, _ in pairs]
        for r, l in zip(remote, local, strict=True):
            assert r.accepted == l.accepted and r.distance == pytest.approx(l.distance, abs=1e-4)
        acc = np.mean([d.accepted == same for d, (_, _, same) in zip(remote, pairs, strict=True)])
        assert acc > 0.6  # the ci-profile student; the number is the in-process one, checked above
        same_idx = [i for i, (_, _, s) in enumerate(pairs) if s]
        assert sum(top1[i] == f"p{i}" for i in same_idx) >= len(same_idx) // 2
    finally:
        server.stop()


def test_database_holds_protected_data_only(fo_bundle, tmp_path, lfw, data_root, dlib_model):
    """Scan every stored column: templates are FaceObfuscator's obfuscated frequency maps, the stored
    embeddings are not the raw dlib embeddings of the faces, no photo bytes, no API key."""
    from faceveil.data.align import align_image, to_tensor
    from faceveil.data.io import read_image

    system, bundle = fo_bundle
    db = f"sqlite:///{tmp_path / 'scan.db'}"
    server = Server(bundle, db, tmp_path, data_root).start()
    photos = [a for a, _, _ in _pairs(lfw, 4)]
    try:
        key = _admin_key(tmp_path, db)
        with Client(server.url, key) as c:
            c.create_gallery("scan")
            c.enroll_batch("scan", {f"s{i}": p for i, p in enumerate(photos)})
    finally:
        server.stop()
    repo = open_repository(db)
    cols = repo.dump_columns()
    raw = dlib_model.embed(torch.cat([to_tensor(align_image(read_image(p), dlib_model.crop)[0][None]) for p in photos]))
    blobs = [v for table in cols.values() for _, values in table for v in values if isinstance(v, bytes | bytearray | memoryview)]
    text = json.dumps(cols, default=lambda v: v.hex() if isinstance(v, bytes | bytearray | memoryview) else str(v))
    assert key not in text and key[3:] not in text
    photo_bytes = [Path(p).read_bytes() for p in photos]
    for b in blobs:
        b = bytes(b)
        assert not any(pb[:64] in b for pb in photo_bytes), "photo bytes stored"
        try:
            arr = template_array(b)
        except Exception:  # not an .npy blob (e.g. a float32 embedding vector)
            arr = np.frombuffer(b, dtype=np.float32) if len(b) % 4 == 0 else None
        if arr is None:
            continue
        if arr.size == 128:
            cos = F.cosine_similarity(torch.from_numpy(arr.reshape(1, -1).astype(np.float32)), raw).max()
            assert float(cos) < 0.99, "a stored vector is a raw dlib embedding of an enrolled face"
        elif arr.ndim >= 2:
            assert arr.shape[-3:] == (2, 112, 112) or arr.shape == (2, 112, 112), arr.shape  # obfuscated maps only
    repo.close()


def test_kill9_during_batch_enrolment_loses_no_acknowledged_subject(fo_bundle, tmp_path, lfw, data_root):
    system, bundle = fo_bundle
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    server = Server(bundle, db, tmp_path, data_root).start()
    photos = [a for a, _, _ in _pairs(lfw, 3)]
    key = _admin_key(tmp_path, db)
    acknowledged: list[str] = []
    stop = threading.Event()
    with Client(server.url, key) as c:
        c.create_gallery("crash")
        payloads = {f"x{j}": c.protect([photos[j % len(photos)], photos[(j + 1) % len(photos)]]) for j in range(6)}

    def enrol_forever() -> None:
        import base64

        import httpx

        h = {"Authorization": f"Bearer {key}"}
        i = 0
        while not stop.is_set():
            items = [{"subject": f"b{i}-{j}", "payload": base64.b64encode(p.to_bytes()).decode()}
                     for j, p in enumerate(payloads.values())]
            try:
                r = httpx.post(server.url + "/v1/galleries/crash/enroll-batch", json={"items": items}, headers=h, timeout=60)
            except httpx.HTTPError:
                return  # the server died mid-request: not acknowledged
            if r.status_code == 200:
                acknowledged.extend(x["subject"] for x in r.json())
            i += 1

    t = threading.Thread(target=enrol_forever)
    t.start()
    time.sleep(8.0)
    server.kill()
    stop.set()
    t.join(60)
    assert acknowledged, "no batch was acknowledged before the kill"
    server = Server(bundle, db, tmp_path, data_root).start()
    try:
        with Client(server.url, key) as c:
            stored = set(c.subjects("crash"))
        assert set(acknowledged) <= stored
        repo = open_repository(db)
        counts = {s: len(repo.templates("crash", s)) for s in stored}
        repo.close()
        assert set(counts.values()) == {2}, "a partial subject was stored"  # every payload holds 2 faces
        batches = {s.split("-")[0] for s in stored}
        for b in batches:  # a batch is all or nothing
            assert {f"{b}-{j}" for j in range(6)} <= stored
    finally:
        server.stop()


def test_keyed_projection_service_with_a_key_per_user(tmp_path, lfw, data_root):
    """faceveil's own protection served: each user's device holds its own key (never sent, not in the bundle);
    the server stores and compares sign templates only; a template matches under its user's key and no other."""
    from faceveil.bench.build import build_system
    from faceveil.defenses import get_defense
    from faceveil.keys import SecretKey

    system = build_system(get_defense("keyed-projection", bits=512), "frozen", "ci", progress=False)
    bundle = system.save(tmp_path / "kp.fvsys")
    db = f"sqlite:///{tmp_path / 'kp.db'}"
    server = Server(bundle, db, tmp_path, data_root).start()
    pairs = _pairs(lfw, 6)
    try:
        key = _admin_key(tmp_path, db)
        users = {name: SecretKey.generate() for name in ("alice", "bob")}
        with Client(server.url, key, None, key=users["alice"]) as alice, Client(server.url, key, None, key=users["bob"]) as bob:
            alice.create_gallery("lfw")
            for i, (a, _, _) in enumerate(pairs):  # every subject enrolled from the device of "alice"
                alice.enroll("lfw", f"p{i}", a)
            mine = [alice.verify("lfw", f"p{i}", b) for i, (_, b, _) in enumerate(pairs)]
            other = [bob.verify("lfw", f"p{i}", b) for i, (_, b, same) in enumerate(pairs) if same]
        same = np.array([s for _, _, s in pairs])
        got = np.array([d.accepted for d in mine])
        assert (got == same).mean() >= 5 / 6, [(d.distance, s) for d, s in zip(mine, same, strict=True)]
        assert not any(d.accepted for d in other)  # the same person's probe under another user's key
        repo = open_repository(db)
        assert sum(g.templates for g in repo.list_galleries()) == len(pairs)
        stored = []  # every array the database holds is a template of signs (and the server's copy of it)
        for table in repo.dump_columns().values():
            for _, values in table:
                for v in values:
                    if isinstance(v, bytes | bytearray | memoryview) and len(v) >= 2048:
                        try:
                            arr = template_array(bytes(v))
                        except Exception:  # a float32 vector column
                            arr = np.frombuffer(bytes(v), dtype=np.float32)
                        stored.append(arr.reshape(-1))
        assert len(stored) >= len(pairs) and all(a.size == 512 and set(np.unique(a)) <= {-1.0, 1.0} for a in stored)
        raw = (tmp_path / "kp.db").read_bytes()
        for k in users.values():
            assert k._key not in raw and k._key.hex().encode() not in raw
    finally:
        server.stop()

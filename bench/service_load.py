"""Service load benchmark: `faceveil serve` on loopback with each backend, LFW identities enrolled through
the SDK, a bounded mixed verify/identify load; p50/p99 latency, requests/s, and the ratio of the HTTP
verify to the bare in-process ``SystemServer.verify`` measured in the same run. (Identification over 100,000
templates in each backend is measured by ``bench/storage_search.py``.)

    PYTHONPATH=src python bench/service_load.py --identities 2000 --requests 400

Target on 2 cores (issue 31): HTTP verify <= 1.3x the in-process call.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.test_server import Server, _admin_key  # noqa: E402  (the tests' server runner)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def line(name: str, ms: list[float], seconds: float | None = None) -> str:
    rps = f", {len(ms) / seconds:.1f} req/s" if seconds else ""
    return f"{name:<44} p50 {pct(ms, 50):7.1f} ms  p99 {pct(ms, 99):7.1f} ms  (n={len(ms)}{rps})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--identities", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--profile", default="ci", help="student budget of the FaceObfuscator system")
    args = ap.parse_args()

    import torch

    from faceveil.bench.build import build_system
    from faceveil.config import data_dir
    from faceveil.data.datasets import LFW
    from faceveil.defenses import get_defense
    from faceveil.keys import Randomness

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="faceveil-load-"))
    data = data_dir()
    t0 = time.perf_counter()
    system = build_system(get_defense("faceobfuscator"), "adapted", args.profile, data=data, progress=False)
    bundle = system.save(work / "fo.fvsys")
    print(f"system built in {time.perf_counter() - t0:.0f} s: {bundle}")

    lfw = LFW(data)
    ds = lfw.dataset()
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    for i, f in enumerate(ds.files):
        who = f.split("/")[0]
        if who not in first:
            first[who] = i
        elif who not in second:
            second[who] = i
    people = sorted(first)[: args.identities]
    probes = [p for p in people if p in second][:200]
    client = system.client(Randomness.research(1))
    t0 = time.perf_counter()
    chips, _ = ds.subset([first[p] for p in people]).chips(system.defense.recognizer.crop, progress=False)
    enrol = [client.protect_chips(torch.from_numpy(chips[i : i + 64]).permute(0, 3, 1, 2).float().div(255))
             for i in range(0, len(chips), 64)]
    payloads = torch.cat(enrol)
    pchips, _ = ds.subset([second[p] for p in probes]).chips(system.defense.recognizer.crop, progress=False)
    probe_t = client.protect_chips(torch.from_numpy(pchips).permute(0, 3, 1, 2).float().div(255))
    print(f"protected {len(people)} enrolment and {len(probes)} probe faces in {time.perf_counter() - t0:.0f} s (client side)")

    from faceveil.system import Payload
    from faceveil.system.core import defense_digest

    digest = defense_digest(system.defense)

    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(Payload(system.defense.name, digest, t[None]).to_bytes()).decode()

    # the bare in-process work of one verify request: embed the probe with the server model, compare it with
    # the subject's stored embedding (the service stores template embeddings at enrolment)
    from faceveil.models.base import pairwise_distance

    server = system.server()
    stored = server.embed_templates(server.template(Payload(system.defense.name, digest, payloads[:1])))

    def bare_verify(p: Payload) -> bool:
        return bool(pairwise_distance(server.embed_probe(p), stored, system.metric)[0] <= system.operating_point.threshold)

    inproc = []
    for i in range(min(args.requests, 200)):
        p = Payload(system.defense.name, digest, probe_t[i % len(probe_t)][None])
        t1 = time.perf_counter()
        bare_verify(p)
        inproc.append(1000 * (time.perf_counter() - t1))
    print(line("in-process embed_probe + compare", inproc))

    # the same request through the ASGI app in this process (no socket, no second process): what the web
    # layer itself adds (JSON, base64, payload checks, key lookup, storage read)
    from fastapi.testclient import TestClient

    from faceveil.service.app import ServiceSettings, create_app
    from faceveil.service.security import new_key
    from faceveil.service.storage import open_repository
    from faceveil.service.storage.base import TemplateRecord

    repo = open_repository(f"sqlite:///{work / 'asgi.db'}")
    repo.migrate(digest, system.defense.recognizer.embedding_dim, system.metric)
    repo.create_gallery("lfw")
    t0p = server.template(Payload(system.defense.name, digest, payloads[:1]))
    repo.enroll("lfw", [(probes[0], [TemplateRecord(t0p[0].numpy(), stored[0].numpy())])])
    asgi = TestClient(create_app(system, repo, ServiceSettings(rate=0)))
    ha = {"X-API-Key": new_key(repo, "bench", None, admin=True)}
    def interleaved(request) -> tuple[list[float], list[float]]:
        """100 (request, bare in-process call) timings in ms, alternated (this machine's load drifts: a ratio of
        two loops run minutes apart measures the drift, not the service)."""
        out, bare = [], []
        for i in range(100):
            j = i % len(probes)
            p = Payload(system.defense.name, digest, probe_t[j][None])
            t1 = time.perf_counter()
            bare_verify(p)
            bare.append(1000 * (time.perf_counter() - t1))
            t1 = time.perf_counter()
            request(j).raise_for_status()
            out.append(1000 * (time.perf_counter() - t1))
        return out, bare

    via, bare_a = interleaved(lambda j: asgi.post(f"/v1/galleries/lfw/subjects/{probes[0]}/verify",
                                                  json={"payload": b64(probe_t[j])}, headers=ha))
    import json

    def clock(f, n: int = 50) -> list[float]:
        out = []
        for _ in range(n):
            t1 = time.perf_counter()
            f()
            out.append(1000 * (time.perf_counter() - t1))
        return out

    body = json.dumps({"payload": b64(probe_t[0])})
    print(line("  storage read of a subject's templates", clock(lambda: repo.templates("lfw", probes[0]))))
    print(line("  JSON + base64 + payload parse", clock(lambda: Payload.from_bytes(base64.b64decode(json.loads(body)["payload"])))))
    print(line("ASGI app in process, verify", via))
    print(f"ASGI app verify p50 ratio to in-process (interleaved): {pct(via, 50) / pct(bare_a, 50):.2f}x")
    repo.close()

    for backend in args.backends.split(","):
        if backend == "sqlite":
            db = f"sqlite:///{work / 'load.db'}"
            pg = None
        else:
            from faceveil.service.storage.pgtest import pg_server

            pg = pg_server()
            db = pg.__enter__().url()
        srv = Server(bundle, db, work, data).start()
        try:
            key = _admin_key(work, db)
            h = {"Authorization": f"Bearer {key}"}
            http = httpx.Client(base_url=srv.url, headers=h, timeout=120)
            http.post("/v1/galleries", json={"name": "lfw"})
            t0 = time.perf_counter()
            for s in range(0, len(people), 48):  # under the default request-size limit
                items = [{"subject": people[j], "payload": b64(payloads[j])} for j in range(s, min(s + 48, len(people)))]
                r = http.post("/v1/galleries/lfw/enroll-batch", json={"items": items})
                r.raise_for_status()
            print(f"[{backend}] enrolled {len(people)} identities in {time.perf_counter() - t0:.0f} s")
            lat = {"verify": [], "identify": []}
            lock = threading.Lock()

            def worker(offset: int, srv=srv, h=h, lock=lock, lat=lat) -> None:
                c = httpx.Client(base_url=srv.url, headers=h, timeout=120)
                for i in range(offset, args.requests, 2):
                    j = i % len(probes)
                    kind = "verify" if i % 2 == 0 else "identify"
                    t1 = time.perf_counter()
                    if kind == "verify":
                        r = c.post(f"/v1/galleries/lfw/subjects/{probes[j]}/verify", json={"payload": b64(probe_t[j])})
                    else:
                        r = c.post("/v1/galleries/lfw/identify", json={"payload": b64(probe_t[j]), "k": 5})
                    r.raise_for_status()
                    with lock:
                        lat[kind].append(1000 * (time.perf_counter() - t1))

            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(o,)) for o in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            print(line(f"[{backend}] HTTP verify (mixed load, 2 clients)", lat["verify"]))
            print(line(f"[{backend}] HTTP identify k=5 over {len(people)}", lat["identify"]))
            print(f"[{backend}] mixed load: {args.requests / wall:.1f} req/s; verify p50 ratio to in-process "
                  f"{pct(lat['verify'], 50) / pct(inproc, 50):.2f}x")
            # one client, interleaved with the bare in-process call
            seq, bare = interleaved(lambda j, http=http: http.post(f"/v1/galleries/lfw/subjects/{probes[j]}/verify",
                                                                   json={"payload": b64(probe_t[j])}))
            print(line(f"[{backend}] HTTP verify (one client)", seq))
            print(line(f"[{backend}] in-process verify (interleaved)", bare))
            print(f"[{backend}] one-client verify p50 ratio to in-process (interleaved): {pct(seq, 50) / pct(bare, 50):.2f}x")
        finally:
            srv.stop()
            if pg is not None:
                pg.__exit__(None, None, None)


if __name__ == "__main__":
    main()

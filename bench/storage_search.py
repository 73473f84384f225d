"""Identification latency of the service's storage backends over a large gallery.

    python bench/storage_search.py [--n 100000] [--dim 128] [--per-subject 2] [--probes 200] [--k 5]
        [--backends sqlite,postgres] [--ef-search 100]

Fills one gallery of each backend with ``--n`` synthetic templates (random unit vectors, ``--per-subject``
templates per subject, cosine metric, enrolled in batches of ``--batch`` templates through the repository
API), then times ``search()`` of one probe at a time, ``--probes`` times, after a warm-up: half the probes
are a stored embedding plus noise (a genuine user), half random unit vectors (an impostor, the hardest case
for an approximate index). Prints fill time, search latency p50/p99 (ms) and recall@k of the subjects
against an exact numpy brute force. PostgreSQL runs on a throwaway local server
(:mod:`faceveil.service.storage.pgtest`); a gallery of ``--n`` >= 5,000 is searched through its HNSW index.
The issue's target: identification over 100,000 templates on PostgreSQL+pgvector within 50 ms p99 on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from faceveil.service.storage import Repository, TemplateRecord


def data(n: int, dim: int, per_subject: int, n_probes: int, seed: int = 0):
    """Unit embeddings ``[n, dim]``, their subject labels, and the probes (genuine + impostor halves)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = [f"s{i // per_subject:07d}" for i in range(n)]
    g = n_probes // 2
    genuine = emb[rng.choice(n, g, replace=False)] + rng.normal(size=(g, dim)).astype(np.float32) * 0.02
    impostor = rng.normal(size=(n_probes - g, dim)).astype(np.float32)
    probes = np.concatenate([genuine, impostor]).astype(np.float32)
    return emb, labels, probes / np.linalg.norm(probes, axis=1, keepdims=True)


def fill(repo: Repository, emb: np.ndarray, labels: list[str], batch: int) -> float:
    """Enrol everything (whole subjects per batch); returns seconds."""
    repo.create_gallery("bench")
    t = time.perf_counter()
    i = 0
    while i < len(emb):
        j = min(len(emb), i + batch)
        while j < len(emb) and labels[j] == labels[j - 1]:
            j += 1
        items: dict[str, list[TemplateRecord]] = {}
        for r in range(i, j):
            items.setdefault(labels[r], []).append(TemplateRecord(emb[r], emb[r]))
        repo.enroll("bench", list(items.items()))
        i = j
    return time.perf_counter() - t


def truth(emb: np.ndarray, labels: list[str], probes: np.ndarray, k: int) -> list[set[str]]:
    """Exact top-k subjects (cosine) of each probe."""
    lab = np.array(labels)
    out = []
    for p in probes:
        d = 1 - emb @ p
        order = np.argsort(d, kind="stable")
        seen: list[str] = []
        for idx in order:
            if lab[idx] not in seen:
                seen.append(lab[idx])
                if len(seen) == k:
                    break
        out.append(set(seen))
    return out


def measure(repo: Repository, probes: np.ndarray, k: int, expect: list[set[str]]) -> dict[str, float]:
    for p in probes[::10]:  # warm-up (caches, connections)
        repo.search("bench", p[None], k)
    lat, found = [], []
    for p, exp in zip(probes, expect, strict=True):
        t = time.perf_counter()
        hits = repo.search("bench", p[None], k)[0]
        lat.append((time.perf_counter() - t) * 1000)
        found.append(len(exp & {h.subject for h in hits}) / k)
    a, g = np.array(lat), len(probes) // 2
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "recall_genuine": float(np.mean(found[:g])), "recall_impostor": float(np.mean(found[g:]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--ef-search", type=int, default=100)
    args = ap.parse_args()

    emb, labels, probes = data(args.n, args.dim, args.per_subject, args.probes)
    expect = truth(emb, labels, probes, args.k)
    print(f"{args.n} templates x {args.dim}-D ({args.n // args.per_subject} subjects), {args.probes} probes, k={args.k}")
    results = {}
    for backend in args.backends.split(","):
        with contextlib.ExitStack() as stack:
            if backend == "sqlite":
                from faceveil.service.storage.sqlite import SqliteRepository

                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))

                def opener(tmp=tmp):
                    return SqliteRepository(tmp / "bench.db")
            elif backend == "postgres":
                from faceveil.service.storage.pgtest import create_database, pg_server
                from faceveil.service.storage.postgres import PostgresRepository

                server = stack.enter_context(pg_server({"shared_buffers": "512MB", "maintenance_work_mem": "512MB"}))
                url = create_database(server.url())

                def opener(url=url):
                    return PostgresRepository(url, ef_search=args.ef_search)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            repo = opener()
            repo.migrate("bench", args.dim, "cosine")
            secs = fill(repo, emb, labels, args.batch)
            repo.close()
            t = time.perf_counter()
            repo = opener()  # reopened: the SQLite index is rebuilt from the table here
            reopen = time.perf_counter() - t
            plan = ""
            if backend == "postgres":
                plan = "hnsw" if "templates_hnsw" in repo.explain_search("bench", probes[0], args.k) else "exact scan"
            r = measure(repo, probes, args.k, expect)
            repo.close()
        results[backend] = r
        print(f"{backend:9s} fill {secs:7.1f} s ({args.n / secs:7.0f} templates/s)  open {reopen:5.2f} s  "
              f"search p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  mean {r['mean']:6.2f} ms  "
              f"recall@{args.k} genuine {r['recall_genuine']:.3f} impostor {r['recall_impostor']:.3f}  {plan}", flush=True)


if __name__ == "__main__":
    main()

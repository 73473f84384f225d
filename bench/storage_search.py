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


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def data(n: int, dim: int, per_subject: int, n_probes: int, spread: float, seed: int = 0):
    """Unit embeddings ``[n, dim]`` and their subject labels, and the probes (genuine half, impostor half).
    A subject is a random unit centre; each of its templates, and a genuine probe, is the centre plus a
    random direction times ``spread`` (0.8: cosine ~0.78 template-centre, ~0.6 between two of a subject's
    faces, ~0 between subjects, roughly what face embeddings show); an impostor is a fresh random vector."""
    rng = np.random.default_rng(seed)
    n_subj = -(-n // per_subject)
    centres = unit(rng.normal(size=(n_subj, dim)))
    sub = np.arange(n) // per_subject
    emb = unit(centres[sub] + spread * unit(rng.normal(size=(n, dim))))
    labels = [f"s{i:07d}" for i in sub]
    g = n_probes // 2
    who = rng.choice(n_subj, g, replace=False)
    genuine = unit(centres[who] + spread * unit(rng.normal(size=(g, dim))))
    impostor = unit(rng.normal(size=(n_probes - g, dim)))
    return emb, labels, np.concatenate([genuine, impostor]), [f"s{i:07d}" for i in who]


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


def truth(emb: np.ndarray, labels: list[str], probes: np.ndarray, k: int) -> list[list[str]]:
    """Exact top-k subjects (cosine), nearest first, of each probe."""
    lab = np.array(labels)
    out = []
    for p in probes:
        order = np.argsort(1 - emb @ p, kind="stable")
        seen: list[str] = []
        for idx in order:
            if lab[idx] not in seen:
                seen.append(str(lab[idx]))
                if len(seen) == k:
                    break
        out.append(seen)
    return out


def measure(repo: Repository, probes: np.ndarray, k: int, expect: list[list[str]], who: list[str]) -> dict[str, float]:
    """Latency of one-probe searches; recall@k of the subjects against the exact top k; rank-1 agreement
    with the exact search (genuine and impostor probes apart); rank-1 identification of genuine probes."""
    for p in probes[::10]:  # warm-up (caches, connections)
        repo.search("bench", p[None], k)
    lat, recall, top1, ident = [], [], [], []
    for i, (p, exp) in enumerate(zip(probes, expect, strict=True)):
        t = time.perf_counter()
        hits = repo.search("bench", p[None], k)[0]
        lat.append((time.perf_counter() - t) * 1000)
        recall.append(len(set(exp) & {h.subject for h in hits}) / k)
        top1.append(bool(hits) and hits[0].subject == exp[0])
        if i < len(who):
            ident.append(bool(hits) and hits[0].subject == who[i])
    a, g = np.array(lat), len(who)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "recall": float(np.mean(recall)), "top1_genuine": float(np.mean(top1[:g])),
            "top1_impostor": float(np.mean(top1[g:])), "ident": float(np.mean(ident))}


def report(name: str, r: dict[str, float], k: int) -> None:
    print(f"  {name:24s} search p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  mean {r['mean']:6.2f} ms | "
          f"recall@{k} {r['recall']:.3f}  rank-1 = exact: genuine {r['top1_genuine']:.3f} impostor {r['top1_impostor']:.3f} | "
          f"genuine identified {r['ident']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--spread", type=float, default=0.8)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--ef-search", default="100,200,400,800", help="PostgreSQL hnsw.ef_search values to time (comma list)")
    args = ap.parse_args()

    emb, labels, probes, who = data(args.n, args.dim, args.per_subject, args.probes, args.spread)
    expect = truth(emb, labels, probes, args.k)
    print(f"{args.n} templates x {args.dim}-D ({len(set(labels))} subjects), {args.probes} probes "
          f"({len(who)} genuine, {args.probes - len(who)} impostor), k={args.k}")
    for backend in args.backends.split(","):
        with contextlib.ExitStack() as stack:
            if backend == "sqlite":
                from faceveil.service.storage.sqlite import SqliteRepository

                path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bench.db"
                variants = {"exact in-memory index": lambda path=path: SqliteRepository(path)}
            elif backend == "postgres":
                from faceveil.service.storage.pgtest import create_database, pg_server
                from faceveil.service.storage.postgres import PostgresRepository

                server = stack.enter_context(pg_server({"shared_buffers": "512MB"}))
                url = create_database(server.url())
                variants = {f"hnsw ef_search={ef}": lambda url=url, ef=int(ef): PostgresRepository(url, ef_search=ef)
                            for ef in args.ef_search.split(",")}
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            opener = next(iter(variants.values()))
            repo = opener()
            repo.migrate("bench", args.dim, "cosine")
            secs = fill(repo, emb, labels, args.batch)
            repo.close()
            print(f"{backend}: filled in {secs:.1f} s ({args.n / secs:.0f} templates/s)", flush=True)
            for name, open_ in variants.items():
                t = time.perf_counter()
                repo = open_()  # reopened: the SQLite index is rebuilt from the table here
                opened = time.perf_counter() - t
                if backend == "postgres":
                    plan = repo.explain_search("bench", probes[0], args.k)
                    name += "" if "templates_hnsw" in plan else " (NOT the HNSW index)"
                else:
                    name += f" (open {opened:.2f} s)"
                report(name, measure(repo, probes, args.k, expect, who), args.k)
                repo.close()


if __name__ == "__main__":
    main()

"""A protected face-recognition system: defense + server model + operating point, with a client half
(what runs on the user's device) and a server half (what sees only protected data).

Data flow (every defense)::

    client:  photo --align--> chip x --protect--> t                 (Payload: what leaves the device)
    server:  t --protect_stored--> s                                (template: what the database holds)
    server:  s --recover--> server model --> embedding              (enrolled side)
    server:  t --probe_transform, recover--> server model --> e     (probe side), compared at the operating point

A :class:`ProtectedSystem` is ready when constructed: it never trains, never reads a dataset and never
fits a threshold on the request path (:func:`faceveil.bench.build.build_system` does that offline work;
:func:`faceveil.system.load_system` reads a saved one). Protection randomness comes from the OS CSPRNG
unless a research :class:`~faceveil.keys.Randomness` is given.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.config import config_hash
from faceveil.defenses.base import Defense, check_features
from faceveil.errors import FaceveilDataError, FaceveilError
from faceveil.keys import Randomness, SecretKey
from faceveil.models.base import OperatingPoint, check_batch_size, pairwise_distance
from faceveil.system.inputs import FaceInfo, FaceInput, to_chips

#: protected batches are made and embedded in chunks of this many faces
CHUNK = 32


class SystemNotReadyError(FaceveilError):
    """The system lacks a part a request needs (e.g. an operating point for a decision)."""


def defense_digest(defense: Defense) -> str:
    """Identifies a defense's public parameters and its recogniser: a payload made for another one is refused."""
    return config_hash(defense.name, defense.public_params(), defense.recognizer.name, precision=False)


# ---------------------------------------------------------------------------------------------
# What leaves the client
# ---------------------------------------------------------------------------------------------


@dataclass
class Payload:
    """Protected data of one or more faces as the client sends it: the defense's transmitted tensor
    ``[B, ...]`` (float32), tagged with the defense and its configuration digest. Serialised without
    pickle (:meth:`to_bytes`: an ``.npz`` of the array and a JSON header)."""

    defense: str
    digest: str
    data: Tensor
    faces: list[FaceInfo] | None = None

    FORMAT = "faceveil-payload-v1"

    def __len__(self) -> int:
        return len(self.data)

    def to_bytes(self) -> bytes:
        head = json.dumps({"format": self.FORMAT, "defense": self.defense, "digest": self.digest})
        buf = io.BytesIO()
        np.savez(buf, data=self.data.detach().cpu().float().numpy(), head=np.array(head))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int = 64 << 20) -> Payload:
        """Parse :meth:`to_bytes` output; anything else is a :class:`FaceveilDataError` (never unpickled)."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise FaceveilDataError(f"payload: expected bytes, got {type(blob).__name__}")
        if len(blob) > max_bytes:
            raise FaceveilDataError(f"payload: {len(blob):,} bytes exceeds the {max_bytes:,}-byte limit")
        try:
            with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as z:
                head = json.loads(str(z["head"]))
                arr = np.array(z["data"])
        except FaceveilDataError:
            raise
        except Exception as e:  # zipfile, numpy and json raise many types on garbage
            raise FaceveilDataError(f"payload: not a faceveil payload ({type(e).__name__}: {e})") from None
        if not isinstance(head, dict) or head.get("format") != cls.FORMAT:
            raise FaceveilDataError("payload: unknown format (expected a faceveil-payload-v1)")
        if arr.dtype != np.float32:
            raise FaceveilDataError(f"payload: expected float32 data, got {arr.dtype}")
        return cls(str(head.get("defense")), str(head.get("digest")), torch.from_numpy(arr))


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """A verification: accepted when ``distance <= threshold`` (``metric`` distances)."""

    accepted: bool
    distance: float
    threshold: float
    metric: str


@dataclass(frozen=True)
class Match:
    """One identification candidate: a gallery subject, its best distance, and whether it passes."""

    label: str
    distance: float
    accepted: bool


def distance_matrix(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """All distances ``[len(a), len(b)]`` (Euclidean, or cosine distance ``1 - cos``)."""
    if metric == "euclidean":
        return torch.cdist(a.double(), b.double()).float()
    if metric == "cosine":
        return (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).float()
    raise ValueError(f"unknown metric {metric!r}")


# ---------------------------------------------------------------------------------------------
# The two halves
# ---------------------------------------------------------------------------------------------


class SystemClient:
    """The user's device: aligns photos and protects them; holds the client's key if the defense has one,
    and nothing of the server."""

    def __init__(self, defense: Defense, randomness: Randomness | None = None, key: SecretKey | None = None) -> None:
        if key is not None:
            defense = defense.with_key(key)  # a keyed defense protects under the user's key; others refuse one
        self.defense = defense
        self.randomness = randomness or Randomness.csprng()
        self.key = key
        self.digest = defense_digest(defense)

    @property
    def crop(self):
        return self.defense.recognizer.crop

    def align(self, images: FaceInput | Sequence[FaceInput]) -> tuple[Tensor, list[FaceInfo]]:
        """Aligned chips of photos (paths, bytes, arrays) or of given chip tensors."""
        return to_chips(images, self.crop)

    def protect_chips(self, chips: Tensor, batch_size: int = CHUNK) -> Tensor:
        """The transmitted data of aligned chips (fresh randomness per chunk)."""
        check_batch_size(batch_size)
        out = []
        for i, s in enumerate(range(0, len(chips), batch_size)):
            with torch.set_grad_enabled(self.defense.needs_grad_to_protect):
                out.append(self.defense.protect(chips[s : s + batch_size], self.randomness.batch(i)).detach().float())
        if not out:
            raise FaceveilDataError("no faces to protect")
        return torch.cat(out)

    def protect(self, images: FaceInput | Sequence[FaceInput]) -> Payload:
        """Align and protect: the payload sent to the server (the only thing that leaves the device)."""
        chips, infos = self.align(images)
        return Payload(self.defense.name, self.digest, self.protect_chips(chips), infos)


class SystemServer:
    """The server: turns payloads into stored templates and embeddings, and decides. It sees only
    protected data (payloads and templates)."""

    def __init__(self, defense: Defense, model: nn.Module, operating_point: OperatingPoint | None, metric: str,
                 transmitted_shape: tuple[int, ...] | None = None, stored_shape: tuple[int, ...] | None = None) -> None:
        self.defense, self.model = defense, model.eval()
        self.operating_point, self.metric = operating_point, metric
        self.transmitted_shape, self.stored_shape = transmitted_shape, stored_shape
        self.digest = defense_digest(defense)

    # --- validation ---------------------------------------------------------------------------
    def check_payload(self, payload: Payload | Tensor) -> Tensor:
        """The payload's tensor, validated: same defense and configuration, float32, finite, right shape."""
        if isinstance(payload, Payload):
            if payload.defense != self.defense.name or payload.digest != self.digest:
                raise FaceveilDataError(f"payload made for defense {payload.defense!r} (configuration {payload.digest}), "
                                        f"but this system runs {self.defense.name!r} ({self.digest})")
            t = payload.data
        else:
            t = payload
        return self._check(t, self.transmitted_shape, "payload")

    def check_templates(self, templates: Tensor) -> Tensor:
        return self._check(templates, self.stored_shape, "stored templates")

    @staticmethod
    def _check(t: Tensor, shape: tuple[int, ...] | None, what: str) -> Tensor:
        if isinstance(t, Tensor) and t.dtype != torch.float32 and torch.is_floating_point(t):
            raise FaceveilDataError(f"{what}: expected float32, got {t.dtype}")
        t = check_features(t, shape, what)
        if t.ndim < 2 or len(t) == 0:
            raise FaceveilDataError(f"{what}: expected a non-empty batch [B, ...], got shape {list(t.shape)}")
        return t

    # --- protected data -> templates and embeddings ------------------------------------------------
    def template(self, payload: Payload | Tensor) -> Tensor:
        """What the database stores for enrolled faces (``protect_stored`` of the payload)."""
        t = self.check_payload(payload)
        with torch.set_grad_enabled(self.defense.needs_grad_to_protect):
            return torch.cat([self.defense.protect_stored(t[s : s + CHUNK]).detach().float() for s in range(0, len(t), CHUNK)])

    @torch.no_grad()
    def _embed(self, t: Tensor, stored: bool) -> Tensor:
        out = []
        for s in range(0, len(t), CHUNK):
            b = t[s : s + CHUNK]
            if not stored:
                b = self.defense.probe_transform(b)
            out.append(self.model(self.defense.recover(b)).float())
        return torch.cat(out)

    def embed_templates(self, templates: Tensor) -> Tensor:
        return self._embed(self.check_templates(templates), stored=True)

    def embed_probe(self, payload: Payload | Tensor) -> Tensor:
        return self._embed(self.check_payload(payload), stored=False)

    # --- decisions ----------------------------------------------------------------------------
    def _op(self) -> OperatingPoint:
        if self.operating_point is None:
            raise SystemNotReadyError("this system has no operating point: build it with build_system(...) "
                                      "(fits one on LFW pairsDevTrain) or load a saved system")
        return self.operating_point

    def verify(self, payload: Payload | Tensor, templates: Tensor) -> list[Decision]:
        """Each probe against its template (or every probe against one template)."""
        op = self._op()
        e = self.embed_probe(payload)
        g = self.embed_templates(templates)
        if len(g) == 1 and len(e) > 1:
            g = g.expand(len(e), -1)
        if len(g) != len(e):
            raise FaceveilDataError(f"verify: {len(e)} probe(s) but {len(g)} template(s); give one template, "
                                    "or one per probe")
        d = pairwise_distance(e, g, op.metric)
        return [Decision(bool(v <= op.threshold), float(v), float(op.threshold), op.metric) for v in d]

    def identify(self, payload: Payload | Tensor, gallery: Gallery, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        """Top-``k`` gallery subjects per probe, nearest first (a subject's best template counts);
        ``accepted`` uses ``threshold`` or the operating point's."""
        check_batch_size(k, "k")
        thr = self._op().threshold if threshold is None else float(threshold)
        if not math.isfinite(thr):
            raise FaceveilDataError(f"identify: threshold must be finite, got {threshold!r}")
        return gallery.search(self.embed_probe(payload), k, thr)


class Gallery:
    """Enrolled subjects of one system, in memory: labels, their stored (protected) templates and the
    server's embeddings of them (recomputed from the templates, never from faces)."""

    def __init__(self, server: SystemServer) -> None:
        self.server = server
        self.labels: list[str] = []
        self.templates: list[Tensor] = []
        self._emb: list[Tensor] = []

    def __len__(self) -> int:
        return len(set(self.labels))

    def add(self, label: str, templates: Tensor) -> None:
        if not isinstance(label, str) or not label:
            raise FaceveilDataError(f"gallery label must be a non-empty string, got {label!r}")
        e = self.server.embed_templates(templates)
        for i in range(len(templates)):
            self.labels.append(label)
            self.templates.append(templates[i])
            self._emb.append(e[i])

    def remove(self, label: str) -> int:
        """Drop every template of ``label`` (right to erasure); returns how many were removed."""
        keep = [i for i, lab in enumerate(self.labels) if lab != label]
        n = len(self.labels) - len(keep)
        self.labels = [self.labels[i] for i in keep]
        self.templates = [self.templates[i] for i in keep]
        self._emb = [self._emb[i] for i in keep]
        return n

    def search(self, probes: Tensor, k: int, threshold: float) -> list[list[Match]]:
        if not self.labels:
            raise FaceveilDataError("identify: the gallery is empty")
        d = distance_matrix(probes, torch.stack(self._emb), self.server.metric)  # [P, T]
        names = sorted(set(self.labels))
        col = {n: i for i, n in enumerate(names)}
        idx = torch.tensor([col[lab] for lab in self.labels])
        best = torch.full((len(probes), len(names)), math.inf).scatter_reduce(1, idx.expand(len(probes), -1), d, "amin")
        vals, order = best.topk(min(k, len(names)), dim=1, largest=False)
        return [[Match(names[int(j)], float(v), bool(v <= threshold)) for v, j in zip(vr, orow, strict=True)]
                for vr, orow in zip(vals, order, strict=True)]


# ---------------------------------------------------------------------------------------------
# The system
# ---------------------------------------------------------------------------------------------


class ProtectedSystem:
    """Defense (public parameters) + server model + operating point + deployed recogniser.

    ``server_kind`` says how the server model was made ("frozen": the deployed recogniser as is;
    "adapted": a student distilled on protected inputs). ``metric`` defaults to cosine for adapted
    servers and the recogniser's own metric otherwise."""

    def __init__(self, defense: Defense, model: nn.Module, operating_point: OperatingPoint | None = None,
                 server_kind: str = "frozen", metric: str | None = None, transmitted_shape: tuple[int, ...] | None = None,
                 stored_shape: tuple[int, ...] | None = None, provenance: dict | None = None) -> None:
        if server_kind not in ("frozen", "adapted"):
            raise ValueError(f"server must be 'frozen' or 'adapted', got {server_kind!r}")
        self.defense = defense
        self.model = model.eval()
        self.server_kind = server_kind
        self.metric = metric or (operating_point.metric if operating_point else
                                 "cosine" if server_kind == "adapted" else defense.recognizer.metric)
        self.operating_point = operating_point
        self.transmitted_shape = tuple(transmitted_shape) if transmitted_shape else None
        self.stored_shape = tuple(stored_shape) if stored_shape else None
        self.provenance = dict(provenance or {})

    @classmethod
    def frozen(cls, defense: Defense, operating_point: OperatingPoint | None = None) -> ProtectedSystem:
        """The defense with the deployed recogniser as server (no training)."""
        return cls(defense, defense.frozen_server(), operating_point, "frozen")

    # --- halves -------------------------------------------------------------------------------
    def client(self, randomness: Randomness | None = None, key: SecretKey | None = None) -> SystemClient:
        return SystemClient(self.defense, randomness, key)

    def server(self) -> SystemServer:
        return SystemServer(self.defense, self.model, self.operating_point, self.metric, self.transmitted_shape,
                            self.stored_shape)

    def gallery(self) -> Gallery:
        return Gallery(self.server())

    # --- what leaks (attacks and benchmarks) ------------------------------------------------------
    def channel(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.defense.leak(x, "channel", rng)

    def database(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        return self.defense.leak(x, "database", rng)

    def leak(self, x: Tensor, scenario: str, rng: torch.Generator | None = None) -> Tensor:
        return self.defense.leak(x, scenario, rng)

    @torch.no_grad()
    def embed_protected(self, t: Tensor, stored: bool) -> Tensor:
        """Server-side embedding of transmitted (probe) or stored (enrolled) data, without validation
        (benchmarks' batched path; requests go through :meth:`server`)."""
        if not stored:
            t = self.defense.probe_transform(t)
        return self.model(self.defense.recover(t)).float()

    # --- one-process convenience: client and server together ------------------------------------------
    def enroll(self, images: FaceInput | Sequence[FaceInput]) -> Tensor:
        """Protected templates to store for these faces (only protected data is kept)."""
        return self.server().template(self.client().protect(images))

    def verify(self, probes: FaceInput | Sequence[FaceInput], templates: Tensor) -> list[Decision]:
        return self.server().verify(self.client().protect(probes), templates)

    def identify(self, probes: FaceInput | Sequence[FaceInput], gallery: Gallery, k: int = 5,
                 threshold: float | None = None) -> list[list[Match]]:
        return self.server().identify(self.client().protect(probes), gallery, k, threshold)

    def embed(self, images: FaceInput | Sequence[FaceInput], stored: bool = False) -> Tensor:
        """Server embeddings of faces through the whole protected path (as enrolled or as probes)."""
        p = self.client().protect(images)
        s = self.server()
        return s.embed_templates(s.template(p)) if stored else s.embed_probe(p)

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, client_only: bool = False) -> Path:
        """Write the system as one bundle (:mod:`faceveil.system.bundle`); ``client_only``: what a user's
        device needs (defense and recogniser, no server weights, no operating point)."""
        from faceveil.system.bundle import save_bundle

        return save_bundle(self, Path(path), client_only=client_only)

    def info(self) -> dict:
        op = self.operating_point
        return {"defense": self.defense.config(), "recognizer": self.defense.recognizer.name, "server": self.server_kind,
                "metric": self.metric, "operating_point": None if op is None else op.__dict__,
                "transmitted_shape": self.transmitted_shape, "stored_shape": self.stored_shape,
                "storage_bytes": self.defense.storage_bytes(), **self.provenance}

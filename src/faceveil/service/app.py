"""The HTTP API of the protected face-recognition service (FastAPI; versioned under ``/v1``).

The papers' setting: the user's device aligns and protects the face (:class:`faceveil.client.Client`) and
sends only the protected payload; the server stores ``SystemServer.template`` of it and decides on
protected data. Trusted deployments may let the server run the client side on uploaded photos
(``accept_photos``; the ``/photo`` endpoints and the web page), which the papers' threat model excludes.

Every error is a JSON ``{"error": {"type", "message"}}`` with a 4xx status naming the problem (5xx only for
a fault of the server, without a stack trace); nothing is stored by a failed request.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from faceveil import __version__
from faceveil.errors import FaceveilDataError, FaceveilError
from faceveil.service.security import AuthError, KeyStore, Principal, RateLimited, RateLimiter
from faceveil.service.storage.base import Conflict, NotFound, Repository, TemplateRecord, check_name
from faceveil.system import Payload, ProtectedSystem
from faceveil.system.core import defense_digest, distance_matrix

log = logging.getLogger("faceveil.service")
WEB = Path(__file__).with_name("web")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and policy of one server."""

    accept_photos: bool = False  # trusted deployments: the server runs the client side on uploaded photos
    max_request_bytes: int = 16 << 20  # whole request body
    max_image_pixels: int = 25_000_000  # uploaded photos (decoding costs ~10 bytes a pixel)
    max_batch: int = 256  # items of a batch request
    max_k: int = 100
    rate: float = 20.0  # requests per second per API key (0: unlimited)
    burst: int = 40
    client_bundle: bytes | None = None  # served at /v1/system/client-bundle for SDKs


class ServiceError(FaceveilError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- request and response bodies ------------------------------------------------------------------


class GalleryIn(BaseModel):
    name: str = Field(description="Gallery name: 1-128 letters, digits, spaces or ._-@+")


class PayloadIn(BaseModel):
    payload: str = Field(description="base64 of a protected payload (faceveil.system.Payload.to_bytes)")


class BatchItem(BaseModel):
    subject: str
    payload: str = Field(description="base64 of a protected payload")


class EnrollBatchIn(BaseModel):
    items: list[BatchItem]


class IdentifyIn(BaseModel):
    payload: str = Field(description="base64 of a protected payload (one or more faces)")
    k: int = Field(5, description="candidates per face")
    threshold: float | None = Field(None, description="accept distance (default: the system's operating point)")


class IdentifyBatchIn(BaseModel):
    payloads: list[str]
    k: int = 5
    threshold: float | None = None


class DecisionOut(BaseModel):
    accepted: bool
    distance: float
    threshold: float
    metric: str


class MatchOut(BaseModel):
    subject: str
    distance: float
    accepted: bool


class EnrollOut(BaseModel):
    subject: str
    templates: int


# --- the app ------------------------------------------------------------------------------------------


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413) before they are read whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, "PayloadTooLarge", f"request body of {int(declared):,} bytes exceeds the "
                                f"{self.limit:,}-byte limit")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _error(413, "PayloadTooLarge", f"request body exceeds the {self.limit:,}-byte limit")(scope, receive, send)


class _TooLarge(Exception):
    pass


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def create_app(system: ProtectedSystem, repo: Repository, settings: ServiceSettings | None = None) -> FastAPI:
    """The service app over a loaded ``system`` and a migrated ``repo``."""
    settings = settings or ServiceSettings()
    server = system.server()
    client = system.client()  # the trusted photo path only
    if system.operating_point is None:
        raise ServiceError("the system has no operating point: build it with `faceveil system build`", 500)
    op = system.operating_point
    digest = defense_digest(system.defense)
    keys = KeyStore(repo)
    limiter = RateLimiter(settings.rate, settings.burst)
    model_lock = threading.Lock()  # one request's model work at a time (torch uses every core for it)

    app = FastAPI(title="faceveil", version=__version__,
                  description="Protected face recognition: enrol, verify and identify people from protected data only.")
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)

    # --- errors: JSON, no stack traces -------------------------------------------------------------
    @app.exception_handler(AuthError)
    async def _auth(request: Request, e: AuthError):
        return _error(e.status, "Unauthorized" if e.status == 401 else "Forbidden", str(e),
                      {"WWW-Authenticate": "Bearer"} if e.status == 401 else None)

    @app.exception_handler(RateLimited)
    async def _rate(request: Request, e: RateLimited):
        return _error(429, "RateLimited", str(e), {"Retry-After": str(max(1, round(e.retry_after)))})

    @app.exception_handler(NotFound)
    async def _nf(request: Request, e: NotFound):
        return _error(404, "NotFound", str(e))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, e: Conflict):
        return _error(409, "Conflict", str(e))

    @app.exception_handler(ServiceError)
    async def _svc(request: Request, e: ServiceError):
        return _error(e.status, "ServiceError", str(e))

    @app.exception_handler(FaceveilDataError)
    async def _data(request: Request, e: FaceveilDataError):
        return _error(422, type(e).__name__, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errs = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()[:5])
        return _error(422, "ValidationError", errs or "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        rid = getattr(request.state, "rid", "-")
        log.error(json.dumps({"event": "internal_error", "rid": rid, "error": type(e).__name__}))
        return _error(500, "InternalError", f"internal error (request {rid})")

    @app.middleware("http")
    async def _access_log(request: Request, call_next):
        """One structured log line per request: no bodies, payloads, photos or keys."""
        request.state.rid = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        log.info(json.dumps({"event": "request", "rid": request.state.rid, "method": request.method,
                             "route": getattr(route, "path", "unmatched"), "status": response.status_code,
                             "ms": round(1000 * (time.perf_counter() - t0), 1),
                             "key": getattr(request.state, "key_name", None)}))
        response.headers["X-Request-Id"] = request.state.rid
        return response

    # --- authentication ---------------------------------------------------------------------------------
    def principal(request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        presented = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        p = keys.authenticate(presented)
        request.state.key_name = p.name
        limiter.take(p.name)
        return p

    # --- helpers -------------------------------------------------------------------------------------------
    def decode_payload(b64: str) -> Payload:
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise FaceveilDataError("payload: not valid base64") from None
        p = Payload.from_bytes(blob, max_bytes=settings.max_request_bytes)
        if p.digest != digest:
            raise FaceveilDataError(f"payload made for defense {p.defense!r} (configuration {p.digest}), but this "
                                    f"server runs {system.defense.name!r} ({digest}): use this server's client bundle")
        server.check_payload(p)
        return p

    async def photo_payload(photo: UploadFile) -> Payload:
        if not settings.accept_photos:
            raise ServiceError("this server accepts protected payloads only (start it with --accept-photos for a "
                               "trusted deployment in which the server protects photos itself)", 403)
        data = await photo.read()
        _check_photo_size(data, photo.filename or "photo", settings.max_image_pixels)
        with model_lock:
            return client.protect(data)

    def embed_probe(p: Payload) -> torch.Tensor:
        with model_lock:
            return server.embed_probe(p)

    def records(p: Payload) -> list[TemplateRecord]:
        with model_lock:
            t = server.template(p)
            e = server.embed_templates(t)
        return [TemplateRecord(t[i].numpy(), e[i].numpy()) for i in range(len(t))]

    def verify_against(gallery: str, subject: str, p: Payload) -> DecisionOut:
        tmpl = repo.templates(gallery, subject)
        e = embed_probe(p)
        if len(e) != 1:
            raise FaceveilDataError(f"verify takes one face, the payload holds {len(e)}")
        g = torch.from_numpy(np.stack([r.embedding for r in tmpl]))
        d = float(distance_matrix(e, g, op.metric).min())
        return DecisionOut(accepted=d <= op.threshold, distance=d, threshold=op.threshold, metric=op.metric)

    def identify(gallery: str, p: Payload, k: int, threshold: float | None) -> list[list[MatchOut]]:
        if not 1 <= k <= settings.max_k:
            raise FaceveilDataError(f"k must be between 1 and {settings.max_k}, got {k}")
        thr = op.threshold if threshold is None else float(threshold)
        if not np.isfinite(thr):
            raise FaceveilDataError("threshold must be finite")
        hits = repo.search(gallery, embed_probe(p).numpy(), k)
        return [[MatchOut(subject=h.subject, distance=h.distance, accepted=h.distance <= thr) for h in row] for row in hits]

    def batch_size(n: int) -> None:
        if not 1 <= n <= settings.max_batch:
            raise FaceveilDataError(f"a batch holds 1 to {settings.max_batch} items, got {n}")

    # --- public endpoints ------------------------------------------------------------------------------
    @app.get("/v1/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/version", tags=["service"])
    def version() -> dict:
        """The server and the system it runs (public: what a client needs to protect for it)."""
        return {"faceveil": __version__, "defense": system.defense.name, "digest": digest,
                "params": system.defense.public_params(), "recognizer": system.defense.recognizer.name,
                "server": system.server_kind, "metric": op.metric, "threshold": op.threshold,
                "accept_photos": settings.accept_photos, "schema": repo.schema_version()}

    @app.get("/v1/system/client-bundle", tags=["service"], response_class=Response)
    def client_bundle() -> Response:
        """The client-only bundle (defense and recogniser, no server weights) for SDKs."""
        if settings.client_bundle is None:
            raise ServiceError("this server was started without a client bundle", 404)
        return Response(settings.client_bundle, media_type="application/zip")

    # --- galleries -----------------------------------------------------------------------------------------
    @app.post("/v1/galleries", status_code=201, tags=["galleries"])
    def create_gallery(body: GalleryIn, who: Principal = Depends(principal)) -> dict:
        who.check_admin("creating a gallery")
        repo.create_gallery(check_name(body.name, "gallery name"))
        return {"name": body.name}

    @app.get("/v1/galleries", tags=["galleries"])
    def list_galleries(who: Principal = Depends(principal)) -> list[dict]:
        return [g.__dict__ for g in repo.list_galleries() if who.admin or who.galleries is None or g.name in who.galleries]

    @app.delete("/v1/galleries/{gallery}", tags=["galleries"])
    def delete_gallery(gallery: str, who: Principal = Depends(principal)) -> dict:
        who.check_admin("deleting a gallery")
        return {"removed_templates": repo.delete_gallery(check_name(gallery, "gallery name"))}

    @app.get("/v1/galleries/{gallery}/subjects", tags=["subjects"])
    def list_subjects(gallery: str, who: Principal = Depends(principal)) -> list[str]:
        who.check_gallery(gallery)
        return repo.subjects(check_name(gallery, "gallery name"))

    # --- enrolment ----------------------------------------------------------------------------------------
    @app.post("/v1/galleries/{gallery}/subjects/{subject}/enroll", tags=["subjects"])
    def enroll(gallery: str, subject: str, body: PayloadIn, who: Principal = Depends(principal)) -> EnrollOut:
        who.check_gallery(gallery)
        check_name(subject, "subject label")
        n = repo.enroll(check_name(gallery, "gallery name"), [(subject, records(decode_payload(body.payload)))])[0]
        return EnrollOut(subject=subject, templates=n)

    @app.post("/v1/galleries/{gallery}/subjects/{subject}/enroll/photo", tags=["subjects"])
    async def enroll_photo(gallery: str, subject: str, photo: UploadFile = File(...),
                           who: Principal = Depends(principal)) -> EnrollOut:
        who.check_gallery(gallery)
        check_name(subject, "subject label")
        check_name(gallery, "gallery name")
        p = await photo_payload(photo)
        n = repo.enroll(gallery, [(subject, records(p))])[0]
        return EnrollOut(subject=subject, templates=n)

    @app.post("/v1/galleries/{gallery}/enroll-batch", tags=["subjects"])
    def enroll_batch(gallery: str, body: EnrollBatchIn, who: Principal = Depends(principal)) -> list[EnrollOut]:
        """Enrol many subjects at once: all are stored, or (any bad item) none."""
        who.check_gallery(gallery)
        check_name(gallery, "gallery name")
        batch_size(len(body.items))
        items = [(check_name(it.subject, "subject label"), records(decode_payload(it.payload))) for it in body.items]
        counts = repo.enroll(gallery, items)
        return [EnrollOut(subject=s, templates=n) for (s, _), n in zip(items, counts, strict=True)]

    @app.delete("/v1/galleries/{gallery}/subjects/{subject}", tags=["subjects"])
    def delete_subject(gallery: str, subject: str, who: Principal = Depends(principal)) -> dict:
        """Right to erasure: every template of the subject is removed."""
        who.check_gallery(gallery)
        return {"removed_templates": repo.delete_subject(check_name(gallery, "gallery name"), check_name(subject, "subject label"))}

    # --- recognition -------------------------------------------------------------------------------------
    @app.post("/v1/galleries/{gallery}/subjects/{subject}/verify", tags=["recognition"])
    def verify(gallery: str, subject: str, body: PayloadIn, who: Principal = Depends(principal)) -> DecisionOut:
        who.check_gallery(gallery)
        return verify_against(check_name(gallery, "gallery name"), check_name(subject, "subject label"),
                              decode_payload(body.payload))

    @app.post("/v1/galleries/{gallery}/subjects/{subject}/verify/photo", tags=["recognition"])
    async def verify_photo(gallery: str, subject: str, photo: UploadFile = File(...),
                           who: Principal = Depends(principal)) -> DecisionOut:
        who.check_gallery(gallery)
        return verify_against(check_name(gallery, "gallery name"), check_name(subject, "subject label"),
                              await photo_payload(photo))

    @app.post("/v1/galleries/{gallery}/identify", tags=["recognition"])
    def identify_one(gallery: str, body: IdentifyIn, who: Principal = Depends(principal)) -> list[list[MatchOut]]:
        """Top-k subjects for each face of the payload, nearest first."""
        who.check_gallery(gallery)
        return identify(check_name(gallery, "gallery name"), decode_payload(body.payload), body.k, body.threshold)

    @app.post("/v1/galleries/{gallery}/identify/photo", tags=["recognition"])
    async def identify_photo(gallery: str, photo: UploadFile = File(...), k: int = 5,
                             who: Principal = Depends(principal)) -> list[list[MatchOut]]:
        who.check_gallery(gallery)
        return identify(check_name(gallery, "gallery name"), await photo_payload(photo), k, None)

    @app.post("/v1/galleries/{gallery}/identify-batch", tags=["recognition"])
    def identify_batch(gallery: str, body: IdentifyBatchIn, who: Principal = Depends(principal)) -> list[list[list[MatchOut]]]:
        who.check_gallery(gallery)
        check_name(gallery, "gallery name")
        batch_size(len(body.payloads))
        payloads = [decode_payload(b) for b in body.payloads]
        return [identify(gallery, p, body.k, body.threshold) for p in payloads]

    # --- the demo page (trusted deployments) -------------------------------------------------------------
    @app.post("/v1/protect/photo", tags=["demo"])
    async def protect_photo(photo: UploadFile = File(...), who: Principal = Depends(principal)) -> dict:
        """What would leave the device for this photo: the payload's shape, size and a picture of it."""
        p = await photo_payload(photo)
        return {"defense": p.defense, "shape": list(p.data.shape), "bytes": len(p.to_bytes()),
                "faces": [f.__dict__ for f in p.faces or []], "preview_png": _preview(p.data)}

    if (WEB / "index.html").is_file():
        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(WEB / "index.html")

    return app


def _check_photo_size(data: bytes, name: str, max_pixels: int) -> None:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise FaceveilDataError(f"{name}: empty upload")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FaceveilDataError(f"{name}: not an image file ({type(e).__name__})") from None
    if w * h > max_pixels:
        raise FaceveilDataError(f"{name}: {w}x{h} pixels exceeds this server's {max_pixels:,}-pixel limit")


def _preview(t: torch.Tensor) -> str:
    """A PNG (base64) of the first face's payload: images as they are, maps as their first channel,
    vectors as a heat-map grid (min-max scaled)."""
    from PIL import Image

    x = t[0].detach().float()
    if x.ndim == 1:
        w = int(np.ceil(np.sqrt(x.numel())))
        x = torch.nn.functional.pad(x, (0, w * w - x.numel())).view(1, w, w)
    if x.shape[0] != 3:
        x = x[:1]
    lo, hi = float(x.min()), float(x.max())
    if x.shape[0] != 3 or lo < 0 or hi > 1:
        x = (x - lo) / max(hi - lo, 1e-12)
    arr = (x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).resize((max(64, arr.shape[1]), max(64, arr.shape[0])), Image.NEAREST).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()

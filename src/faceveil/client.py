"""The client SDK of the protected face-recognition service: photos are aligned and protected on this
machine and only the protected payload is sent (the papers' setting)::

    from faceveil.client import Client
    c = Client("http://127.0.0.1:8000", api_key, "fo-client.fvsys")   # or bundle=None: fetched from the server
    c.create_gallery("staff")
    c.enroll("staff", "alice", ["alice1.jpg", "alice2.jpg"])
    c.verify("staff", "alice", "probe.jpg")        # Decision(accepted, distance, threshold, metric)
    c.identify("staff", "probe.jpg", k=5)          # [Match(label, distance, accepted), ...]
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from faceveil.errors import FaceveilError
from faceveil.keys import Randomness, SecretKey
from faceveil.system import Decision, Match, Payload, SystemClient, load_client
from faceveil.system.core import defense_digest
from faceveil.system.inputs import FaceInput


class ServiceError(FaceveilError):
    """The service refused a request: ``status`` and the server's error ``kind`` and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind = status, kind


class Client:
    """A connection to a faceveil service. ``bundle``: the system's client bundle (path); None fetches it from
    the server (``/v1/system/client-bundle``). The client's protection randomness comes from the OS CSPRNG
    (``randomness`` is for research runs only); ``key`` is the client's secret for keyed defenses."""

    def __init__(self, url: str, api_key: str, bundle: str | os.PathLike | None = None, *, data=None,
                 randomness: Randomness | None = None, key: SecretKey | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport,
                                 headers={"Authorization": f"Bearer {api_key}"})
        info = self.version()
        if bundle is None:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "client.fvsys"
                p.write_bytes(self._call("GET", "/v1/system/client-bundle").content)
                self.system: SystemClient = load_client(p, data=data, randomness=randomness, key=key)
        else:
            self.system = load_client(bundle, data=data, randomness=randomness, key=key)
        mine = defense_digest(self.system.defense)
        if mine != info["digest"]:
            raise FaceveilError(f"the client bundle protects for {self.system.defense.name} ({mine}), but the server runs "
                                f"{info['defense']} ({info['digest']}): use the server's client bundle")
        self.metric, self.threshold = info["metric"], info["threshold"]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, json: object = None) -> httpx.Response:
        r = self.http.request(method, path, json=json)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ServiceError(r.status_code, err.get("type", "Error"), err.get("message", r.text))
            except (ValueError, KeyError, TypeError):
                raise ServiceError(r.status_code, "Error", r.text[:200]) from None
        return r

    def _payload(self, faces: FaceInput | Sequence[FaceInput]) -> str:
        return base64.b64encode(self.protect(faces).to_bytes()).decode()

    def protect(self, faces: FaceInput | Sequence[FaceInput]) -> Payload:
        """Align and protect on this machine: what would be sent."""
        return self.system.protect(faces)

    # --- service -----------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("GET", "/v1/health").json()

    def version(self) -> dict:
        return self._call("GET", "/v1/version").json()

    def create_gallery(self, name: str) -> None:
        self._call("POST", "/v1/galleries", {"name": name})

    def galleries(self) -> list[dict]:
        return self._call("GET", "/v1/galleries").json()

    def delete_gallery(self, name: str) -> int:
        return self._call("DELETE", f"/v1/galleries/{_q(name)}").json()["removed_templates"]

    def subjects(self, gallery: str) -> list[str]:
        return self._call("GET", f"/v1/galleries/{_q(gallery)}/subjects").json()

    def enroll(self, gallery: str, subject: str, faces: FaceInput | Sequence[FaceInput]) -> int:
        """Enrol one or more photos of a subject; returns how many templates the subject now has."""
        r = self._call("POST", f"/v1/galleries/{_q(gallery)}/subjects/{_q(subject)}/enroll", {"payload": self._payload(faces)})
        return r.json()["templates"]

    def enroll_batch(self, gallery: str, people: Mapping[str, FaceInput | Sequence[FaceInput]]) -> dict[str, int]:
        """Enrol many subjects in one request: all are stored, or none."""
        items = [{"subject": s, "payload": self._payload(f)} for s, f in people.items()]
        r = self._call("POST", f"/v1/galleries/{_q(gallery)}/enroll-batch", {"items": items})
        return {x["subject"]: x["templates"] for x in r.json()}

    def verify(self, gallery: str, subject: str, face: FaceInput) -> Decision:
        d = self._call("POST", f"/v1/galleries/{_q(gallery)}/subjects/{_q(subject)}/verify",
                       {"payload": self._payload(face)}).json()
        return Decision(d["accepted"], d["distance"], d["threshold"], d["metric"])

    def identify(self, gallery: str, face: FaceInput, k: int = 5, threshold: float | None = None) -> list[Match]:
        """The top-``k`` subjects for one face, nearest first."""
        rows = self._call("POST", f"/v1/galleries/{_q(gallery)}/identify",
                          {"payload": self._payload(face), "k": k, "threshold": threshold}).json()
        return [Match(m["subject"], m["distance"], m["accepted"]) for m in rows[0]]

    def identify_batch(self, gallery: str, faces: Sequence[FaceInput], k: int = 5) -> list[list[Match]]:
        r = self._call("POST", f"/v1/galleries/{_q(gallery)}/identify-batch",
                       {"payloads": [self._payload(f) for f in faces], "k": k}).json()
        return [[Match(m["subject"], m["distance"], m["accepted"]) for m in per[0]] for per in r]

    def delete_subject(self, gallery: str, subject: str) -> int:
        return self._call("DELETE", f"/v1/galleries/{_q(gallery)}/subjects/{_q(subject)}").json()["removed_templates"]


def _q(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")

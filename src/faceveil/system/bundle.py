"""One self-describing file per protected system: what a server (or a user's device) needs to run it.

A bundle is a zip archive of plain data, never pickles:

- ``manifest.json``: format, faceveil and torch versions, the defense's class name and public parameters,
  the recogniser's name and weight fingerprint, the server model (how it was made and the spec that
  rebuilds its architecture), the operating point, the transmitted and stored shapes, provenance, and the
  sha256 of every other member;
- ``manifest.sha256``: the manifest's own sha256 (a flipped byte anywhere is caught);
- ``server.npz``: the adapted server's weights (``allow_pickle=False``); a frozen server is the installed
  recogniser's, checked against the recorded fingerprint instead;
- ``defense.npz``: trained server-side parts of the defense (AdvFace's shadow model), when it has any.

It holds no face data and no client secret: a :class:`~faceveil.keys.SecretKey` cannot be pickled, the
defense contributes only :meth:`~faceveil.defenses.base.Defense.config` (public parameters) and
``bundle_state`` (server-side networks trained on public faces). ``client_only`` bundles (for users'
devices) hold the defense and recogniser only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faceveil import __version__
from faceveil.config import write_atomically
from faceveil.errors import FaceveilError

FORMAT = "faceveil-system-v1"
MAX_MEMBER_BYTES = 2 << 30  # no real bundle member comes near this; a zip bomb does
#: the zip comment seals the file: the sha256 of every byte before it, so one flipped byte anywhere (zip
#: headers and timestamps included, which the members' CRCs do not cover) is refused
SEAL_PREFIX = b"faceveil-sha256:"


class BundleError(FaceveilError):
    """A system bundle is missing, corrupt, tampered with, or was made by an incompatible faceveil."""


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _npz(state: dict[str, Tensor]) -> bytes:
    arrays = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            raise BundleError(f"cannot store bfloat16 tensor {k!r} in a bundle")
        arrays[k] = v.contiguous().numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _from_npz(blob: bytes, what: str) -> dict[str, Tensor]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
    except Exception as e:  # numpy/zipfile raise many types on garbage
        raise BundleError(f"{what}: unreadable weights ({type(e).__name__}: {e})") from None


def _fingerprint(recognizer) -> str:
    """sha256 of the recogniser's weights as bytes (exact, and the same in every process)."""
    from faceveil.models.embed import module_digest

    return module_digest(recognizer)


def save_bundle(system, path: Path, client_only: bool = False) -> Path:
    """Write ``system`` (a :class:`~faceveil.system.core.ProtectedSystem`) to ``path`` atomically."""
    d = system.defense
    members: dict[str, bytes] = {}
    manifest: dict = {
        "format": FORMAT,
        "kind": "client" if client_only else "system",
        "faceveil": __version__,
        "torch": torch.__version__.split("+")[0],
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "defense": {"name": d.name, "class": f"{type(d).__module__}.{type(d).__qualname__}",
                    "params": d.public_params(), "config": d.config()},
        "recognizer": {"name": d.recognizer.name, "fingerprint": _fingerprint(d.recognizer)},
        "transmitted_shape": list(system.transmitted_shape) if system.transmitted_shape else None,
        "needs_key": bool(getattr(d, "needs_key", False)),
    }
    if not client_only:
        spec = system.model.spec() if system.server_kind == "adapted" else None
        if system.server_kind == "adapted":
            if not hasattr(system.model, "spec"):
                raise BundleError(f"the adapted server {type(system.model).__name__} declares no spec() to rebuild it from")
            members["server.npz"] = _npz(system.model.state_dict())
        state = d.bundle_state()
        if state:
            members["defense.npz"] = _npz(state)
        op = system.operating_point
        manifest.update({
            "server": {"kind": system.server_kind, "spec": spec, "metric": system.metric},
            "operating_point": None if op is None else dict(op.__dict__),
            "stored_shape": list(system.stored_shape) if system.stored_shape else None,
            "provenance": system.provenance,
        })
    manifest["members"] = {k: _sha(v) for k, v in members.items()}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default).encode()

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", text)
            z.writestr("manifest.sha256", _sha(text))
            for k, v in members.items():
                z.writestr(k, v)
            z.comment = bytes(len(SEAL_PREFIX) + 64)  # placeholder of the seal's length
        blob = tmp.read_bytes()
        seal = SEAL_PREFIX + hashlib.sha256(blob[: -len(SEAL_PREFIX) - 64]).hexdigest().encode()
        with open(tmp, "r+b") as f:
            f.seek(len(blob) - len(seal))
            f.write(seal)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)
    return path


def _json_default(o):
    if isinstance(o, tuple | set):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise BundleError(f"cannot store a {type(o).__name__} in a bundle manifest (only plain data): {o!r}")


def read_bundle(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """The verified manifest and members of a bundle, or a :class:`BundleError` saying what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: no such system bundle")
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise BundleError(f"{p}: cannot read ({e.strerror or e})") from None
    n = len(SEAL_PREFIX) + 64
    if len(blob) < n or not blob[-n:].startswith(SEAL_PREFIX):
        raise BundleError(f"{p}: not a readable system bundle (no faceveil seal: another file, or a truncated one)")
    if hashlib.sha256(blob[:-n]).hexdigest().encode() != blob[-64:]:
        raise BundleError(f"{p}: checksum mismatch (the file was modified or corrupted)")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            names = set(z.namelist())
            if "manifest.json" not in names or "manifest.sha256" not in names:
                raise BundleError(f"{p}: not a faceveil system bundle (no manifest)")
            for info in z.infolist():
                if info.file_size > MAX_MEMBER_BYTES:
                    raise BundleError(f"{p}: member {info.filename} of {info.file_size:,} bytes is too large")
            raw = {n: z.read(n) for n in names}
    except BundleError:
        raise
    except Exception as e:  # zipfile raises a zoo on damaged archives (BadZipFile, zlib.error, struct.error, ...)
        raise BundleError(f"{p}: not a readable system bundle ({type(e).__name__}: {e})") from None
    text = raw.pop("manifest.json")
    if raw.pop("manifest.sha256").decode("ascii", "replace").strip() != _sha(text):
        raise BundleError(f"{p}: manifest checksum mismatch (the file was modified or corrupted)")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{p}: manifest is not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{p}: unknown bundle format {manifest.get('format') if isinstance(manifest, dict) else None!r} "
                          f"(this faceveil reads {FORMAT})")
    expected = manifest.get("members") or {}
    if set(expected) != set(raw):
        raise BundleError(f"{p}: members {sorted(raw)} do not match the manifest's {sorted(expected)}")
    for name, digest in expected.items():
        if _sha(raw[name]) != digest:
            raise BundleError(f"{p}: member {name} checksum mismatch (the file was modified or corrupted)")
    _check_versions(p, manifest)
    return manifest, raw


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _check_versions(p: Path, manifest: dict) -> None:
    made = _version_tuple(manifest.get("faceveil", "0"))
    here = _version_tuple(__version__)
    if made[:2] > here[:2]:
        raise BundleError(f"{p}: made by faceveil {manifest.get('faceveil')}, newer than this faceveil {__version__}; upgrade")


def bundle_info(path: str | Path) -> dict:
    """The verified manifest (no model is loaded)."""
    return read_bundle(path)[0]

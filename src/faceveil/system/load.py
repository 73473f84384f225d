"""Loading saved systems: a bundle's manifest and members (verified by :func:`~faceveil.system.bundle.read_bundle`)
become a running :class:`~faceveil.system.core.ProtectedSystem` or :class:`~faceveil.system.core.SystemClient`."""

from __future__ import annotations

from pathlib import Path

from faceveil.errors import FaceveilError
from faceveil.models.base import OperatingPoint
from faceveil.models.students import build_student
from faceveil.system.bundle import BundleError, _fingerprint, _from_npz, read_bundle
from faceveil.system.core import ProtectedSystem, SystemClient


def _defense(manifest: dict, data, recognizer):
    import inspect

    from faceveil.defenses import DEFENSES

    spec = manifest["defense"]
    try:
        cls = DEFENSES.get(spec["name"])
    except FaceveilError as e:
        raise BundleError(f"bundle defense: {e}") from None
    kwargs = dict(spec.get("params") or {})
    sig = inspect.signature(cls.__init__).parameters
    unknown = [k for k in kwargs if k not in sig]
    if unknown:
        raise BundleError(f"bundle defense {spec['name']}: parameters {unknown} unknown to this faceveil")
    if "data" in sig:
        kwargs["data"] = data
    try:
        return cls(recognizer=recognizer, **kwargs)
    except (ValueError, TypeError) as e:
        raise BundleError(f"bundle defense {spec['name']}: invalid parameters ({e})") from None


def _recognizer(manifest: dict, path: Path):
    from faceveil.models import get_recognizer

    r = manifest["recognizer"]
    rec = get_recognizer(r["name"])
    fp = _fingerprint(rec)
    if fp != r["fingerprint"]:
        raise BundleError(f"{path}: the installed {r['name']} weights (fingerprint {fp}) are not the ones the system was "
                          f"built with ({r['fingerprint']}); reinstall the model package the bundle was made with")
    return rec


def load_system(path: str | Path, data=None):
    """The :class:`~faceveil.system.core.ProtectedSystem` saved at ``path`` (checked: format, versions,
    checksums, recogniser weights). ``data``: the face-data folder, for defenses with a public pool."""
    p = Path(path)
    manifest, raw = read_bundle(p)
    if manifest.get("kind") != "system":
        raise BundleError(f"{p}: a client-only bundle (for users' devices); load it with load_client()")
    try:
        rec = _recognizer(manifest, p)
        d = _defense(manifest, data, rec)
        if "defense.npz" in raw:
            d.load_bundle_state(_from_npz(raw["defense.npz"], f"{p}: defense.npz"))
        srv = manifest["server"]
        if srv["kind"] == "adapted":
            model = build_student(srv["spec"])
            try:
                model.load_state_dict(_from_npz(raw["server.npz"], f"{p}: server.npz"))
            except (RuntimeError, KeyError) as e:
                raise BundleError(f"{p}: server weights do not fit the declared architecture ({e})") from None
        else:
            model = d.frozen_server()
        op = OperatingPoint(**manifest["operating_point"]) if manifest.get("operating_point") else None
        return ProtectedSystem(d, model, op, srv["kind"], srv["metric"], manifest.get("transmitted_shape"),
                               manifest.get("stored_shape"), manifest.get("provenance"))
    except (KeyError, TypeError) as e:
        raise BundleError(f"{p}: manifest lacks or mangles {e}") from None


def load_client(path: str | Path, data=None, randomness=None, key=None):
    """The :class:`~faceveil.system.core.SystemClient` of a bundle (client-only or full)."""
    p = Path(path)
    manifest, _ = read_bundle(p)
    try:
        d = _defense(manifest, data, _recognizer(manifest, p))
    except (KeyError, TypeError) as e:
        raise BundleError(f"{p}: manifest lacks or mangles {e}") from None
    return SystemClient(d, randomness, key)

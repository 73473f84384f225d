"""Plain functions behind ``faceveil defenses ...`` (wired into the typer CLI by faceveil.cli)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceveil.errors import FaceveilDataError, FaceveilOutputError
from faceveil.keys import Randomness, SecretKey
from faceveil.storage import write_json_atomic

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_params(defense_name: str, params: dict[str, str]) -> dict[str, object]:
    """Convert ``name=value`` strings to the types of the defense's parameter defaults (bool, int,
    float or str). Unknown names and unparsable values raise ``ValueError`` naming them."""
    from faceveil.defenses import DEFENSES

    cls = DEFENSES.get(defense_name)
    specs = {p.name: p for p in cls.params()}
    sig = inspect.signature(cls.__init__).parameters
    out: dict[str, object] = {}
    for name, raw in params.items():
        if name not in specs:
            raise ValueError(f"{defense_name}: unknown parameter {name!r}; parameters: {', '.join(specs) or 'none'}")
        default, s = specs[name].default, str(raw).strip()
        try:
            if isinstance(default, bool):
                if s.lower() not in _TRUE | _FALSE:
                    raise ValueError
                out[name] = s.lower() in _TRUE
            elif isinstance(default, int):
                out[name] = int(s)
            elif isinstance(default, float):
                out[name] = float(s)
            elif default is None:  # optional: the annotation says the type (e.g. ``int | None``); "none" = unset
                kind = str(sig[name].annotation).split("|")[0].strip()
                out[name] = None if s.lower() in ("none", "") else int(s) if kind == "int" else \
                    float(s) if kind == "float" else s
            else:
                out[name] = s
        except ValueError:
            kind = type(default).__name__ if default is not None else str(sig[name].annotation)
            raise ValueError(f"{defense_name}: parameter {name}={raw!r} is not a valid {kind}") from None
    return out


def make_defense(defense_name: str, params: dict[str, str] | None = None, data_dir: str | os.PathLike | None = None,
                 recognizer=None, key: SecretKey | None = None):
    """A defense from CLI strings; ``data_dir`` reaches defenses with a public pool, ``key`` those that
    hold a persistent client secret."""
    from faceveil.defenses import DEFENSES

    kwargs = parse_params(defense_name, params or {})
    cls = DEFENSES.get(defense_name)
    if "data" in inspect.signature(cls.__init__).parameters:
        kwargs["data"] = data_dir
    if recognizer is not None:
        kwargs["recognizer"] = recognizer
    if key is not None:
        kwargs["key"] = key
    return cls(**kwargs)


def _writes_png(defense) -> bool:
    return defense.domain == "image" and tuple(getattr(defense, "output_range", (0.0, 1.0))) == (0.0, 1.0)


class ProtectBatchError(FaceveilDataError):
    """Some inputs of a ``protect`` batch failed; ``report`` says which outputs were written and which not
    (also in the manifest)."""

    def __init__(self, message: str, report: ProtectReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ProtectReport:
    """What a ``protect`` batch did: one manifest row per input, the randomness used, the manifest path."""

    rows: list[dict] = field(default_factory=list)
    manifest: Path | None = None
    randomness: dict = field(default_factory=dict)

    @property
    def written(self) -> list[Path]:
        return [Path(r["output"]) for r in self.rows if r["status"] == "written"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def not_attempted(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "not attempted"]

    def summary(self) -> str:
        return (f"wrote {len(self.written)} of {len(self.rows)} file(s); {len(self.failed)} failed, "
                f"{len(self.not_attempted)} not attempted; manifest: {self.manifest}")


MANIFEST = "manifest.json"


def protect_files(defense_name: str, params: dict[str, str], images: list[Path], out_dir: Path,
                  randomness: Randomness | None = None, data_dir: str | os.PathLike | None = None,
                  key_file: str | os.PathLike | None = None, keep_going: bool = False) -> ProtectReport:
    """Detect, align (the recogniser's crop; no centre-crop fallback), protect and write each image.

    Image-domain defenses with outputs in [0,1] write ``<stem>.<defense>.png`` (8-bit); feature
    defenses and image-like outputs outside [0,1] (InstaHide) write ``<stem>.<defense>.npy`` (float32,
    the transmitted tensor without the batch axis). Protection randomness comes from the OS CSPRNG,
    fresh per image (``randomness=Randomness.research(seed)`` derives it from a seed instead: research
    only, recorded in the manifest). A defense that needs a persistent client key reads it from
    ``key_file`` (created with mode 0600 if absent). ``OUT/manifest.json`` lists every input with its
    output, status (written / failed / not attempted) and the reason of a failure, the defense
    configuration and the randomness. A bad input (corrupt image, no face) stops the batch, or with
    ``keep_going`` is skipped; either way :class:`ProtectBatchError` is raised at the end, carrying the
    report. Every file is written atomically."""
    from faceveil import __version__
    from faceveil.data.align import align_image, to_tensor, to_uint8
    from faceveil.data.io import read_image, write_array, write_image

    images = [Path(p) for p in images]
    if not images:
        raise FaceveilDataError("no images given to protect")
    randomness = randomness or Randomness.csprng()
    cls = _defense_class(defense_name)
    key = None
    if getattr(cls, "needs_key", False):
        if key_file is None:
            raise FaceveilDataError(f"{defense_name} protects with a persistent client key: pass --key-file PATH "
                                    "(created with owner-only permissions if it does not exist)")
        key = SecretKey.load_or_create(key_file)
    elif key_file is not None:
        raise FaceveilDataError(f"{defense_name} uses no persistent key (its randomness is fresh per image); drop --key-file")
    defense = make_defense(defense_name, params, data_dir, key=key)
    crop = defense.recognizer.crop
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _writes_png(defense)
    report = ProtectReport(randomness=randomness.describe())
    used: set[str] = set()
    stopped = False
    for i, path in enumerate(images):
        row: dict = {"input": str(path), "output": None, "status": "not attempted"}
        report.rows.append(row)
        if stopped:
            continue
        try:
            img = read_image(path)
            chip, lm = align_image(img, crop, fallback=False, source=str(path))
            x = to_tensor(chip[None])
            with torch.set_grad_enabled(defense.needs_grad_to_protect):
                t = defense.protect(x, randomness.batch(i)).detach()
        except FaceveilDataError as e:
            row.update(status="failed", error=str(e))
            stopped = not keep_going
            continue
        face = {"n_faces": lm.n_faces, "selected": lm.select, "selection": lm.selection, "box": list(map(int, lm.rect))}
        stem = f"{path.stem}.{defense_name}"
        name, j = stem, 1
        while name in used:  # two inputs with the same file name
            j += 1
            name = f"{stem}-{j}"
        used.add(name)
        dest = out_dir / f"{name}.{'png' if png else 'npy'}"
        try:
            if png:
                write_image(dest, to_uint8(t)[0])
            else:
                write_array(dest, t[0].numpy().astype(np.float32))
        except FaceveilOutputError as e:  # a full disk stops the batch whatever keep_going says
            row.update(status="failed", error=str(e))
            stopped = True
            continue
        row.update(status="written", output=str(dest), face=face)
    manifest = {"faceveil": __version__, "defense": defense.config(), **report.randomness,
                **({"key_fingerprint": key.fingerprint()} if key is not None else {}), "files": report.rows}
    report.manifest = out_dir / MANIFEST
    write_json_atomic(report.manifest, manifest, indent=2)
    if report.failed:
        first = report.failed[0]
        raise ProtectBatchError(f"{first['error']}; {report.summary()}", report)
    return report


def _defense_class(name: str):
    from faceveil.defenses import DEFENSES

    return DEFENSES.get(name)


def _class_attr(cls, name: str, default: str) -> str:
    v = inspect.getattr_static(cls, name, default)
    return "by params" if isinstance(v, property) else str(v)


def list_defenses() -> str:
    """A text table of every registered defense: domain, side, flags, then each parameter with its
    default and help."""
    from faceveil.defenses import DEFENSES

    lines = [f"{'defense':<14} {'domain':<10} {'side':<7} {'stochastic':<10} {'server':<8} description"]
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").replace("``", "")
        if len(doc) > 100:
            doc = doc[:97] + "..."
        server = "adapted" if getattr(cls, "needs_adapted_server", False) else "frozen"
        lines.append(f"{name:<14} {_class_attr(cls, 'domain', '?'):<10} {_class_attr(cls, 'side', '?'):<7} "
                     f"{str(getattr(cls, 'stochastic', False)).lower():<10} {server:<8} {doc}")
        for p in cls.params():
            lines.append(f"{'':<4}{p.name + '=' + repr(p.default):<34} {p.help}")
    return "\n".join(lines)

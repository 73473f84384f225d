"""Plain functions behind ``faceveil defenses ...`` (wired into the typer CLI by faceveil.cli)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch

from faceveil.errors import FaceNotFoundError, FaceveilDataError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_params(defense_name: str, params: dict[str, str]) -> dict[str, object]:
    """Convert ``name=value`` strings to the types of the defense's parameter defaults (bool, int,
    float or str). Unknown names and unparsable values raise ``ValueError`` naming them."""
    from faceveil.defenses import DEFENSES

    cls = DEFENSES.get(defense_name)
    specs = {p.name: p for p in cls.params()}
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
            else:
                out[name] = s
        except ValueError:
            raise ValueError(f"{defense_name}: parameter {name}={raw!r} is not a valid {type(default).__name__}") from None
    return out


def make_defense(defense_name: str, params: dict[str, str] | None = None, data_dir: str | os.PathLike | None = None,
                 recognizer=None):
    """A defense from CLI strings; ``data_dir`` reaches defenses with a public pool."""
    from faceveil.defenses import DEFENSES

    kwargs = parse_params(defense_name, params or {})
    cls = DEFENSES.get(defense_name)
    if "data" in inspect.signature(cls.__init__).parameters:
        kwargs["data"] = data_dir
    if recognizer is not None:
        kwargs["recognizer"] = recognizer
    return cls(**kwargs)


def _writes_png(defense) -> bool:
    return defense.domain == "image" and tuple(getattr(defense, "output_range", (0.0, 1.0))) == (0.0, 1.0)


def protect_files(defense_name: str, params: dict[str, str], images: list[Path], out_dir: Path, seed: int,
                  data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Detect, align (the recogniser's crop; no centre-crop fallback), protect and write each image.

    Image-domain defenses with outputs in [0,1] write ``<stem>.<defense>.png`` (8-bit); feature
    defenses and image-like outputs outside [0,1] (InstaHide) write ``<stem>.<defense>.npy`` (float32,
    the transmitted tensor without the batch axis). Image ``i`` uses a generator seeded from
    ``(seed, i)``. Returns the written paths, in input order."""
    from faceveil.data.align import align_image, to_tensor, to_uint8
    from faceveil.data.io import read_image, write_array, write_image
    from faceveil.defenses.system import batch_generator

    defense = make_defense(defense_name, params, data_dir)
    crop = defense.recognizer.crop
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _writes_png(defense)
    written: list[Path] = []
    used: set[str] = set()
    for i, path in enumerate(images):
        path = Path(path)
        img = read_image(path)
        try:
            chip, _ = align_image(img, crop, fallback=False, source=str(path))
        except FaceNotFoundError as e:
            raise FaceNotFoundError(f"{path}: no face found, nothing written for it ({e})") from e
        x = to_tensor(chip[None])
        with torch.set_grad_enabled(defense.needs_grad_to_protect):
            t = defense.protect(x, batch_generator(seed, i)).detach()
        stem = f"{path.stem}.{defense_name}"
        name, j = stem, 1
        while name in used:  # two inputs with the same file name
            j += 1
            name = f"{stem}-{j}"
        used.add(name)
        if png:
            dest = out_dir / f"{name}.png"
            write_image(dest, to_uint8(t)[0])
        else:
            dest = out_dir / f"{name}.npy"
            write_array(dest, t[0].numpy().astype(np.float32))
        written.append(dest)
    if not written and images:
        raise FaceveilDataError("no images were protected")
    return written


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

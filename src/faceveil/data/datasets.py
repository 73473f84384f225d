"""Datasets: LFW (with the official pair protocols), CelebA aligned / in-the-wild, image folders.

A dataset is a list of image files under a root, each with an identity label. Chips come from
:func:`faceveil.data.align.aligned_chips` (cached). Nothing here copies or commits data.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceveil.config import data_dir
from faceveil.data.align import aligned_chips
from faceveil.data.crop import CropSpec
from faceveil.errors import FaceveilDataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}


@dataclass
class FaceDataset:
    """Image files (relative to ``root``) with integer identity labels."""

    name: str
    root: Path
    files: list[str]
    labels: np.ndarray  # int identity per file
    identities: list[str]  # identity name per label index
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # per file, -1/1 or 0 unknown
    #: which face to align when several are found: "largest" (users' photos) or "centre" (LFW and
    #: CelebA crops, where the labelled person is centred)
    select: str = "largest"

    def __len__(self) -> int:
        return len(self.files)

    def chips(self, crop: CropSpec, fallback: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """uint8 chips ``[N,S,S,3]`` and detection status per file (see ``aligned_chips``)."""
        return aligned_chips(self.root, self.files, self.name, crop, fallback=fallback, progress=progress, select=self.select)

    def subset(self, idx: np.ndarray | list[int], name: str | None = None) -> FaceDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return FaceDataset(
            name or self.name,
            self.root,
            [self.files[i] for i in idx],
            self.labels[idx],
            self.identities,
            {k: v[idx] for k, v in self.attributes.items()},
            self.select,
        )


def _scan_folder(root: Path) -> tuple[list[str], list[str]]:
    files, ids = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f"{d.name}/{f.name}")
                ids.append(d.name)
    return files, ids


def folder_dataset(root: str | os.PathLike, name: str | None = None, select: str = "largest") -> FaceDataset:
    """A folder-per-identity dataset (``root/<identity>/<image>``), e.g. a user's own photos."""
    root = Path(root)
    if not root.is_dir():
        raise FaceveilDataError(f"{root}: dataset folder does not exist")
    files, ids = _scan_folder(root)
    if not files:
        raise FaceveilDataError(f"{root}: no images found in <identity>/ sub-folders")
    names = sorted(set(ids))
    lookup = {n: i for i, n in enumerate(names)}
    return FaceDataset(name or root.name, root, files, np.array([lookup[i] for i in ids]), names, select=select)


# ---------------------------------------------------------------------------------------------
# LFW
# ---------------------------------------------------------------------------------------------


@dataclass
class PairSet:
    """Verification pairs: indices into a dataset's files, same-identity flags and fold ids."""

    a: np.ndarray
    b: np.ndarray
    same: np.ndarray  # bool
    fold: np.ndarray  # int; 0 for protocols without folds


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def gallery_folder(root: str | os.PathLike) -> dict[str, list[Path]]:
    """People to enrol from a folder: ``<root>/<name>/*.<image>`` (one sub-folder per person) and
    ``<root>/<name>.<image>`` (one photo per person), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FaceveilDataError(f"{root}: gallery folder does not exist")
    out: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if files:
                out[p.name] = files
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            out.setdefault(p.stem, []).append(p)
    if not out:
        raise FaceveilDataError(f"{root}: no images found (expected <name>/*.jpg or <name>.jpg)")
    return out


def lfw_file(name: str, num: int) -> str:
    return f"{name}/{name}_{num:04d}.jpg"


def read_pairs(path: Path) -> list[tuple[str, str, bool, int]]:
    """Parse an LFW pairs file (``pairs.txt`` with header ``folds n`` or a dev file with ``n``).

    Returns (file_a, file_b, same, fold) with files relative to ``lfw-deepfunneled``. Anything else (an
    empty or binary file, a bad header, a non-numeric image number, a name with a path separator, a
    count that does not match the header) raises :class:`FaceveilDataError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FaceveilDataError(f"{path}: LFW pairs file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise FaceveilDataError(f"{path}: not a readable text pairs file ({e})") from None
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise FaceveilDataError(f"{path}: empty pairs file")

    def number(tok: str, line: int) -> int:
        if not tok.isascii() or not tok.isdigit() or int(tok) <= 0:
            raise FaceveilDataError(f"{path}: line {line}: expected a positive integer, got {tok!r}")
        return int(tok)

    if len(lines[0]) not in (1, 2):
        raise FaceveilDataError(f"{path}: line 1: expected a header 'folds n' or 'n', got {' '.join(lines[0])!r}")
    head = [number(x, 1) for x in lines[0]]
    folds, n = (head[0], head[1]) if len(head) == 2 else (1, head[0])
    body = lines[1:]
    if len(body) != folds * 2 * n:
        raise FaceveilDataError(f"{path}: expected {folds * 2 * n} pairs, found {len(body)}")

    def name(tok: str, line: int) -> str:
        if tok in (".", "..") or "/" in tok or "\\" in tok or "\x00" in tok:
            raise FaceveilDataError(f"{path}: line {line}: {tok!r} is not a person's name")
        return tok

    out = []
    for k, row in enumerate(body):
        fold, line = k // (2 * n), k + 2
        if len(row) == 3:
            who = name(row[0], line)
            out.append((lfw_file(who, number(row[1], line)), lfw_file(who, number(row[2], line)), True, fold))
        elif len(row) == 4:
            out.append((lfw_file(name(row[0], line), number(row[1], line)), lfw_file(name(row[2], line), number(row[3], line)),
                        False, fold))
        else:
            raise FaceveilDataError(f"{path}: bad pair line {line}: {' '.join(row)}")
    return out


class LFW:
    """Labeled Faces in the Wild (deep-funneled) with its pair protocols.

    ``dataset()`` holds every image; ``pairs(protocol)`` gives pairs for ``"pairs"`` (10 folds x
    300 same + 300 different), ``"devtrain"`` or ``"devtest"``.
    """

    PROTOCOLS = {"pairs": "pairs.txt", "devtrain": "pairsDevTrain.txt", "devtest": "pairsDevTest.txt"}

    def __init__(self, data: str | os.PathLike | None = None) -> None:
        self.base = data_dir(data) / "lfw"
        self.root = self.base / "lfw-deepfunneled"
        if not self.root.is_dir():
            raise FaceveilDataError(f"{self.root}: LFW images not found (expected lfw/lfw-deepfunneled/<Name>/)")
        self._ds: FaceDataset | None = None

    def dataset(self) -> FaceDataset:
        if self._ds is None:
            self._ds = folder_dataset(self.root, name="lfw", select="centre")
        return self._ds

    def pairs(self, protocol: str = "pairs") -> PairSet:
        if protocol not in self.PROTOCOLS:
            raise FaceveilDataError(f"unknown LFW protocol {protocol!r}; use one of {list(self.PROTOCOLS)}")
        rows = read_pairs(self.base / self.PROTOCOLS[protocol])
        index = {f: i for i, f in enumerate(self.dataset().files)}
        missing = [f for r in rows for f in r[:2] if f not in index]
        if missing:
            raise FaceveilDataError(f"{len(missing)} images named in {protocol} are missing, e.g. {missing[0]}")
        return PairSet(
            np.array([index[r[0]] for r in rows]),
            np.array([index[r[1]] for r in rows]),
            np.array([r[2] for r in rows]),
            np.array([r[3] for r in rows]),
        )

    def pair_identities(self) -> set[str]:
        """Identities appearing anywhere in ``pairs.txt`` (the evaluation identities)."""
        ids: set[str] = set()
        for a, b, _, _ in read_pairs(self.base / "pairs.txt"):
            ids.add(a.split("/")[0])
            ids.add(b.split("/")[0])
        return ids

    def non_pair_images(self) -> FaceDataset:
        """LFW images whose identities never appear in ``pairs.txt``: usable as attacker / student
        training data, identity-disjoint from the evaluation pairs."""
        ds = self.dataset()
        bad = self.pair_identities()
        keep = [i for i, f in enumerate(ds.files) if f.split("/")[0] not in bad]
        return ds.subset(keep, name="lfw")

    def pair_images(self) -> np.ndarray:
        """Indices of every image used by ``pairs.txt`` (evaluation targets)."""
        p = self.pairs("pairs")
        return np.unique(np.concatenate([p.a, p.b]))


# ---------------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------------


def celeba(data: str | os.PathLike | None = None, which: str = "aligned") -> FaceDataset:
    """CelebA aligned (``celeba-aligned``) or in-the-wild aligned crops (``celeba-wild-aligned``).

    Labels are CelebA identity numbers; ``attributes`` holds the 40 binary attributes (-1/1, 0 where
    unknown). Raises :class:`FaceveilDataError` when the folder is absent (it may not exist yet).
    """
    folder = {"aligned": "celeba-aligned", "wild": "celeba-wild-aligned"}.get(which)
    if folder is None:
        raise FaceveilDataError(f"unknown CelebA variant {which!r}; use 'aligned' or 'wild'")
    root = data_dir(data) / folder
    if not root.is_dir():
        raise FaceveilDataError(f"{root}: CelebA {which} folder not found")
    ds = folder_dataset(root, name=f"celeba-{which}", select="centre")
    labels_csv = root / "labels.csv"
    if labels_csv.is_file():
        with labels_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
        attr_names = [c for c in rows[0] if c not in ("path", "identity")] if rows else []
        by_path = {r["path"]: r for r in rows}
        for a in attr_names:
            vals = np.zeros(len(ds), dtype=np.int8)
            for i, fpath in enumerate(ds.files):
                v = by_path.get(fpath, {}).get(a, "")
                vals[i] = int(v) if v not in ("", None) else 0
            ds.attributes[a] = vals
    return ds


def public_training_faces(data: str | os.PathLike | None = None) -> list[FaceDataset]:
    """The attacker's / student's public face data: CelebA aligned, CelebA wild (if present) and
    LFW identities absent from ``pairs.txt`` — identity-disjoint from LFW evaluation pairs."""
    out = [celeba(data, "aligned")]
    with contextlib.suppress(FaceveilDataError):
        out.append(celeba(data, "wild"))
    out.append(LFW(data).non_pair_images())
    return out


def seeded_subsets(sets: list, limit: int | None, seed: int) -> list:
    """The datasets ``sets`` cut to a seeded random ``limit`` images drawn over their concatenation (all without
    ``limit``), in order; a set none of whose images is drawn is left out."""
    sizes = [len(ds) for ds in sets]
    total = sum(sizes)
    pick = np.arange(total)
    if limit is not None and limit < total:
        pick = np.sort(np.random.default_rng(seed).choice(total, limit, replace=False))
    out, start = [], 0
    for ds, n in zip(sets, sizes, strict=True):
        local = pick[(pick >= start) & (pick < start + n)] - start
        if len(local):
            out.append(ds if len(local) == n else ds.subset(local))
        start += n
    return out


def public_chips(data=None, crop=None, limit: int | None = None, seed: int = 0, progress: bool = True) -> np.ndarray:
    """uint8 chips of the public (attacker / student) faces, identity-disjoint from LFW pairs.

    With ``limit``, a seeded random subset of that size (the same for every consumer), chosen
    before alignment so only those images are ever aligned."""
    crop = crop or CropSpec(150, 0.25)
    parts = [sub.chips(crop, progress=progress)[0] for sub in seeded_subsets(public_training_faces(data), limit, seed)]
    return np.concatenate(parts)

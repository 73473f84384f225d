"""Locations (data, cache) and content-addressed cache keys."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faceveil.errors import FaceveilDataError
from faceveil.storage import discard, ensure_dir, load_cache, output_error, save_torch, torch_load, write_atomically

__all__ = ["write_atomically"]  # re-exported: the one atomic writer (faceveil.storage)

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data folder: explicit argument, else ``FACEVEIL_DATA``, else ``../shared/data``.

    Raises a :class:`FaceveilDataError` listing every place looked at when none exists.
    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("--data-dir", Path(explicit)))
    elif os.environ.get("FACEVEIL_DATA"):
        candidates.append(("FACEVEIL_DATA", Path(os.environ["FACEVEIL_DATA"])))
    else:
        candidates.append(("default ../shared/data", REPO_ROOT.parent / "shared" / "data"))
        candidates.append(("default ./shared/data", Path.cwd().parent / "shared" / "data"))
    for how, p in candidates:
        if p.is_dir():
            return p.resolve()
        tried.append(f"{p} ({how})")
    raise FaceveilDataError(
        "face data folder not found; looked in: " + "; ".join(tried)
        + ". Pass --data-dir or set FACEVEIL_DATA to the folder holding lfw/ and celeba-aligned/."
    )


#: the recogniser a deployment runs (defenses protect for it, students start from it, attackers' identity
#: losses use it); configuration, not code: ``FACEVEIL_RECOGNIZER`` or ``faceveil --recognizer NAME``
DEFAULT_RECOGNIZER = "dlib"
RECOGNIZER_ENV = "FACEVEIL_RECOGNIZER"


def deployed_recognizer_name() -> str:
    """Name of the deployed recogniser (``FACEVEIL_RECOGNIZER``, default ``dlib``)."""
    return os.environ.get(RECOGNIZER_ENV) or DEFAULT_RECOGNIZER


def home() -> Path:
    """Cache root (``FACEVEIL_HOME``, default ``~/.cache/faceveil``); created on demand (a
    :class:`~faceveil.errors.FaceveilOutputError` naming it when it cannot be)."""
    return ensure_dir(Path(os.environ.get("FACEVEIL_HOME", Path.home() / ".cache" / "faceveil")))


def cache_dir(kind: str) -> Path:
    return ensure_dir(home() / kind)


def load_or_compute(path: Path, compute: Callable[[], Any], force: bool = False) -> Any:
    """The tensors (or dict/list of tensors) cached at ``path``; else ``compute()``, saved atomically
    with a sha256 sidecar (``force`` recomputes). A corrupt or unverified entry is reported, removed
    and recomputed. Loading uses ``weights_only=True``: caches hold data, never code."""
    if not force and (value := load_cache(path, torch_load)) is not None:
        return value
    value = compute()
    save_torch(path, value)
    return value


def load_or_compute_parts(path: Path, n: int, compute_part: Callable[[int], Any], combine: Callable[[Any], Any],
                          force: bool = False, progress: bool = False, desc: str = "", save: bool = True,
                          stream: bool = False) -> Any:
    """:func:`load_or_compute` for a value made of ``n`` independent parts (batches of a slow client,
    of a white-box inversion, ...): each part is cached at ``<stem>-part<i>.pt`` as it is finished, so
    a stopped run resumes at the next part; ``combine(parts)`` is saved at ``path`` and the part files
    are removed. ``save=False``: the parts are the cache (no combined copy of a large set that is only
    read whole). ``stream``: ``combine`` gets an iterator that computes or loads each part as it is
    reached (with :func:`cat_parts`, a set is never held twice). The parts must not depend on each
    other (each seeds its own randomness)."""
    from tqdm import tqdm

    if save and not force and (value := load_cache(path, torch_load)) is not None:
        return value
    paths = [path.with_name(f"{path.stem}-part{i}.pt") for i in range(n)]
    parts = (load_or_compute(p, lambda i=i: compute_part(i), force)
             for i, p in enumerate(tqdm(paths, desc=desc, disable=not progress, leave=False)))
    value = combine(parts if stream else list(parts))
    if save:
        save_torch(path, value)
        for p in paths:
            discard(p)
    return value


def cat_parts(parts: Iterable[Any], n: int) -> Any:
    """``torch.cat`` of ``n`` batches that are the same length except the last, written into one
    preallocated tensor as they come: from an iterator that makes each batch on demand the peak is the
    set plus one batch, not twice the set (the full profile's sets are 2-10 GB: 13,566 AdvFace feature
    maps are 2.1 GB, 13,566 masked 150-px chips 3.7 GB)."""
    import torch

    out, s = None, 0
    for p in parts:
        if out is None:
            out = torch.empty((n * len(p), *p.shape[1:]), dtype=p.dtype)
        if s + len(p) > len(out):
            raise ValueError(f"cat_parts: batch of {len(p)} past the {len(out)} rows of {n} batches like the first")
        out[s : s + len(p)] = p
        s += len(p)
        del p
    if out is None:
        raise ValueError("cat_parts: no parts")
    return out if s == len(out) else out[:s]


class EpochCheckpoint:
    """The state of a long training run, written at epoch ends (at most every ``seconds``) and read
    back by the next run with the same ``path``, so training survives a stopped process; the torch
    RNG is saved and restored with it (``path=None``: no checkpoints)."""

    def __init__(self, path: Path | None, seconds: float = 300.0) -> None:
        import time

        self.path, self.seconds, self._clock = path, seconds, time.perf_counter
        self._last = self._clock()

    def load(self) -> dict | None:
        """The saved state (and the torch RNG restored), or None (also for a corrupt checkpoint, which
        is reported and removed: training starts afresh)."""
        import torch

        if self.path is None:
            return None
        st = load_cache(self.path, torch_load, "training checkpoint", "discarded, training from the start")
        if st is None:
            return None
        torch.set_rng_state(st["rng"])
        return st

    def maybe_save(self, state: Callable[[], dict]) -> None:
        """Write ``state()`` if the interval has passed since the last write."""
        import torch

        if self.path is None or self._clock() - self._last < self.seconds:
            return
        st = {**state(), "rng": torch.get_rng_state()}
        save_torch(self.path, st)
        self._last = self._clock()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` for read-modify-write of shared cache files."""
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below
    except OSError as e:
        raise output_error(path, e) from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _canon(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canon(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def config_hash(*parts: Any, length: int = 16, precision: bool = True) -> str:
    """Stable hash of everything that determines a cached artefact's content; under ``--precision bf16`` the
    precision is one of the parts (an fp32 key is unchanged), so bf16 artefacts never stand in for fp32 ones.
    ``precision=False`` for identities no arithmetic changes (a defense's public parameters, a model's weights,
    aligned face chips): those must be the same in a bf16 and an fp32 process."""
    from faceveil.devices import current_precision

    if precision and (p := current_precision()) != "fp32":
        parts = (*parts, {"precision": p})
    blob = json.dumps(_canon(list(parts)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 of a file (for keying caches on model weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]

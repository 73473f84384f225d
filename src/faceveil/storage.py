"""Atomic writes, checksummed cache entries and verified loads.

Every file faceveil writes goes through :func:`write_atomically`: the data is written to a temporary
name in the destination folder (``.<stem>.<pid>-<n>.tmp<suffix>``), fsync'ed, renamed onto the final
name, and the folder is fsync'ed. A process killed at any moment leaves the old file or the new one
under the final name, never a truncated one; a crash of the machine does not leave an empty final file.
Temporary files of dead writers are removed by the next writer in the same folder (:func:`sweep_stale`)
and are never read (their names start with a dot and end in ``.tmp<suffix>``).

Cache entries (and trained models) are written with ``checksum=True``: a sidecar ``<file>.sha256`` in
``sha256sum`` format is written (atomically) *before* the data is renamed into place, and
:func:`load_cache` checks it before every use. A truncated, empty, garbage or bit-flipped entry, or one
without a sidecar (written by faceveil before checksums), is reported on one warning line naming the
file, removed, and the caller recomputes it. ``FACEVEIL_ADOPT_UNVERIFIED=1`` instead adopts readable
entries without a sidecar (a sidecar is written for their current content), to keep an older cache.

Write failures (full disk, read-only or missing folder) raise :class:`FaceveilOutputError`, one line
naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faceveil.errors import FaceveilOutputError

log = logging.getLogger("faceveil")

SIDECAR_SUFFIX = ".sha256"
#: a temporary file whose writer is gone is removed once it is this old (guards writers on other
#: machines or pid namespaces sharing the folder, whose pids we cannot see)
STALE_TMP_SECONDS = 600.0
NO_SIDECAR = "has no checksum (written before faceveil verified its caches)"

_TMP_RE = re.compile(r"^\..+\.(\d+)(?:-\d+)?\.tmp(?:\.[^.]+)?$")
_counter = itertools.count()
_swept: set[str] = set()
_verified: dict[str, tuple] = {}


# ---------------------------------------------------------------------------------------------
# Errors and folders
# ---------------------------------------------------------------------------------------------


def _home_hint(path: Path, code: int | None = None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ""
    home = os.environ.get("FACEVEIL_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "faceveil"
    try:
        Path(path).absolute().relative_to(root.absolute())
    except ValueError:
        return ""
    return f" (cache folder FACEVEIL_HOME={root}; set FACEVEIL_HOME to a writable folder)"


def output_error(path: str | os.PathLike, e: OSError, what: str = "cannot write") -> FaceveilOutputError:
    """A one-line :class:`FaceveilOutputError` for an ``OSError`` met while writing ``path``."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent is not a folder",
              errno.EEXIST: "a file of that name is in the way"}.get(e.errno or 0, e.strerror or str(e))
    return FaceveilOutputError(f"{what} {path}: {reason}{_home_hint(Path(path), e.errno)}")


def ensure_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a :class:`FaceveilOutputError` naming the folder when it cannot be made."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(p, e, "cannot create folder") from None
    if not p.is_dir():
        raise FaceveilOutputError(f"cannot create folder {p}: a file of that name is in the way")
    return p


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_stale(folder: str | os.PathLike, min_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove the temporary files of writers that are no longer running (older than ``min_age`` s) from
    ``folder``; returns what was removed. Errors (read-only folder, a file gone meanwhile) are ignored."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < min_age or _pid_alive(int(m.group(1))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    key = str(folder)
    if key not in _swept:
        _swept.add(key)
        sweep_stale(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems cannot sync a folder
            os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def sidecar(path: str | os.PathLike) -> Path:
    """``<file>.sha256``: the checksum of a cache entry."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def tmp_path(path: Path) -> Path:
    """A temporary name next to ``path``, unique per process and call, keeping ``path``'s suffix (numpy
    adds .npy/.npz otherwise, PIL and matplotlib pick the format by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{next(_counter)}.tmp{path.suffix}")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object], checksum: bool = False,
                     sync_dir: bool = True) -> None:
    """``write(tmp)``, fsync, then rename ``tmp`` onto ``path``, so readers never see a partial file
    (``faceveil bench --jobs`` workers fill the same caches), then fsync the folder (``sync_dir``).
    ``checksum``: also write ``path``'s sha256 sidecar, before the rename; while an entry is replaced
    the sidecar also accepts the digest of the content being replaced (a ``# previous`` line, dropped
    after the rename), so a process killed between the two renames leaves a consistent pair. A failure
    removes ``tmp``; an ``OSError`` (full disk, folder not writable) becomes a
    :class:`FaceveilOutputError` naming ``path``."""
    path = Path(path)
    ensure_dir(path.parent)
    _sweep_once(path.parent)
    tmp = tmp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
            if checksum:
                with os.fdopen(os.dup(fd), "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
        finally:
            os.close(fd)
        previous = None
        if checksum:
            line = f"{digest}  {path.name}\n"
            old = _read_sidecar(path) if path.exists() else None
            previous = old[0] if old and old[0] != digest else None
            extra = f"# previous {previous}\n" if previous else ""
            write_atomically(sidecar(path), lambda p: p.write_text(line + extra), sync_dir=False)
        os.replace(tmp, path)
        if checksum:  # what was just hashed needs no second look by this process
            st = os.stat(path)
            _verified[str(path)] = (st.st_ino, st.st_size, st.st_mtime_ns, (digest,))
        else:
            _verified.pop(str(path), None)
    except FaceveilOutputError:
        _unlink_quiet(tmp)
        raise
    except OSError as e:
        _unlink_quiet(tmp)
        raise output_error(path, e) from None
    except BaseException as e:
        _unlink_quiet(tmp)
        if (os_error := _os_error_in(e)) is not None:  # e.g. torch's writer re-raising a full disk
            raise output_error(path, os_error) from e
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    if previous:
        with contextlib.suppress(FaceveilOutputError):
            write_atomically(sidecar(path), lambda p: p.write_text(line), sync_dir=False)


def _os_error_in(e: BaseException) -> OSError | None:
    """The ``OSError`` (with an errno) that caused ``e``, if any (libraries wrap write errors)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, checksum: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomically`)."""
    write_atomically(path, lambda p: p.write_bytes(data), checksum)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, checksum: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), checksum)


def write_json_atomic(path: str | os.PathLike, obj: Any, checksum: bool = False, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` written to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, **dumps), checksum)


def save_torch(path: str | os.PathLike, obj: Any, checksum: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, checksummed by default (a cache entry). Written
    through a Python file so a full disk is an ``OSError`` (torch's own writer raises RuntimeError)."""
    import torch

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            torch.save(obj, f)

    write_atomically(path, write, checksum)
    return Path(path)


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """``fig.savefig(path, **savefig)`` atomically (the format is taken from ``path``'s suffix)."""
    p = Path(path)
    savefig.setdefault("format", p.suffix.lstrip(".") or "png")
    write_atomically(p, lambda t: fig.savefig(t, **savefig))
    return p


# ---------------------------------------------------------------------------------------------
# Verifying and loading
# ---------------------------------------------------------------------------------------------


def _read_sidecar(path: Path) -> tuple[str, ...] | None:
    """The digests a sidecar accepts (its entry, then a ``# previous`` one), None when there is no
    sidecar, ``("invalid",)`` when it cannot be parsed."""
    try:
        text = sidecar(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    lines = text.splitlines()
    first = lines[0].split(maxsplit=1)[0] if lines and lines[0].strip() else ""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", first):
        return ("invalid",)
    out = [first.lower()]
    for ln in lines[1:]:
        m = re.fullmatch(r"# previous ([0-9a-fA-F]{64})", ln.strip())
        if m:
            out.append(m.group(1).lower())
    return tuple(out)


def _newest_mtime(path: Path) -> float:
    t = 0.0
    for p in (path, sidecar(path)):
        with contextlib.suppress(OSError):
            t = max(t, p.stat().st_mtime)
    return t


def verify(path: str | os.PathLike) -> str | None:
    """None when ``path`` matches its sha256 sidecar, else why not ("is empty", "does not match its
    sha256 ...", :data:`NO_SIDECAR`, "vanished"). A file checked once is not hashed again while its
    inode, size, modification time and sidecar are unchanged. A mismatch seen while the entry was being
    rewritten by another process (the sidecar is renamed just before the data) is looked at again."""
    p = Path(path)
    reason: str | None = "vanished"
    for attempt in range(4):
        side = _read_sidecar(p)
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                key = (st.st_ino, st.st_size, st.st_mtime_ns, side)
                if _verified.get(str(p)) == key:
                    return None
                if st.st_size == 0:
                    reason = "is empty"
                elif side is None:
                    reason = NO_SIDECAR
                elif side == ("invalid",):
                    reason = f"has an unreadable checksum file {sidecar(p).name}"
                elif hashlib.file_digest(f, "sha256").hexdigest() not in side:
                    reason = "does not match its sha256 (truncated, altered or bit-flipped)"
                else:
                    _verified[str(p)] = key
                    return None
        except FileNotFoundError:
            return "vanished"
        except OSError as e:
            return f"cannot be read ({e.strerror or e})"
        try:
            now_st = p.stat()
        except OSError:
            return "vanished"
        settled = (now_st.st_ino, now_st.st_mtime_ns) == (st.st_ino, st.st_mtime_ns) and _read_sidecar(p) == side \
            and time.time() - _newest_mtime(p) > 2.0
        if settled or attempt == 3 or not reason.startswith("does not match"):
            break
        time.sleep(0.2 * (attempt + 1))
    return reason


def discard(path: str | os.PathLike) -> None:
    """Remove a cache entry and its sidecar (errors ignored: a read-only cache keeps them)."""
    p = Path(path)
    _verified.pop(str(p), None)
    _unlink_quiet(p)
    _unlink_quiet(sidecar(p))


def report_bad(path: str | os.PathLike, reason: str, what: str = "cache entry", action: str = "discarded, recomputing") -> None:
    """One warning line naming a bad file."""
    log.warning("warning: %s: %s %s; %s", path, what, reason, action)


def adopt_unverified() -> bool:
    """``FACEVEIL_ADOPT_UNVERIFIED=1``: keep readable entries written before checksums."""
    return os.environ.get("FACEVEIL_ADOPT_UNVERIFIED", "").lower() in ("1", "true", "yes")


def adopt(path: str | os.PathLike) -> None:
    """Write the sidecar of an existing file for its current content (trusting it)."""
    p = Path(path)
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    write_text_atomic(sidecar(p), f"{digest}  {p.name}\n")


def load_cache(path: str | os.PathLike, load: Callable[[Path], Any], what: str = "cache entry",
               action: str = "discarded, recomputing") -> Any | None:
    """``load(path)`` of a verified cache entry, or None when there is none usable: a missing entry
    silently; a corrupt, unverified or unreadable one after a warning naming it (it is then removed)."""
    p = Path(path)
    if not p.is_file():
        return None
    reason = verify(p)
    if reason == "vanished":
        return None
    if reason is None or (reason == NO_SIDECAR and adopt_unverified()):
        try:
            value = load(p)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to decode means the entry is unusable
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            reason = f"cannot be loaded ({msg[:200]})"
        else:
            if reason == NO_SIDECAR:
                log.warning("warning: %s: %s %s; adopted (FACEVEIL_ADOPT_UNVERIFIED)", p, what, reason)
                with contextlib.suppress(FaceveilOutputError):  # a read-only cache stays unverified
                    adopt(p)
            return value
    report_bad(p, reason, what, action)
    discard(p)
    return None


def read_verified(path: str | os.PathLike, load: Callable[[Path], Any], what: str = "file") -> Any:
    """``load(path)`` after checking the sidecar when there is one; a mismatch raises
    :class:`~faceveil.errors.FaceveilDataError` naming the file (for files the user points at)."""
    from faceveil.errors import FaceveilDataError

    p = Path(path)
    if sidecar(p).exists():
        reason = verify(p)
        if reason is not None:
            raise FaceveilDataError(f"{p}: {what} {reason}")
    return load(p)


def torch_load(path: Path) -> Any:
    """``torch.load`` of data only (``weights_only=True``) onto the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_pinned(path: str | os.PathLike, sha256: str) -> bool:
    """Whether ``path`` hashes to ``sha256`` (remembered per process while the file is unchanged)."""
    p = Path(path)
    st = p.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns, sha256)
    if _verified.get(str(p)) == key:
        return True
    ok = sha256_file(p) == sha256
    if ok:
        _verified[str(p)] = key
    return ok

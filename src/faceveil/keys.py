"""Keys and randomness: the one place protection randomness and client secrets come from.

Two sources, chosen explicitly:

- **Real use** (the default everywhere a user protects a face): :meth:`Randomness.csprng` draws a fresh
  64-bit seed from the operating system's CSPRNG (:mod:`secrets`) for every generator it hands out, so
  no two images (or runs) share noise and nothing about the noise follows from public inputs. Methods
  that need a *persistent* secret (a per-user or per-deployment key) use a :class:`SecretKey`: 256 bits
  from the CSPRNG, stored with owner-only permissions, never printed, never pickled, never written
  into a server bundle; generators derived from it are HMAC-SHA256(key, context).
- **Research** (benchmarks, training, papers' tables): :func:`research_generator` / ``Randomness.research(seed)``
  derive every per-batch generator from a configured seed, so a result can be re-run exactly. Outputs
  made this way record it (:meth:`Randomness.describe`). It is never the default of a protecting command:
  ``faceveil protect`` needs ``--research-seed`` to use it.

A seeded ``torch.Generator`` is Mersenne Twister (or Philox on CUDA), not a cryptographic generator; with a
fresh 64-bit CSPRNG seed per batch an attacker who sees protected outputs faces a 2^64 seed search per
batch, and the state of one batch says nothing about another's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import torch

from faceveil.errors import FaceveilError

KEY_BYTES = 32
KEY_FORMAT = "faceveil-secret-key-v1"


class FaceveilKeyError(FaceveilError):
    """A secret key is missing, malformed, or stored with unsafe permissions."""


def _generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    g = torch.Generator(device=device or "cpu")
    g.manual_seed(seed % (2**63))
    return g


def research_generator(seed: int, batch_index: int = 0, salt: int = 0, device: str | torch.device | None = None) -> torch.Generator:
    """Per-batch randomness derived from a configured seed (reproducible; independent per batch and salt).

    The formula is the one every cached benchmark result was made with; changing it changes results."""
    return _generator(seed * 1_000_003 + batch_index * 7_919 + salt, device)


def os_generator(device: str | torch.device | None = None) -> torch.Generator:
    """A generator seeded with 64 fresh bits from the OS CSPRNG (real-use protection randomness)."""
    return _generator(secrets.randbits(63), device)


@dataclass(frozen=True)
class Randomness:
    """Where a protecting run's per-batch generators come from: the OS CSPRNG (``seed is None``, the
    default) or a research seed (reproducible, recorded in outputs)."""

    seed: int | None = None

    @classmethod
    def csprng(cls) -> Randomness:
        return cls(None)

    @classmethod
    def research(cls, seed: int) -> Randomness:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FaceveilError(f"research seed must be an integer, got {seed!r}")
        return cls(int(seed))

    @property
    def reproducible(self) -> bool:
        return self.seed is not None

    def batch(self, batch_index: int, salt: int = 0, device: str | torch.device | None = None) -> torch.Generator:
        """The generator of batch ``batch_index`` (fresh CSPRNG seed, or derived from the research seed)."""
        if self.seed is None:
            return os_generator(device)
        return research_generator(self.seed, batch_index, salt, device)

    def describe(self) -> dict:
        """What outputs record about their randomness."""
        if self.seed is None:
            return {"randomness": "os-csprng"}
        return {"randomness": "research-seed", "research_seed": self.seed,
                "warning": "reproducible research output: its noise can be regenerated from the seed"}


class SecretKey:
    """A 256-bit client secret. ``repr``/``str`` never show it, it cannot be pickled (so it cannot end up
    in a bundle or a cache by accident), and it is stored only by :meth:`save` (owner-only file)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise FaceveilKeyError(f"a secret key is {KEY_BYTES} bytes")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> SecretKey:
        """A fresh key from the OS CSPRNG."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_research_seed(cls, seed: int) -> SecretKey:
        """A key derived from a public seed: reproducible, hence NOT secret (research runs only)."""
        return cls(hashlib.sha256(f"faceveil-research-key:{int(seed)}".encode()).digest())

    # --- derivation -------------------------------------------------------------------------------
    def derive(self, context: str, n: int = 32) -> bytes:
        """``n`` pseudo-random bytes bound to ``context`` (HMAC-SHA256 in counter mode)."""
        out, i = b"", 0
        while len(out) < n:
            out += hmac.new(self._key, f"{context}\x00{i}".encode(), hashlib.sha256).digest()
            i += 1
        return out[:n]

    def generator(self, context: str | int = "", device: str | torch.device | None = None) -> torch.Generator:
        """A torch generator for ``context`` (e.g. ``"permutation"``): the same key and context give the
        same stream; different contexts are independent."""
        return _generator(int.from_bytes(self.derive(f"generator:{context}", 8), "big"), device)

    def fingerprint(self) -> str:
        """A short public identifier of the key (safe to log and store; reveals nothing usable)."""
        return self.derive("fingerprint", 8).hex()

    # --- safety -----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"SecretKey(<hidden>, fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __reduce__(self):
        raise TypeError("a SecretKey cannot be pickled (keys are never written into bundles or caches); use SecretKey.save")

    # --- storage ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the key to ``path`` with mode 0600 (created that way, then renamed into place)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        blob = json.dumps({"format": KEY_FORMAT, "key": self._key.hex(), "fingerprint": self.fingerprint()}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; an old tmp keeps its mode
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise FaceveilKeyError(f"{p}: cannot write the key file ({e.strerror or e})") from e
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> SecretKey:
        """Read a key written by :meth:`save`; refuses a file other users can read or write."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FaceveilKeyError(f"{p}: no such key file (make one with `faceveil keys new {p}`)") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FaceveilKeyError(f"{p}: key file is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                                   f"run `chmod 600 {p}`")
        try:
            d = json.loads(p.read_text())
            if d.get("format") != KEY_FORMAT:
                raise ValueError("not a faceveil key file")
            key = bytes.fromhex(d["key"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise FaceveilKeyError(f"{p}: not a valid faceveil key file ({e})") from None
        k = cls(key)
        if d.get("fingerprint") not in (None, k.fingerprint()):
            raise FaceveilKeyError(f"{p}: key file is corrupt (fingerprint mismatch)")
        return k

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> SecretKey:
        """The key at ``path``, generated (from the CSPRNG) and saved there first if there is none."""
        p = Path(path)
        if p.exists():
            return cls.load(p)
        return cls.load(cls.generate().save(p))

"""API keys (stored hashed, compared in constant time, scoped to galleries) and per-key rate limiting."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from faceveil.errors import FaceveilError
from faceveil.service.storage.base import ApiKeyRecord, Repository, check_name

KEY_PREFIX = "fv_"


class AuthError(FaceveilError):
    """Missing or wrong API key (401), or a key without access to what it asked for (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(FaceveilError):
    """Too many requests for one key (429); ``retry_after`` seconds until a token is free."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


def hash_key(key: str) -> str:
    """sha256 of an API key: keys are 256-bit random strings, so a plain hash is enough to store."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(repo: Repository, name: str, galleries: tuple[str, ...] | None = None, admin: bool = False) -> str:
    """Create an API key: stores its hash and scope, returns the key (shown once, never stored)."""
    check_name(name, "API key name")
    for g in galleries or ():
        check_name(g, "gallery name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    repo.add_api_key(ApiKeyRecord(name, hash_key(key), tuple(galleries) if galleries is not None else None, admin))
    return key


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's name, gallery scope (None: every gallery) and role."""

    name: str
    galleries: tuple[str, ...] | None
    admin: bool

    def check_gallery(self, gallery: str) -> None:
        if not self.admin and self.galleries is not None and gallery not in self.galleries:
            raise AuthError(f"this API key has no access to gallery {gallery!r}", 403)

    def check_admin(self, what: str) -> None:
        if not self.admin:
            raise AuthError(f"{what} needs an admin API key", 403)


class KeyStore:
    """The repository's API keys, cached (reloaded when a key is not found, at most once a second)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._records: list[ApiKeyRecord] = []
        self._loaded = 0.0
        self._lock = threading.Lock()

    def _reload(self, force: bool = False) -> list[ApiKeyRecord]:
        with self._lock:
            if force and time.monotonic() - self._loaded > 1.0 or not self._loaded:
                self._records = self.repo.api_keys()
                self._loaded = time.monotonic()
            return self._records

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of a presented key; every stored hash is compared in constant time (no early exit)."""
        if not presented:
            raise AuthError("missing API key (send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")
        digest = hash_key(presented)
        for force in (False, True):
            match = None
            for r in self._reload(force):
                if hmac.compare_digest(r.key_hash, digest):
                    match = r
            if match is not None:
                return Principal(match.name, match.galleries, match.admin)
        raise AuthError("invalid API key")


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), int(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, cost: float = 1.0) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[who] = (tokens, now)
                raise RateLimited((cost - tokens) / self.rate)
            self._buckets[who] = (tokens - cost, now)

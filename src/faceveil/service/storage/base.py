"""The storage of the recognition service, behind one small repository interface.

What is stored (and nothing else): galleries; subjects (a label per enrolled person); for every enrolled
face a *protected template* (``SystemServer.template`` output: what the defense stores, serialised as an
``.npy`` of float32 without pickle) and the server model's embedding *of that template* (for
identification: an index over it); API keys (sha256 of the key, never the key); the schema version and
the digest of the system bundle the database serves. Never a photo, a raw recogniser embedding of a
face, or a client key.

Every write is one transaction: a subject's templates are enrolled all or none, a batch of subjects all
or none, and a crash mid-write leaves no partial subject. Backends: :mod:`.sqlite` (default; one file,
WAL) and :mod:`.postgres` (PostgreSQL with pgvector).
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faceveil.errors import FaceveilDataError, FaceveilError

#: schema version the backends create and migrate to (bump with a migration in each backend)
SCHEMA_VERSION = 1
#: gallery names and subject labels: printable, no control characters, bounded
NAME_RE = re.compile(r"^[\w.\- @+]{1,128}$", re.UNICODE)


class StorageError(FaceveilError):
    """The database cannot be opened, migrated or written."""


class NotFound(FaceveilDataError):
    """An unknown gallery or subject."""


class Conflict(FaceveilDataError):
    """A gallery that already exists, or a database made for another system."""


def check_name(value: str, what: str) -> str:
    """A gallery name or subject label, validated (1-128 word characters, spaces, ``.-@+``)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise FaceveilDataError(f"{what} must be 1-128 letters, digits, spaces or ._-@+ characters, got {value!r}")
    return value


def template_bytes(t: np.ndarray) -> bytes:
    """A protected template as stored: ``.npy`` of float32, no pickle."""
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32))
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def template_array(b: bytes) -> np.ndarray:
    """The inverse of :func:`template_bytes` (never unpickles)."""
    return np.load(io.BytesIO(b), allow_pickle=False)


@dataclass(frozen=True)
class TemplateRecord:
    """One enrolled face: the protected template and the server's embedding of it."""

    template: np.ndarray  # float32, the defense's stored shape
    embedding: np.ndarray  # float32 [D], server model of the template


@dataclass(frozen=True)
class GalleryInfo:
    name: str
    subjects: int
    templates: int


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: a name, the sha256 of the key, its gallery scope (None: all) and role."""

    name: str
    key_hash: str
    galleries: tuple[str, ...] | None
    admin: bool


@dataclass(frozen=True)
class Hit:
    subject: str
    distance: float


class Repository(ABC):
    """The service's storage. Implementations are safe to call from several threads."""

    metric: str  # "cosine" or "euclidean": the distance search() ranks by
    dim: int  # embedding dimension

    # --- lifecycle ----------------------------------------------------------------------------
    @abstractmethod
    def migrate(self, system_digest: str, dim: int, metric: str) -> None:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION` (versioned, idempotent) and bind the
        database to one system (its bundle digest, embedding size and metric); a database made for
        another system raises :class:`Conflict`. Rebuilds any in-memory index from the tables."""

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    # --- galleries ----------------------------------------------------------------------------
    @abstractmethod
    def create_gallery(self, name: str) -> None:
        """A new empty gallery; :class:`Conflict` if it exists."""

    @abstractmethod
    def list_galleries(self) -> list[GalleryInfo]: ...

    @abstractmethod
    def delete_gallery(self, name: str) -> int:
        """Remove a gallery and every subject and template in it; returns the templates removed."""

    # --- subjects -----------------------------------------------------------------------------
    @abstractmethod
    def enroll(self, gallery: str, items: Sequence[tuple[str, Sequence[TemplateRecord]]]) -> list[int]:
        """Add templates to subjects (created when new), all in one transaction: every template of every
        item is stored, or none. Returns the number of templates each subject now has."""

    @abstractmethod
    def subjects(self, gallery: str) -> list[str]: ...

    @abstractmethod
    def templates(self, gallery: str, subject: str) -> list[TemplateRecord]:
        """A subject's stored templates (:class:`NotFound` for an unknown gallery or subject)."""

    @abstractmethod
    def delete_subject(self, gallery: str, subject: str) -> int:
        """Right to erasure: remove the subject and every template of it; returns how many."""

    # --- identification -----------------------------------------------------------------------
    @abstractmethod
    def search(self, gallery: str, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """For each probe embedding ``[P, D]``, the ``k`` nearest subjects (a subject's best template),
        nearest first, by :attr:`metric`."""

    # --- API keys -----------------------------------------------------------------------------
    @abstractmethod
    def add_api_key(self, record: ApiKeyRecord) -> None: ...

    @abstractmethod
    def api_keys(self) -> list[ApiKeyRecord]: ...

    @abstractmethod
    def revoke_api_key(self, name: str) -> bool: ...

    # --- audit (tests and `faceveil serve --describe-storage`) ------------------------------------
    @abstractmethod
    def dump_columns(self) -> dict[str, list[tuple[str, list]]]:
        """Every table's columns with all their stored values (``{table: [(column, values)]}``): what a
        test scans to prove no photo, raw embedding or key is stored."""

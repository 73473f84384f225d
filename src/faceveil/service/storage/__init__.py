"""Storage backends of the service behind one repository interface (:mod:`.base`)."""

from faceveil.service.storage.base import (
    SCHEMA_VERSION,
    ApiKeyRecord,
    Conflict,
    GalleryInfo,
    Hit,
    NotFound,
    Repository,
    StorageError,
    TemplateRecord,
)


def open_repository(url: str | None) -> Repository:
    """A repository from a URL: ``sqlite:///path/to.db`` (or a plain path; default ``faceveil.db``),
    ``postgresql://user@host:port/db``."""
    url = url or "sqlite:///faceveil.db"
    if url.startswith(("postgresql://", "postgres://")):
        from faceveil.service.storage.postgres import PostgresRepository

        return PostgresRepository(url)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    if "://" in path:
        raise StorageError(f"unsupported database URL {url!r} (use sqlite:///FILE or postgresql://...)")
    from faceveil.service.storage.sqlite import SqliteRepository

    return SqliteRepository(path)


__all__ = ["SCHEMA_VERSION", "ApiKeyRecord", "Conflict", "GalleryInfo", "Hit", "NotFound", "Repository", "StorageError",
           "TemplateRecord", "open_repository"]

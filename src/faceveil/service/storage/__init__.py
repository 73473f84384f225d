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
    open_repository,
)

__all__ = ["SCHEMA_VERSION", "ApiKeyRecord", "Conflict", "GalleryInfo", "Hit", "NotFound", "Repository", "StorageError",
           "TemplateRecord", "open_repository"]

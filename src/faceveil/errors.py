"""Exception types. Every user-facing failure names the offending input."""


class FaceveilError(Exception):
    """Base class of all faceveil errors."""


class FaceveilDataError(FaceveilError, ValueError):
    """Bad input data: corrupt image, wrong shape, NaN feature, missing dataset."""


class FaceNotFoundError(FaceveilDataError):
    """The face detector found no face in an image."""


class ModelNotInstalledError(FaceveilError):
    """A model's files are missing and could not be installed."""


class ModelCorruptedError(ModelNotInstalledError):
    """An installed model file does not match its recorded or pinned checksum."""


class FaceveilOutputError(FaceveilError):
    """A file could not be written (full disk, read-only or missing folder); names the path."""


class FaceveilCacheError(FaceveilError):
    """A cache entry went bad while in use (it was removed; running again rebuilds it)."""

"""faceveil: privacy-preserving face recognition — published defenses, real attacks, honest numbers."""

from faceveil.errors import FaceNotFoundError, FaceveilDataError, FaceveilError

__version__ = "0.1.0"
__all__ = ["FaceveilError", "FaceveilDataError", "FaceNotFoundError", "__version__"]

"""Storage backends and `open_backend(url)`, which picks one from a repository URL."""

from __future__ import annotations

from volbackup.backends.base import Backend, BlobInfo, BlobNotFound
from volbackup.backends.local import LocalBackend
from volbackup.errors import RepositoryError

__all__ = ["Backend", "BlobInfo", "BlobNotFound", "LocalBackend", "open_backend"]


def open_backend(url: str) -> Backend:
    """A local path or `file://` URL opens a LocalBackend."""
    if "://" not in url:
        return LocalBackend(url)
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return LocalBackend(rest)
    raise RepositoryError(f"unsupported repository URL scheme {scheme!r} (use a directory path)")

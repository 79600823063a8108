"""Storage backends and `open_backend(url)`, which picks one from a repository URL."""

from __future__ import annotations

from volbackup.errors import RepositoryError
from volbackup.repo.backends.base import (
    MAX_RANGE,
    MAX_SMALL_BLOB,
    Backend,
    BadEntry,
    BlobInfo,
    BlobNotFound,
    Leftover,
    RangeBeyondEnd,
    TempFile,
    TransientError,
)
from volbackup.repo.backends.local import LocalBackend
from volbackup.repo.backends.retry import RetryBackend

__all__ = [
    "MAX_RANGE",
    "MAX_SMALL_BLOB",
    "Backend",
    "BadEntry",
    "BlobInfo",
    "BlobNotFound",
    "Leftover",
    "LocalBackend",
    "RangeBeyondEnd",
    "RetryBackend",
    "TempFile",
    "TransientError",
    "open_backend",
]

# Options for writing, by name; only some backends know them.
S3_OPTIONS = ("storage_class", "sse", "sse_kms_key_id")


def open_backend(url: str, options: dict | None = None) -> Backend:
    """A local path or `file://` URL opens a LocalBackend; `s3://BUCKET[/PREFIX]` an S3Backend
    inside a RetryBackend; `webdav[s]://`, `azure://` and `swift://` an OpenDALBackend inside
    one (repo/backends/opendal.py). A directory is not wrapped: it has no transient failures (an
    OSError on a local disk does not pass by trying again), see docs/design.md.

    `options` (storage_class, sse, sse_kms_key_id; None means unset) apply to S3 only.
    """
    options = {k: v for k, v in (options or {}).items() if v}
    unknown = set(options) - set(S3_OPTIONS)
    if unknown:
        raise ValueError(f"unknown backend options {sorted(unknown)}")
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "s3":
        from volbackup.repo.backends.s3 import S3Backend  # boto3 is imported only when needed

        s3 = S3Backend(url, **options)
        # one policy: the wrapper's for whole verbs, the backend's inside its streams
        return RetryBackend(s3, s3.retry.attempts, s3.retry.backoff, s3.retry.sleep)
    if options:
        raise RepositoryError("storage class and server-side encryption options apply only "
                              "to s3:// repositories")
    if sep and scheme in ("webdav", "webdavs", "azure", "swift"):
        from volbackup.repo.backends.opendal import open_opendal  # opendal only when needed

        return open_opendal(url)
    if not sep:
        return LocalBackend(url)
    if scheme == "file":
        return LocalBackend(rest)
    raise RepositoryError(f"unsupported repository URL scheme {scheme!r} "
                          f"(use a directory path, s3://BUCKET[/PREFIX], webdav[s]://HOST/PATH, "
                          f"azure://CONTAINER[/PREFIX] or swift://CONTAINER[/PREFIX])")

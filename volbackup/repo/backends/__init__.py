"""Storage backends and `open_backend(url)`, which picks one by the URL's scheme.

`SCHEMES` maps a scheme to a `Scheme`: the URL form (for messages), where its opener lives
(`module:function`, imported only when a URL of that scheme is opened, so boto3 or paramiko
load only for their own repositories) and the write options it takes. A new kind of store
registers with one line below; its opener returns the backend as it should be used
(wrapped in RetryBackend where it has transient failures).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from volbackup.errors import RepositoryError
from volbackup.repo.backends.base import (
    CAPABILITIES,
    MAX_RANGE,
    MAX_SMALL_BLOB,
    Backend,
    BadEntry,
    BlobInfo,
    BlobNotFound,
    ForeignEntries,
    FreeSpace,
    Leftover,
    MakesItsPlace,
    RangeBeyondEnd,
    TempFile,
    TempFiles,
    TransientError,
    UnfinishedUploads,
)
from volbackup.repo.backends.local import LocalBackend
from volbackup.repo.backends.retry import RetryBackend

__all__ = [
    "CAPABILITIES",
    "MAX_RANGE",
    "MAX_SMALL_BLOB",
    "SCHEMES",
    "Backend",
    "BadEntry",
    "BlobInfo",
    "BlobNotFound",
    "ForeignEntries",
    "FreeSpace",
    "Leftover",
    "LocalBackend",
    "MakesItsPlace",
    "RangeBeyondEnd",
    "RetryBackend",
    "Scheme",
    "TempFile",
    "TempFiles",
    "TransientError",
    "UnfinishedUploads",
    "open_backend",
]


@dataclass(frozen=True)
class Scheme:
    form: str                    # the URL form, for messages: "s3://BUCKET[/PREFIX]"
    opener: str                  # "module:function", called as function(url, **options)
    options: tuple[str, ...] = ()  # write options it takes (the CLI's --storage-class ...)


# Options for writing, by name; only S3 knows them.
S3_OPTIONS = ("storage_class", "sse", "sse_kms_key_id")

SCHEMES: dict[str, Scheme] = {
    "file": Scheme("file:///PATH", "volbackup.repo.backends.local:open_url"),
    "s3": Scheme("s3://BUCKET[/PREFIX]", "volbackup.repo.backends.s3:open_url", S3_OPTIONS),
    "sftp": Scheme("sftp://[USER@]HOST[:PORT]/PATH", "volbackup.repo.backends.sftp:open_url"),
    # through Apache OpenDAL (repo/backends/opendal.py)
    "webdav": Scheme("webdav://[USER@]HOST[:PORT]/PATH", "volbackup.repo.backends.opendal:open_url"),
    "webdavs": Scheme("webdavs://[USER@]HOST[:PORT]/PATH",
                      "volbackup.repo.backends.opendal:open_url"),
    "azure": Scheme("azure://CONTAINER[/PREFIX]", "volbackup.repo.backends.opendal:open_url"),
    "swift": Scheme("swift://CONTAINER[/PREFIX]", "volbackup.repo.backends.opendal:open_url"),
}


def open_backend(url: str, options: dict | None = None) -> Backend:
    """The backend for a repository URL: a path (no `://`) is a directory; otherwise the
    scheme's opener from SCHEMES. `options` (None values mean unset) go to schemes that
    take them; given to any other, they are refused."""
    options = {k: v for k, v in (options or {}).items() if v}
    known = {name for scheme in SCHEMES.values() for name in scheme.options}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown backend options {sorted(unknown)}")
    name, sep, _ = url.partition("://")
    scheme = SCHEMES.get(name) if sep else None
    if sep and scheme is None:
        forms = ", ".join(s.form for s in SCHEMES.values())
        raise RepositoryError(f"unsupported repository URL scheme {name!r} (use a directory "
                              f"path or one of {forms})")
    refused = set(options) - set(scheme.options if scheme else ())
    if refused:
        takers = " or ".join(f"{n}://" for n, s in SCHEMES.items() if refused <= set(s.options))
        raise RepositoryError(f"storage class and server-side encryption options apply only "
                              f"to {takers} repositories")
    if scheme is None:
        return LocalBackend(url)
    module, _, function = scheme.opener.partition(":")
    return getattr(import_module(module), function)(url, **options)

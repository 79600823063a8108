"""The storage backend interface: a flat store of named blobs, streamed both ways.

Keys are '/'-separated relative paths such as `snapshots/pgdata/20261129T031500Z-1a2b.json`.
A blob opened for writing becomes visible (to `list`, `stat`, `open_read`) only when its
`with` block ends without an exception; an interrupted write leaves nothing visible.
Retry, dry-run or logging belong in wrappers around a backend, not inside one: a backend
marks a failure worth retrying by raising `TransientError`, and `retry.RetryBackend` retries.
`read_range` reads a piece of a blob without the rest (one blob of a pack).

`Backend` is the core every store has. What only some stores can do is a capability: a
small ABC below (`UnfinishedUploads`, `TempFiles`, `FreeSpace`, `MakesItsPlace`,
`ForeignEntries`) that a backend class also inherits. Callers ask `backend.has(TempFiles)`
rather than isinstance, because a wrapper (RetryBackend) holds a backend and has what the
backend inside has, which no class hierarchy can say (docs/design.md).
"""

from __future__ import annotations

import os
import re
import secrets
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator

from volbackup.errors import RepositoryError, RepositoryUnreachable
from volbackup.processes import place

# Manifests and locks are read whole; anything larger is not ours (the biggest real
# manifest is a few KiB: labels and driver options).
MAX_SMALL_BLOB = 1 << 20

# The most one `read_range` returns. A range is one blob of a pack, or a pack's header: a
# chunk is at most 16 MiB (config.MAX_CHUNK) and stored a little larger when it does not
# compress or is sealed (chunkstore.MAX_STORED, about 17.2 MiB; a test keeps it below this).
# A bound, so that a call holds at most this much, whatever an index entry says.
MAX_RANGE = 32 << 20


class BlobNotFound(RepositoryError):
    """The key does not exist in the backend."""


class BadEntry(RepositoryError):
    """The key exists but is nothing volbackup reads: a symlink, FIFO or device in a
    directory repository, or a blob larger than the reader's cap."""


class RangeBeyondEnd(RepositoryError):
    """The blob ends before the range asked for (an index entry pointing past a pack's end,
    or a pack cut short): never answered with fewer bytes than asked for."""


class TransientError(RepositoryUnreachable):
    """A failure that may pass if tried again (no connection, a timeout, 5xx, throttling).

    Backends raise it with the message a user should see once the attempts are used up;
    `retry.RetryBackend` retries it and then raises a plain RepositoryUnreachable, which
    nothing retries again. A subclass of RepositoryUnreachable, so a backend used without
    the wrapper still fails with exit 10.
    """


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    # Set for an entry that is listed but cannot be read as a blob: a symlink, FIFO,
    # device, or a directory that cannot be listed (its key then ends with '/'). Callers
    # report it rather than skip it: a snapshot must never silently drop out of a listing.
    error: str | None = None
    modified: datetime | None = None  # UTC, where the listing says (chunk sweeps judge age)


@dataclass(frozen=True)
class Leftover:
    """An unfinished write left by a run that was killed (an S3 multipart upload)."""

    key: str
    ident: str              # what the backend needs to remove it (the upload id)
    started: datetime       # UTC
    size: int | None = None  # bytes stored so far, if known


@dataclass(frozen=True)
class TempFile:
    """A temp file of an unfinished write (a directory repository):
    `.NAME.tmp-PID-PLACE-xxxx` (`.NAME.tmp-PID-xxxx` from earlier versions)."""

    key: str                # '/'-separated path of the temp file itself
    pid: int | None         # of the process that was writing it
    modified: datetime      # UTC, last write
    size: int
    place: str | None = None  # processes.place() of that process: where its pid means it


def check_key(key: str) -> str:
    """Keys are non-empty '/'-separated parts; parts starting with '.' are reserved."""
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") for p in parts):
        raise ValueError(f"invalid blob key {key!r}")
    return key


# Temp files of unfinished writes, one rule for every store that has them (TempFiles below):
# `.NAME.tmp-PID-PLACE-RANDOM` beside the blob (PLACE: processes.place(), where the pid means
# something); earlier versions wrote `.NAME.tmp-PID-RANDOM`. Hidden (a leading '.'), so never a
# blob key, and `cleanup` judges them by their writer's pid and place.
TEMP_MARKER = ".tmp-"
_TEMP_OWNER = re.compile(r"\.tmp-(\d+)-(?:([0-9a-f]{8})-)?[0-9a-f]+$")


def temp_name(name: str) -> str:
    """The name a write of blob `name` has beside it until it is complete."""
    return f".{name}{TEMP_MARKER}{os.getpid()}-{place()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def temp_owner(name: str) -> tuple[int | None, str | None]:
    """(pid, place) of the writer of temp file `name`; a part the name lacks is None."""
    match = _TEMP_OWNER.search(name)
    return (int(match[1]), match[2]) if match else (None, None)


def check_temp_key(key: str) -> str:
    """`key` if it names a temp file (its directories are plain parts), else ValueError:
    remove_temp must never remove a blob."""
    parts = key.split("/")
    if not is_temp_name(parts[-1]) or any(not p or p.startswith(".") for p in parts[:-1]):
        raise ValueError(f"not a temp file key {key!r}")
    return key


def check_range(offset: int, length: int) -> None:
    """ValueError for a range no caller may ask for: a negative offset, an empty range, or
    more than MAX_RANGE bytes. Those are bugs, not repository data: a caller checks an index
    entry (length >= 1, at most its own bound) before it asks, and reports a bad one itself.
    Length 0 is refused too, rather than answered with b"": no stored blob is empty, S3 has
    no empty Range, and an empty answer is what a short read must never look like."""
    if type(offset) is not int or type(length) is not int:
        raise ValueError(f"a range needs whole numbers, not offset {offset!r}, length {length!r}")
    if offset < 0 or not 1 <= length <= MAX_RANGE:
        raise ValueError(f"invalid range: offset {offset}, length {length} (offset >= 0, "
                         f"1 <= length <= {MAX_RANGE:,})")


def beyond_end(key: str, where: str, offset: int, length: int, size: int | None) -> RangeBeyondEnd:
    """The one-line error for a range past the blob's end; `size` if the store said it."""
    holds = f"holds only {size:,} bytes" if size is not None else f"ends before byte {offset:,}"
    return RangeBeyondEnd(f"{key} in repository {where} {holds}: bytes {offset:,}-"
                          f"{offset + length - 1:,} ({length:,} bytes) are past its end")


class Backend(ABC):
    @property
    def capabilities(self) -> frozenset[type]:
        """The capability ABCs (below) this backend has: those its class inherits. A
        wrapper answers with those of the backend it holds."""
        return frozenset(c for c in type(self).__mro__ if c in CAPABILITIES)

    def has(self, capability: type) -> bool:
        """Whether this backend can do what `capability` (a class below) stands for."""
        return capability in self.capabilities

    @abstractmethod
    def describe(self) -> str:
        """Where this backend stores, for messages (never carries credentials)."""

    @abstractmethod
    def check(self, writable: bool) -> None:
        """Raise RepositoryError if the store is missing (or, if asked, not writable)."""

    @abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A writer whose blob appears atomically when the block exits cleanly."""

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A reader of the blob's bytes; raises BlobNotFound."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of the blob from `offset`, read without the rest (one blob
        out of a pack). Raises BlobNotFound; RangeBeyondEnd if the blob ends before
        offset + length (never fewer bytes); ValueError for a range `check_range` refuses."""

    @abstractmethod
    def stat(self, key: str) -> BlobInfo:
        """Size of one blob; raises BlobNotFound."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Finished blobs whose key starts with `prefix`, in key order; entries that
        cannot be read as blobs come with `error` set (a directory backend only)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; removing one that does not exist is not an error."""

    def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """Remove many blobs; the (key, message) of each that could not be removed. A
        backend with a batch call (S3) overrides it."""
        failed = []
        for key in keys:
            try:
                self.delete(key)
            except RepositoryError as e:
                failed.append((key, str(e)))
        return failed

    def probe_write(self) -> None:
        """Raise RepositoryError unless a blob can be written here: writes and removes a
        small probe blob (a directory backend overrides it with check(writable=True))."""
        key = f"probes/{secrets.token_hex(8)}"
        self.write_bytes(key, b"")
        self.delete(key)

    def read_bytes(self, key: str, limit: int | None = MAX_SMALL_BLOB) -> bytes:
        """A whole blob, at most `limit` bytes (None: no cap); a bigger one is a BadEntry,
        so a crafted manifest cannot make a reader hold gigabytes."""
        with self.open_read(key) as reader:
            if limit is None:
                return reader.read()
            data = bytearray()
            while len(data) <= limit:  # in pieces: a read of `limit` bytes allocates them
                piece = reader.read(min(limit + 1 - len(data), 1 << 20))
                if not piece:
                    return bytes(data)
                data += piece
        raise BadEntry(f"{key} in repository {self.describe()} is larger than {limit:,} "
                       f"bytes, too large for a manifest or lock")

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as writer:
            writer.write(data)


# -- capabilities: what only some stores can do (see the module docstring)

class UnfinishedUploads(ABC):
    """Writes that a killed run left behind outside the blob namespace (S3 multipart
    uploads): found and removed by `cleanup` and `prune`."""

    @abstractmethod
    def leftovers(self) -> list[Leftover]:
        """Unfinished writes of killed runs (and of runs still writing)."""

    @abstractmethod
    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one; one that is gone already is not an error."""


class TempFiles(ABC):
    """Temp files of unfinished writes (`.NAME.tmp-PID-PLACE-xxxx`) that take space until
    removed: a directory repository, an SFTP one."""

    @abstractmethod
    def temp_files(self) -> list[TempFile]:
        """Temp files of unfinished writes, in key order."""

    @abstractmethod
    def remove_temp(self, temp: TempFile) -> None:
        """Remove one; ValueError for a key that is no temp file's."""


class FreeSpace(ABC):
    """A store that can say how much room is left (a file system, here or on a server)."""

    @abstractmethod
    def free_space(self) -> int | None:
        """Bytes free for writing; None if the store did not say this time."""


class MakesItsPlace(ABC):
    """A store whose place (a directory) `init` may make, and undo after a failed init."""

    @abstractmethod
    def create_missing(self) -> bool:
        """Make the store's own place if it does not exist yet: True if it was made. For
        `init` alone (every other command refuses a missing store, so that a typo never
        becomes a repository); never its parents."""

    @abstractmethod
    def remove_if_empty(self) -> None:
        """Undo create_missing() after a failed init: remove the place if it holds nothing."""


class ForeignEntries(ABC):
    """A store that can tell cheaply that it holds something other than a repository."""

    @abstractmethod
    def foreign_entries(self) -> list[str]:
        """Its top-level names when it holds neither snapshots nor locks nor a config (a
        wrong directory); [] for a repository or an empty store."""


CAPABILITIES = (UnfinishedUploads, TempFiles, FreeSpace, MakesItsPlace, ForeignEntries)

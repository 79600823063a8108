"""Snapshots in and out of a repository as plain archives: `export` and `import`.

`export` writes a snapshot of either layout as one `.tar.zst` that stock `zstd -dc | tar
-x` extracts: the checked tar stream (Repository.unpacker) compressed again, into a temp
file next to the target that takes the target's name only when every check passed.

`import` makes a snapshot from a tar another tool wrote (volbackup.stream.foreign), written
as a backup is (Repository.snapshot_writer: chunked in a chunked repository), under the
shared lock, with `source_kind` "import". A refused input leaves no snapshot: the archive
or chunk list is never renamed into place; in a chunked repository the chunks already
stored are referenced by nothing, and prune's sweep removes them.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

from volbackup import __version__
from volbackup.errors import InputRefused, NotFound, TargetNotEmpty, VolbackupError, reworded
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.ops.restore import resolve_ref
from volbackup.repo import locking
from volbackup.repo.manifest import VOLUME_NAME, Manifest
from volbackup.repo.repository import Repository, new_snapshot_id
from volbackup.stream import archive
from volbackup.stream.foreign import Normalised, normalised
from volbackup.timefmt import utc_iso

IMPORT_KIND = "import"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}


@dataclass
class ExportResult:
    snapshot: str
    file: str | None        # None: written to a stream (stdout)
    bytes: int              # bytes of the .tar.zst
    tar_bytes: int          # uncompressed tar bytes
    sha256: str             # of the .tar.zst
    entries: int


@dataclass
class ImportResult:
    repository: str
    snapshot: str
    volume: str
    format: str             # of the input: tar, gzip, bzip2, xz or zstd
    members: int            # in the input
    entries: int            # in the snapshot (the root included)
    root_added: bool        # the input had no root entry: one was made (0755, now)
    bytes: int
    stored_bytes: int
    sha256: str
    seconds: float


def export_snapshot(repo: Repository, ref: str, target: str | BinaryIO, force: bool = False,
                    level: int = 3, host: str | None = None,
                    progress: ProgressFactory = no_progress) -> ExportResult:
    """Write snapshot `ref` (an id, or a volume name for its newest) as one .tar.zst to
    the file named `target` (refused if it exists, unless `force`), or to the binary
    stream `target`. A file appears only whole and checked; a stream gets the end of the
    archive only then (so a reader sees a truncated archive, never a wrong one)."""
    repo.check_secrets(reading=True)
    if isinstance(target, str) and not force and os.path.lexists(target):
        raise TargetNotEmpty(f"{target} exists; nothing was written (give --force to "
                             f"replace it)")
    manifest = resolve_ref(repo, ref, host)
    with progress(manifest.snapshot, manifest.bytes) as update:
        unpacker = repo.unpacker(manifest, update)
        if not isinstance(target, str):
            try:
                packed = archive.pack(unpacker.chunks(), target, level)
                target.flush()
            except BrokenPipeError:
                raise VolbackupError("the reader of the archive went away before its end "
                                     "(broken pipe)") from None
            return _exported(manifest, None, packed)
        with FileInPlace(target, force) as out:
            packed = archive.pack(unpacker.chunks(), out, level)
    return _exported(manifest, target, packed)


def _exported(manifest: Manifest, file: str | None, packed: archive.Packed) -> ExportResult:
    return ExportResult(manifest.snapshot, file, packed.stored_bytes, packed.bytes,
                        packed.sha256, packed.entries)


class FileInPlace:
    """A temp file next to `path` (0600: an archive is as secret as its volume), renamed
    to `path` when the block ends cleanly and removed on any error or interrupt. Without
    `replace`, a file that appeared at `path` meanwhile is not overwritten either."""

    def __init__(self, path: str, replace: bool):
        self._path, self._replace = path, replace
        directory, name = os.path.split(os.path.abspath(path))
        self._temp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")

    def __enter__(self) -> BinaryIO:
        try:
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise VolbackupError(f"cannot write {self._path}: {e.strerror}") from None
        self._out = os.fdopen(fd, "wb")
        return self._out

    def __exit__(self, kind, error, tb) -> None:
        try:
            if kind is None:
                self._out.flush()
                os.fsync(self._out.fileno())
            self._out.close()
            if kind is None:
                self._publish()
        except OSError as e:
            self._discard()
            raise VolbackupError(f"cannot write {self._path}: {e.strerror}") from None
        except BaseException:
            self._discard()
            raise
        if kind is not None:
            self._discard()
            if issubclass(kind, OSError):
                raise VolbackupError(f"cannot write {self._path}: {error.strerror}") from None

    def _publish(self) -> None:
        if self._replace:
            os.replace(self._temp, self._path)
            return
        try:
            os.link(self._temp, self._path)  # fails if the name was taken meanwhile
        except FileExistsError:
            raise TargetNotEmpty(f"{self._path} appeared while it was written; nothing was "
                                 f"written (give --force to replace it)") from None
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            # vfat, exFAT, some network filesystems (a USB stick): check, then rename
            if os.path.lexists(self._path):
                raise TargetNotEmpty(f"{self._path} appeared while it was written; nothing "
                                     f"was written (give --force to replace it)") from None
            os.rename(self._temp, self._path)
            return
        os.unlink(self._temp)

    def _discard(self) -> None:
        try:
            self._out.close()
        except OSError:
            pass
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


def import_archive(repo: Repository, source: BinaryIO, volume: str, strip: int = 0,
                   labels: dict[str, str] | None = None, level: int = 3,
                   lock_wait: float = 60.0, progress: ProgressFactory = no_progress,
                   name: str = "the input") -> ImportResult:
    """Make a snapshot of volume `volume` (driver local, no options, `labels`) from the
    foreign tar archive read from `source` (volbackup.stream.foreign), `strip` leading
    name components dropped. Raises InputRefused, and makes no snapshot, for an input
    that is not a whole, safe tar (`name` says which in its message)."""
    if not VOLUME_NAME.fullmatch(volume):
        raise NotFound(f"{volume!r} is not a valid volume name ([A-Za-z0-9][A-Za-z0-9_.-]*)")
    started = time.monotonic()
    created = datetime.now(timezone.utc)
    snapshot_id = new_snapshot_id(volume, created)
    seen = Normalised()
    repo.check_secrets(reading=False)
    with repo.lock(locking.SHARED, lock_wait, "import"):
        try:
            with progress(volume, None) as update, \
                    repo.snapshot_writer(snapshot_id) as writer:
                packed = writer.pack(normalised(source, strip, seen), level, update)
        except InputRefused as e:
            raise reworded(e, f"{name} refused, no snapshot made: {e}") from None
        seconds = round(time.monotonic() - started, 3)
        repo.commit(Manifest(
            snapshot=snapshot_id, volume=volume, driver="local", driver_options={},
            labels=dict(labels or {}), created=utc_iso(created, "milliseconds"),
            host=socket.gethostname(), tool_version=__version__, archive=writer.archive,
            compression="zstd", level=level, bytes=packed.bytes,
            stored_bytes=packed.stored_bytes, sha256=packed.sha256, entries=packed.entries,
            seconds=seconds, source_kind=IMPORT_KIND, **writer.fields(packed)))
    return ImportResult(repo.describe(), snapshot_id, volume, seen.format, seen.members,
                        packed.entries, seen.root_added, packed.bytes, packed.stored_bytes,
                        packed.sha256, seconds)

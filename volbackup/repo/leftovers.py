"""What interrupted runs leave in a repository: orphaned data (an archive or chunk list
without its manifest) and unfinished writes (S3 multipart uploads, temp files). Found and
removed here, for prune and cleanup (one job of Repository, which stays the façade).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from volbackup.repo import catalogs
from volbackup.repo.backends import Backend, Leftover, TempFile, TempFiles, UnfinishedUploads
from volbackup.repo.chunked import LIST_SUFFIX
from volbackup.repo.layout import ARCHIVE_SUFFIX
from volbackup.repo.manifest import STAMP, VOLUME_NAME
from volbackup.repo.manifests import MANIFEST_SUFFIX, PREFIX, volume_of

_SUFFIXES = (ARCHIVE_SUFFIX, LIST_SUFFIX, catalogs.ARCHIVE_SUFFIX, catalogs.LIST_SUFFIX)
_ARCHIVE_KEY = re.compile(rf"{PREFIX}(?P<volume>{VOLUME_NAME.pattern})/(?P<stamp>{STAMP})"
                          rf"(?P<suffix>{'|'.join(re.escape(s) for s in _SUFFIXES)})")


@dataclass(frozen=True)


class Orphan:
    """An archive or chunk list without a manifest: left by a run that failed or was killed
    between its data and its manifest. Never a snapshot; only keys named by volbackup count."""

    key: str
    volume: str
    started: datetime       # UTC, from its stamp: when its backup started
    size: int


@dataclass(frozen=True)


class UnfinishedWrite:
    """A write that never finished and takes space: an S3 multipart upload ("upload") or a
    directory repository's temp file `.NAME.tmp-PID-PLACE-xxxx` ("temp"). Never a blob."""

    key: str                # the upload's object key, or the temp file's own key
    kind: str               # "upload" or "temp"
    since: datetime         # UTC: when the upload started; a temp file's last write
    size: int | None        # bytes stored so far, if known
    pid: int | None = None  # a temp file's writer, on the host that wrote it
    place: str | None = None  # processes.place() of that writer (None: an earlier version's)
    upload_id: str | None = None
    source: Leftover | TempFile | None = field(default=None, compare=False, repr=False)

    @property
    def volume(self) -> str:
        return volume_of(self.key)


class Leftovers:
    """Finds and removes what interrupted runs left under one backend."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def orphans(self) -> list[Orphan]:
        """Archives named by volbackup whose manifest does not exist, in key order."""
        blobs = list(self.backend.list(PREFIX))
        manifests = {b.key[:-len(MANIFEST_SUFFIX)] for b in blobs
                     if b.key.endswith(MANIFEST_SUFFIX)}
        out = []
        for blob in blobs:
            match = _ARCHIVE_KEY.fullmatch(blob.key)
            if not match or blob.key[:-len(match["suffix"])] in manifests:
                continue
            try:
                started = datetime.strptime(match["stamp"][:16], "%Y%m%dT%H%M%SZ")
            except ValueError:
                continue  # month 13: not named by volbackup, not ours to remove
            out.append(Orphan(blob.key, match["volume"], started.replace(tzinfo=timezone.utc),
                              blob.size))
        return out

    def remove_orphan(self, orphan: Orphan) -> None:
        if not _ARCHIVE_KEY.fullmatch(orphan.key):
            raise ValueError(f"not an archive key {orphan.key!r}")
        self.backend.delete(orphan.key)

    def unfinished_writes(self) -> list[UnfinishedWrite]:
        """S3 multipart uploads and temp files of writes that have not finished: those of
        killed runs, and those of runs still writing (judge them by `since` and `pid`)."""
        out = []
        if self.backend.has(UnfinishedUploads):
            out += [UnfinishedWrite(left.key, "upload", left.started, left.size,
                                    upload_id=left.ident, source=left)
                    for left in self.backend.leftovers()]
        if self.backend.has(TempFiles):
            out += [UnfinishedWrite(temp.key, "temp", temp.modified, temp.size, pid=temp.pid,
                                    place=temp.place, source=temp)
                    for temp in self.backend.temp_files()]
        return out

    def remove_unfinished(self, write: UnfinishedWrite) -> None:
        """Abort the upload, or remove the temp file."""
        if isinstance(write.source, Leftover):
            self.backend.remove_leftover(write.source)
        elif isinstance(write.source, TempFile):
            self.backend.remove_temp(write.source)
        else:
            raise ValueError(f"{write.key} was not found by unfinished_writes()")

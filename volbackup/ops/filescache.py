"""The files cache: a backup on the direct path does not read a file whose stat data
matches its parent snapshot's record of it; it takes that file's member whole, as the
blobs that hold it in the parent (docs/design.md, "The files cache").

Before tar starts, the volume is walked in tar's order (volbackup.docker.direct.walk)
beside the parent's reusable files (volbackup.repo.parentfiles), both in stream order.
Each entry is planned either as read by tar or as reused. A regular file is reused
only when:

- it has one link (a hard-linked file is read, so that tar pairs its names);
- its path, size, mode, owner, mtime (ns), ctime (ns) and inode are those the parent's
  catalogue recorded (`st`), which it records only for a file whose stat, taken just
  before tar read it, agreed with tar's header, and whose mtime and ctime were older
  than `settle` seconds before that backup began (a file being written, or a clock
  coarser than the change, would otherwise be trusted);
- every blob of its member is in the index outside the packs a prune plan dooms.

The plan goes to unlinked temporary files (tar's names, and the plan itself), so memory
does not grow with the number of files. Tar then reads the names alone, in that order
(volbackup.docker.direct.export with `listed`), and the reused members go back between
its members (volbackup.stream.splice). What changed while the plan was made is caught
by tar's header (its stat is then not recorded) or by ctime next time.
"""

from __future__ import annotations

import os
import pickle
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from tarfile import REGTYPE
from typing import BinaryIO, Callable, Iterable, Iterator

from volbackup.docker import direct
from volbackup.repo.parentfiles import ParentFile
from volbackup.stream.exclude import Matcher
from volbackup.stream.reuse import HostStat, Reused
from volbackup.stream.splice import Planned, Read, splice
from volbackup.stream.tarstream import Entry

SETTLE = 2.0    # seconds: a file changed this recently is read again next time


@dataclass
class CacheCounts:
    """What the files cache did in one read of a volume (backup --json reports it)."""

    parent: str | None = None     # the snapshot files were taken from
    files_read: int = 0           # regular files tar read
    bytes_read: int = 0           # ... their sizes
    files_reused: int = 0         # regular files taken whole from the parent
    bytes_reused: int = 0         # ... their sizes

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Plan:
    """A volume's entries in stream order, spilled to unlinked temporary files."""

    names: BinaryIO = field(default_factory=lambda: tempfile.TemporaryFile())
    items: BinaryIO = field(default_factory=lambda: tempfile.TemporaryFile())
    counts: CacheCounts = field(default_factory=CacheCounts)

    def add(self, item: Planned) -> None:
        pickle.dump(item, self.items, pickle.HIGHEST_PROTOCOL)

    def read_back(self) -> Iterator[Planned]:
        self.items.flush()
        self.items.seek(0)
        while True:
            try:
                yield pickle.load(self.items)
            except EOFError:
                return

    def close(self) -> None:
        self.names.close()
        self.items.close()


def make_plan(directory: str, parent: Iterable[ParentFile], indexed: Callable[[str], bool],
              matcher: Matcher | None, now: float, settle: float = SETTLE) -> Plan:
    """Walk `directory` beside the parent's reusable files and plan each entry."""
    plan = Plan()
    recent = int((now - settle) * 1e9)
    parents = iter(parent)
    ahead: ParentFile | None = next(parents, None)
    ahead_key = _key_of(ahead)
    excludes = matcher.excludes if matcher else (lambda name: False)
    try:
        for rel, st in direct.walk(directory, excludes):
            name = "./" + os.fsdecode(rel) if rel != b"." else "."
            regular = stat.S_ISREG(st.st_mode)
            host = None
            if regular and st.st_nlink == 1 and max(st.st_mtime_ns, st.st_ctime_ns) < recent:
                host = HostStat(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                                stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            reused = None
            if host is not None and ahead is not None:
                key = tuple(rel.split(b"/"))
                while ahead is not None and ahead_key < key:
                    ahead = next(parents, None)
                    ahead_key = _key_of(ahead)
                if ahead is not None and ahead_key == key:
                    reused = _reuse(name, host, ahead, indexed)
            if reused is not None:
                plan.add(reused)
                plan.counts.files_reused += 1
                plan.counts.bytes_reused += st.st_size
                continue
            plan.names.write((b"./" + rel if rel != b"." else b".") + b"\0")
            plan.add(Read(name, host))
            if regular:
                plan.counts.files_read += 1
                plan.counts.bytes_read += st.st_size
    except BaseException:
        plan.close()
        raise
    plan.names.flush()
    plan.names.seek(0)
    return plan


def _key_of(parent: ParentFile | None) -> tuple[bytes, ...]:
    if parent is None:
        return ()
    return tuple(os.fsencode(parent.entry.path).split(b"/"))


def _reuse(name: str, host: HostStat, parent: ParentFile,
           indexed: Callable[[str], bool]) -> Reused | None:
    """The parent's member of this file, if the file is what the parent recorded."""
    was = parent.entry
    if (was.size, was.mode, was.uid, was.gid, was.st) != (
            host.size, host.mode, host.uid, host.gid, host.key):
        return None
    if not all(indexed(blob_id) for blob_id, _ in parent.blobs):
        return None
    entry = Entry(name=name, type=REGTYPE, mode=was.mode, uid=was.uid, gid=was.gid,
                  mtime=was.mtime, size=was.size, host=host)
    return Reused(entry, parent.length, was.data - was.at, parent.blobs, was.sha256)


@contextmanager
def planned_export(directory: str, parent: Iterable[ParentFile],
                   indexed: Callable[[str], bool], matcher: Matcher | None,
                   settle: float = SETTLE, clock: Callable[[], float] = time.time
                   ) -> Iterator[tuple[Iterator[bytes | Reused | HostStat], CacheCounts]]:
    """The volume's stream as the plan makes it, and what the plan counted."""
    plan = make_plan(directory, parent, indexed, matcher, clock(), settle)
    try:
        with direct.export(directory, listed=plan.names) as pieces:
            yield splice(pieces, plan.read_back()), plan.counts
    finally:
        plan.close()

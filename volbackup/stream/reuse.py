"""What the files cache (volbackup.ops.filescache) puts into a tar stream besides bytes.

A backup with a parent snapshot does not read a file whose stat data matches the parent's
record of it: its member (headers, data, padding) is taken whole from the parent, as the
blobs that hold it there (with its neighbours, for small files that share blobs). Such
members travel down the backup pipeline as a `Reused` marker where their bytes would be:
the walker counts them and tells the catalogue, the cutter closes its open group before
them and passes them on, and the packer names their blobs in the data tree without
reading them. A `HostStat` comes just before the bytes of a member tar reads, so that
the catalogue records what the next backup compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from volbackup.stream.tarstream import Entry


@dataclass(frozen=True)
class HostStat:
    """This host's lstat of a regular file just before tar read it (or chose not to)."""

    ino: int
    mtime_ns: int
    ctime_ns: int
    size: int
    mode: int       # permission bits only
    uid: int
    gid: int

    @property
    def key(self) -> tuple[int, int, int]:
        """What a catalogue line keeps beside the tar header's fields (`st`)."""
        return (self.ino, self.mtime_ns, self.ctime_ns)

    def describes(self, entry: Entry) -> bool:
        """True when tar's header says what this stat said: the file did not change
        between the stat and the read (as far as the header can tell)."""
        return (entry.size == self.size and entry.mode & 0o7777 == self.mode
                and entry.uid == self.uid and entry.gid == self.gid
                and abs(entry.mtime * 1e9 - self.mtime_ns) < 2000)


class ReusedMember(NamedTuple):
    """One member of a Reused run, as the parent's catalogue line describes it."""

    name: str               # its member name (`./a/b`)
    mtime: float
    length: int             # bytes of the member: headers, data, padding
    header: int             # bytes of its headers (its data starts there)
    line: bytes             # the parent's catalogue line of it, passed on as is


class Reused(NamedTuple):
    """Members taken whole from the parent snapshot: a run of them that is exactly
    `blobs` there (one large file, or a group of small ones)."""

    members: tuple[ReusedMember, ...]
    blobs: tuple[tuple[str, int], ...]   # (id, length) in order, summing to `length`

    @property
    def length(self) -> int:
        return sum(m.length for m in self.members)


class HostsInOrder(NamedTuple):
    """Given first in a stream none of whose members is reused: the walker asks it for each
    member's HostStat (or None), by name, in stream order, instead of a HostStat coming
    before each member (which needs a second walker to find where members start)."""

    host_for: Callable[[str], HostStat | None]

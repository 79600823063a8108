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
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

from volbackup.docker import direct
from volbackup.errors import VolbackupError
from volbackup.repo.parentfiles import ParentRun
from volbackup.stream.exclude import Matcher
from volbackup.stream.reuse import HostStat, Reused, ReusedMember
from volbackup.stream.splice import Planned, Read, splice

SETTLE = 2.0    # seconds: a file changed this recently is read again next time
SPILL_BATCH = 512   # entries (read, or members of reused runs) pickled together
TAKEN_MOST = 512    # members of consecutive reused runs planned as one


@dataclass
class CacheCounts:
    """What the files cache did in one read of a volume (backup --json reports it)."""

    parent: str | None = None     # the snapshot files were taken from
    files_read: int = 0           # regular files tar read
    bytes_read: int = 0           # ... their sizes
    files_reused: int = 0         # regular files taken whole from the parent
    bytes_reused: int = 0         # ... their sizes
    problem: str | None = None    # why the parent could not be used whole

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Plan:
    """A volume's entries in stream order, spilled to unlinked temporary files."""

    names: BinaryIO = field(default_factory=lambda: tempfile.TemporaryFile())
    items: BinaryIO = field(default_factory=lambda: tempfile.TemporaryFile())
    counts: CacheCounts = field(default_factory=CacheCounts)
    batch: list = field(default_factory=list)   # items not yet spilled
    batched: int = 0                             # ... the entries they hold

    def add(self, item: Planned) -> None:
        """Spilled as tuples of plain values, SPILL_BATCH at a time (pickling them is
        several times cheaper than pickling the classes, and one at a time)."""
        if isinstance(item, Read):
            flat = (item.name, _flat_host(item.host))
            self.batched += 1
        else:
            flat = (tuple(map(tuple, item.members)), item.blobs)
            self.batched += len(item.members)
        self.batch.append(flat)
        if self.batched >= SPILL_BATCH:
            self._spill()

    def _spill(self) -> None:
        pickle.dump(self.batch, self.items, pickle.HIGHEST_PROTOCOL)
        self.batch.clear()
        self.batched = 0

    def read_back(self) -> Iterator[Planned]:
        if self.batch:
            self._spill()
        self.items.flush()
        self.items.seek(0)
        while True:
            try:
                batch = pickle.load(self.items)
            except EOFError:
                return
            for first, second in batch:
                if isinstance(first, str):
                    yield Read(first, HostStat(*second) if second else None)
                    continue
                yield Reused(tuple(ReusedMember._make(m) for m in first), second)

    def close(self) -> None:
        self.names.close()
        self.items.close()


class _Seen(NamedTuple):
    """An entry of the walk: its path (relative), its components, member name and lstat,
    and whether its stat may be trusted (recorded, or matched with the parent's)."""

    rel: bytes
    key: tuple[bytes, ...]
    name: str
    st: os.stat_result
    trusted: bool


def _flat_host(host: HostStat | None) -> tuple | None:
    return None if host is None else (host.ino, host.mtime_ns, host.ctime_ns, host.size,
                                      host.mode, host.uid, host.gid)


def make_plan(directory: str, parent: Iterable[ParentRun], indexed: Callable[[str], bool],
              matcher: Matcher | None, now: float, settle: float = SETTLE,
              counts: CacheCounts | None = None) -> Plan:
    """Walk `directory` beside the parent's reusable runs and plan each entry: a run is
    taken when the walk meets its members one after the other, each matching."""
    plan = Plan(counts=counts or CacheCounts())
    recent = int((now - settle) * 1e9)
    walked = (_seen(rel, st, recent) for rel, st in
              direct.walk(directory, matcher.excludes if matcher else None))
    back: deque[_Seen] = deque()    # entries read ahead for a run that did not match

    def next_seen() -> _Seen | None:
        return back.popleft() if back else next(walked, None)

    runs = _until_damage(parent, plan.counts)
    run = next(runs, None)
    run_key = run.members[0].key if run is not None else ()
    taken = _Taken(plan)
    try:
        while (seen := next_seen()) is not None:
            key = seen.key
            while run is not None and run_key < key:
                run = next(runs, None)
                run_key = run.members[0].key if run is not None else ()
            if run is not None and seen.trusted and run_key == key:
                members = [seen]
                for was in run.members[1:]:
                    following = next_seen()
                    if following is None:
                        break
                    members.append(following)
                    if following.key != was.key or not following.trusted:
                        break
                reused = _reuse(run, members, indexed)
                if reused is not None:
                    taken.add(reused)
                    plan.counts.files_reused += len(members)
                    plan.counts.bytes_reused += sum(m.st.st_size for m in members)
                    run = next(runs, None)
                    run_key = run.members[0].key if run is not None else ()
                    continue
                back.extendleft(reversed(members[1:]))
            taken.flush()
            _read(plan, seen)
        taken.flush()
    except BaseException:
        plan.close()
        raise
    plan.names.flush()
    plan.names.seek(0)
    return plan


class _Taken:
    """Consecutive runs taken from the parent, planned as one Reused of up to TAKEN_MOST
    members: what follows (splice, walker, cutter, packer) then handles an unchanged
    stretch of a volume once, not once a run."""

    def __init__(self, plan: Plan):
        self._plan = plan
        self._members: list[ReusedMember] = []
        self._blobs: list[tuple[str, int]] = []

    def add(self, reused: Reused) -> None:
        self._members += reused.members
        self._blobs += reused.blobs
        if len(self._members) >= TAKEN_MOST:
            self.flush()

    def flush(self) -> None:
        if self._members:
            self._plan.add(Reused(tuple(self._members), tuple(self._blobs)))
            self._members.clear()
            self._blobs.clear()


def _until_damage(parent: Iterable[ParentRun], counts: CacheCounts) -> Iterator[ParentRun]:
    """The parent's runs, ending at the first that cannot be read (a damaged or pruned
    parent): the files after it are read, and the result says why (`problem`)."""
    try:
        yield from parent
    except VolbackupError as e:
        counts.problem = f"parent snapshot {counts.parent} could not be read whole ({e}); " \
                         f"the files after that were read"


def _seen(rel: bytes, st: os.stat_result, recent: int) -> _Seen:
    """The walk's entry; its stat is trusted for a regular file of one link whose mtime
    and ctime are older than `recent` (ns)."""
    trusted = stat.S_ISREG(st.st_mode) and st.st_nlink == 1 \
        and st.st_mtime_ns < recent and st.st_ctime_ns < recent
    if rel == b".":
        return _Seen(rel, (), ".", st, trusted)
    return _Seen(rel, tuple(rel.split(b"/")), "./" + os.fsdecode(rel), st, trusted)


def _host(seen: _Seen) -> HostStat | None:
    st = seen.st
    if not seen.trusted:
        return None
    return HostStat(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                    stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _read(plan: Plan, seen: _Seen) -> None:
    plan.names.write((b"./" + seen.rel if seen.rel != b"." else b".") + b"\0")
    plan.add(Read(seen.name, _host(seen)))
    if stat.S_ISREG(seen.st.st_mode):
        plan.counts.files_read += 1
        plan.counts.bytes_read += seen.st.st_size


def _reuse(run: ParentRun, members: list[_Seen], indexed: Callable[[str], bool]
           ) -> Reused | None:
    """The parent's run, if the walk's `members` are its files as it recorded them."""
    if len(members) != len(run.members):
        return None
    taken = []
    for seen, was in zip(members, run.members):
        st = seen.st
        if not seen.trusted or seen.key != was.key or (
                was.size, was.mode, was.uid, was.gid, was.st) != (
                st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)):
            return None
        taken.append(ReusedMember(seen.name, was.mtime, was.end - was.at, was.hdr, was.line))
    if not all(indexed(blob_id) for blob_id, _ in run.blobs):
        return None
    return Reused(tuple(taken), run.blobs)


@contextmanager
def planned_export(directory: str, parent: str | None, runs: Iterable[ParentRun],
                   indexed: Callable[[str], bool], matcher: Matcher | None,
                   settle: float = SETTLE, clock: Callable[[], float] = time.time,
                   problem: str | None = None
                   ) -> Iterator[tuple[Iterator[bytes | Reused | HostStat], CacheCounts]]:
    """The volume's stream as the plan makes it, and what the plan counted; `parent`
    names the parent snapshot in what is counted, `problem` why it could not be used."""
    counts = CacheCounts(parent=parent, problem=problem)
    plan = make_plan(directory, runs, indexed, matcher, clock(), settle, counts)
    try:
        with direct.export(directory, listed=plan.names) as pieces:
            yield splice(pieces, plan.read_back(), reused=plan.counts.files_reused > 0), \
                plan.counts
    finally:
        plan.close()

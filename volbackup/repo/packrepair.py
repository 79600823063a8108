"""`repair-index`: rebuild a packed repository's index from its packs.

restic's `repair index` is the model. The index is a cache of what the packs' trailers
say, so it can always be made again: every pack stored is listed; a pack the loaded index
places blobs in (at the length the listing gives) keeps those entries, any other pack (not
indexed, or named only by an index object that is damaged, or of another length) is
indexed from its trailer, checked as every read checks it (the MAC first when encrypted).
New index objects name exactly the packs that are stored; then every index object that
was there before is removed. Entries of packs that are gone are dropped, so a backup no
longer counts on blobs nobody can read (it stores them again); the snapshots that used
them are damaged, and `verify` names them.

Under the exclusive lock (which excludes backups and prunes): no backup adds an index
object meanwhile. Killed after writing and before removing, both generations name the
same packs: the next run removes the older. Last, the plans a killed prune left are
dropped (volbackup.repo.pruneplan): a plan names packs to delete and index objects to
remove of the index this replaced, and the new index objects name those packs too, so a
prune carrying the plan out would leave them naming deleted packs. No backup counts on
a plan (none runs); its packs stay, and the next prune judges them again. A pack whose
trailer cannot be used is reported and left alone (`verify --packs` says more); `read_all`
ignores the old index and reads every trailer.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Iterator

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo import packindex, pruneplan
from volbackup.repo.backends import BadEntry, BlobNotFound
from volbackup.repo.packindex import BlobIndex, Entry, PackInfo
from volbackup.repo.packstore import ListingProblem, PackedBlobStore, index_parts
from volbackup.repo.sweep import ProgressFactory, _no_progress


@dataclass
class IndexRebuild:
    packs: int = 0                  # packs stored
    blobs: int = 0                  # blobs the new index names
    from_index: int = 0             # packs whose entries came from the old index
    from_trailers: int = 0          # packs indexed from their trailers
    lost_packs: int = 0             # packs the old index named that are gone
    lost_blobs: int = 0             # their blobs
    index_written: int = 0
    index_removed: int = 0
    plans_dropped: int = 0          # prune plans of killed prunes (see the top)
    dry_run: bool = False
    damaged_index: list[str] = field(default_factory=list)  # what loading the old index found
    problems: list[str] = field(default_factory=list)       # what the repair could not fix

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def rebuild_index(store: PackedBlobStore, read_all: bool = False, dry_run: bool = False,
                  progress: ProgressFactory = _no_progress) -> IndexRebuild:
    """Make the index name exactly the packs stored (see the top); the caller holds the
    exclusive lock. Index objects are written as they fill (WRITE_BLOBS blobs each):
    memory is the loaded index and one object's entries."""
    result = IndexRebuild(dry_run=dry_run)
    backend = store.backend
    old_keys = _index_keys(store)
    store.forget()
    index = BlobIndex() if read_all else store.index()
    if not read_all:
        result.damaged_index = list(store.loaded.problems)
    listed = _listed_packs(store)
    result.packs = len(listed)
    known = _IndexedPacks(index)
    written: set[str] = set()
    with progress("rebuilding the index", len(listed) or None) as update:
        for part in index_parts(_rebuilt(store, listed, known, result, update)):
            result.blobs += sum(len(entries) for _, entries in part)
            if not dry_run:
                written.add(store.write_index(part))
    gone = [info for info in index.packs if info.hex not in listed]
    result.lost_packs = len(gone)
    result.lost_blobs = sum(known.count(info) for info in gone)
    result.index_written = len(written)
    if dry_run:
        return result
    stale = [key for key in old_keys if key not in written]
    failed = 0
    for key, message in backend.delete_many(stale):
        result.problems.append(f"removing {key}: {message}")
        failed += 1
    result.index_removed = len(stale) - failed
    if not failed:
        for plan in pruneplan.read_plans(backend, store.cipher.mac).plans:
            pruneplan.remove_plan(backend, plan)
            result.plans_dropped += 1
    store.forget()
    return result


def _rebuilt(store: PackedBlobStore, listed: dict[str, int], known: "_IndexedPacks",
             result: IndexRebuild, update) -> Iterator[tuple[PackInfo, list[Entry]]]:
    """Each stored pack with its entries: from the old index where it names the pack at
    its stored length, else from its trailer."""
    for pack_id, size in listed.items():
        update(1)
        info = known.info(pack_id)
        if info is not None and info.length == size:
            result.from_index += 1
            yield info, known.entries(info)
            continue
        try:
            trailer = store.trailer(pack_id, size)
        except BlobNotFound:
            continue        # removed since the listing: not under the exclusive lock
        except (IntegrityError, BadEntry) as e:
            result.problems.append(f"{e}: not indexed (verify --packs)")
            continue
        result.from_trailers += 1
        yield (PackInfo(bytes.fromhex(pack_id), size, trailer.kind),
               [(r.id, r.offset, r.stored, r.plain) for r in trailer.records])


def _index_keys(store: PackedBlobStore) -> list[str]:
    """Every index object stored now (damaged ones too); an entry of index/ that cannot
    be listed stops the repair before anything is written."""
    keys = []
    for info in store.backend.list(packindex.PREFIX):
        if info.error:
            raise RepositoryError(f"{info.error}: the index cannot be rebuilt while part "
                                  f"of it cannot be listed")
        if packindex.index_name_of(info.key) is not None:
            keys.append(info.key)
    return keys


def _listed_packs(store: PackedBlobStore) -> dict[str, int]:
    """pack id -> size of every pack stored; a part of packs/ that cannot be listed stops
    the repair (an index without its packs would make backups store them again, and prune
    would not know they are used)."""
    listed: dict[str, int] = {}
    for entry in store.pack_listing():
        if isinstance(entry, ListingProblem):
            if entry.unreadable:
                raise RepositoryError(f"{entry.message}: the index cannot be rebuilt while "
                                      f"part of packs/ cannot be listed")
            continue
        listed[entry[0]] = entry[1]
    return listed


class _IndexedPacks:
    """The loaded index's entries by pack: positions sorted by (pack, offset) in an array
    (4 bytes a blob), so a pack's entries are one slice; a blob two index objects give
    at one place is one entry."""

    def __init__(self, index: BlobIndex):
        self._index = index
        ordinals, offsets = index.columns[0], index.columns[1]
        self._order = array("I", sorted(range(len(ordinals)),
                                        key=lambda i: ordinals[i] << 32 | offsets[i]))
        self._start: dict[bytes, tuple[int, int]] = {}
        first = 0
        for n in range(1, len(self._order) + 1):
            if n == len(self._order) or \
                    ordinals[self._order[n]] != ordinals[self._order[first]]:
                pack = index.packs[ordinals[self._order[first]]]
                self._start[pack.id] = (first, n)
                first = n
        self._info = {info.hex: info for info in index.packs
                      if info.id not in index.disputed}

    def info(self, pack_id: str) -> PackInfo | None:
        """How the index places the pack; None if it does not, or if two index objects
        disagree about it (then its trailer says, whichever object was loaded first)."""
        return self._info.get(pack_id)

    def count(self, info: PackInfo) -> int:
        first, end = self._start.get(info.id, (0, 0))
        return end - first

    def entries(self, info: PackInfo) -> list[Entry]:
        _, offsets, stored, plain = self._index.columns
        ids = self._index.ids
        first, end = self._start.get(info.id, (0, 0))
        entries: list[Entry] = []
        for i in self._order[first:end]:
            entry = (bytes(ids[i * packindex.ID:(i + 1) * packindex.ID]), offsets[i],
                     stored[i], plain[i])
            if not entries or entries[-1] != entry:
                entries.append(entry)
        return entries

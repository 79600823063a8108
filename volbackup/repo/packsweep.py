"""Prune's last step in a packed repository: drop the blobs no list names, pack by pack.

Run under the exclusive lock, after the snapshots to remove are gone (as the chunked
sweep, volbackup.repo.sweep, whose rules it keeps: every list under snapshots/ counts; if
any list, index object or pack listing cannot be read, nothing is removed; nothing younger
than `min_age` is removed or repacked, against a writer whose lock was broken as stale).

A pack whose blobs are all unused is removed; one whose unused share is at least
`repack_unused` has its used records copied, byte for byte (sealed ones with their sealed
keys: no identity is needed), into new packs, and is removed. Then, in this order (a pack
leaves the index before it is deleted, restic's rule): the new packs and their index
object, one compacted index object for every pack kept, the old index objects removed,
then the doomed packs. A kill at any point leaves every used blob indexed; what it leaves
besides (duplicates, unindexed packs) the next prune removes. Packs nothing indexes
(leftovers of killed backups) are removed once older than `min_age`.

Memory: the referenced ids (~100 bytes each) and the loaded index (48 bytes a blob), plus
the entries of the kept packs while the compacted index is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo import packindex, packs
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.packindex import Entry, PackInfo
from volbackup.repo.packstore import ListingProblem, PackedBlobStore
from volbackup.repo.sweep import BATCH, ChunkSweep, ProgressFactory, _no_progress, referenced_ids

REPACK_UNUSED = 0.2     # restic's default --max-unused is 5 %; borg 2 compacts at 10 %


@dataclass
class PackSweep(ChunkSweep):
    """A chunked sweep's counts (blobs for chunks), and what was done to packs."""

    packs: int = 0              # packs in the repository before
    packs_removed: int = 0      # whole (or would be)
    packs_repacked: int = 0     # their used blobs moved into new packs, then removed
    packs_written: int = 0
    unindexed_removed: int = 0  # packs no index object named (leftovers)
    index_written: int = 0
    index_removed: int = 0


@dataclass
class _Pack:
    info: PackInfo
    entries: list[tuple[bytes, int, int, int]]   # id, offset, stored, plain
    used: int = 0               # stored bytes of the copies that count
    unused: int = 0
    modified: datetime | None = None
    counted: set[bytes] = field(default_factory=set)   # the used blobs whose copy is this


def sweep(backend: Backend, store: PackedBlobStore, min_age: timedelta, now: datetime,
          dry_run: bool, gone: Collection[str] = (),
          progress: ProgressFactory = _no_progress,
          repack_unused: float = REPACK_UNUSED) -> PackSweep:
    result = PackSweep()
    referenced = referenced_ids(backend, gone, result, trees_in=store)
    if referenced is None:
        return result
    store.forget()                       # the index as it is now, under this lock
    index = store.index()
    if store.loaded.problems:
        result.problems += [f"nothing swept: {p}" for p in store.loaded.problems[:10]]
        return result
    listed: dict[str, tuple[int, datetime | None]] = {}
    unlisted: list[str] = []
    for entry in store.pack_listing():
        if isinstance(entry, ListingProblem):
            (unlisted if entry.unreadable else result.problems).append(entry.message)
            continue
        pack_id, size, modified = entry
        listed[pack_id] = (size, modified)
    result.packs = len(listed)
    if unlisted:
        # A pack in a directory that could not be listed would pass for missing, be left
        # out of the compacted index, and its blobs be lost with the old index objects.
        result.problems += [f"nothing swept: {p}" for p in unlisted[:10]]
        return result
    by_pack, in_missing = _group(index, listed, result)
    if _count_use(by_pack, referenced, in_missing, result):
        return result

    def old(modified: datetime | None) -> bool:
        return modified is None or now - modified >= min_age

    doomed: list[_Pack] = []
    repack: list[_Pack] = []
    for pack in by_pack.values():
        total = pack.used + pack.unused
        if not pack.unused:
            continue
        if not old(pack.modified):
            result.too_young += sum(1 for e in pack.entries if e[0] not in referenced)
            continue
        if not pack.used:
            doomed.append(pack)
        elif pack.unused >= repack_unused * total:
            repack.append(pack)
    unindexed = [(pack_id, size) for pack_id, (size, modified) in listed.items()
                 if bytes.fromhex(pack_id) not in by_pack and old(modified)]
    result.too_young += sum(1 for pack_id, (size, modified) in listed.items()
                            if bytes.fromhex(pack_id) not in by_pack and not old(modified))
    result.packs_removed = len(doomed)
    result.packs_repacked = len(repack)
    result.unindexed_removed = len(unindexed)
    result.removed = sum(len(p.entries) for p in doomed + repack) \
        - sum(1 for p in repack for e in p.entries if e[0] in referenced)
    freed = sum(p.info.length for p in doomed + repack) + sum(size for _, size in unindexed)
    moved = sum(p.used for p in repack)
    result.removed_bytes = freed - moved
    if dry_run or not (doomed or repack or unindexed):
        return result
    with progress("repacking", moved or None) as update:
        for pack in repack:
            _repack(backend, store, pack)
            update(pack.used)
    written = store.flush()       # the new packs, then their index object
    made = {pack_id for _, pack_ids in written for pack_id in pack_ids}
    result.packs_written = len(made)
    result.index_written = len(written)
    kept = [p for p in by_pack.values() if p not in doomed and p not in repack]
    # An index object this prune writes can be byte for byte one it loaded (a killed
    # prune's): written again, it is not removed.
    old_index = set(store.loaded.keys) - {key for key, _ in written}
    for part in _parts(kept):
        name, data = packindex.encode(part, store.cipher.mac)
        backend.write_bytes(packindex.index_key(name), data)
        old_index.discard(packindex.index_key(name))   # the same entries: the same name
        result.index_written += 1
    keys = sorted(old_index)
    result.index_removed = len(keys) - _delete(backend, keys, result, progress, "index")
    store.forget()
    # A repacked pack can come out byte for byte as one this prune dooms (the same records
    # moved again: a kill left both, and both were indexed): it is kept, under its name.
    keys = [packs.pack_key(p.info.hex) for p in doomed + repack if p.info.hex not in made] \
        + [packs.pack_key(pack_id) for pack_id, _ in unindexed]
    failed = _delete(backend, keys, result, progress, "removing packs")
    result.failed += failed
    return result


def _group(index, listed: dict, result: PackSweep
           ) -> tuple[dict[bytes, _Pack], set[bytes]]:
    """The index's entries by pack, and the ids placed in packs that are not there
    (reported, and left out of the compacted index: the next backup stores them again)."""
    by_pack: dict[bytes, _Pack] = {}
    missing: set[str] = set()
    in_missing: set[bytes] = set()
    seen: set[tuple[bytes, int]] = set()    # a pack named by two index objects counts once
    for blob_id, loc in index.entries():
        if loc.pack.hex not in listed:
            missing.add(loc.pack.hex)
            in_missing.add(blob_id)
            continue
        if (loc.pack.id, loc.offset) in seen:
            continue
        seen.add((loc.pack.id, loc.offset))
        pack = by_pack.get(loc.pack.id)
        if pack is None:
            pack = by_pack[loc.pack.id] = _Pack(loc.pack, [], modified=listed[loc.pack.hex][1])
        pack.entries.append((blob_id, loc.offset, loc.stored, loc.plain))
    for pack_id in sorted(missing)[:10]:
        result.problems.append(f"pack {pack_id} is in the index but missing from the "
                               f"repository: its blobs are lost (verify names the snapshots)")
    return by_pack, in_missing


def _count_use(by_pack: dict[bytes, _Pack], referenced: set[bytes], in_missing: set[bytes],
               result: PackSweep) -> int:
    """Used and unused bytes per pack: a referenced blob counts once, in the pack that
    holds the most blobs (the one least likely to be repacked); its other copies are
    unused. Returns how many referenced blobs no index entry places (those the index
    places in a pack that is gone are lost, and reported by _group): then nothing may be
    swept, since an unindexed pack may be what holds them (an index object deleted, or
    lost in a damaged repository: the packs are the only copy)."""
    copies: dict[bytes, list[tuple[_Pack, int]]] = {}
    for pack in by_pack.values():
        for blob_id, _, stored, _ in pack.entries:
            if blob_id in referenced:
                copies.setdefault(blob_id, []).append((pack, stored))
            else:
                pack.unused += stored
    result.stored = sum(len(p.entries) for p in by_pack.values())
    for blob_id, where in copies.items():
        where.sort(key=lambda c: -len(c[0].entries))
        (first, stored), rest = where[0], where[1:]
        first.used += stored
        first.counted.add(blob_id)
        for pack, stored in rest:
            pack.unused += stored
    lost = len(referenced - in_missing) - len(copies.keys() - in_missing)
    if lost:
        result.problems.append(f"nothing swept: {lost} chunks the snapshots name are in no "
                               f"index object (an index object removed or damaged?): their "
                               f"packs may be among those no index names; run verify --packs")
    return lost


def _repack(backend: Backend, store: PackedBlobStore, pack: _Pack) -> None:
    """Copy the records of `pack` that hold used blobs (the copies that count) into new
    packs, as they are stored."""
    key = packs.pack_key(pack.info.hex)
    try:
        data = backend.read_bytes(key, limit=pack.info.length + 1)
    except BlobNotFound:
        raise RepositoryError(f"pack {pack.info.hex} vanished while prune held the "
                              f"exclusive lock") from None
    where = f"pack {pack.info.hex}"
    if hashlib.sha256(data).hexdigest() != pack.info.hex:
        raise IntegrityError(f"{where} does not match its name (damaged): not repacked; "
                             f"run verify")
    length, flags = packs.parse_tail(data[-packs.TAIL_BYTES:], len(data), where)
    trailer = packs.parse_trailer(data[len(data) - packs.TAIL_BYTES - length:
                                       len(data) - packs.TAIL_BYTES],
                                  len(data), flags, store.cipher.mac, where)
    moving = set(pack.counted)
    for record in trailer.records:
        if record.id not in moving:
            continue
        stored = data[record.offset:record.offset + record.stored]
        sealed = trailer.slots[record.slot] if record.slot != packs.NO_SLOT else None
        store.save_record(record.id, record.kind, stored, record.plain, sealed)
        moving.discard(record.id)
    if moving:
        raise IntegrityError(f"{where}: its trailer lacks {len(moving)} blobs the index "
                             f"places in it: not repacked; run verify")


def _parts(kept: list[_Pack]):
    part, blobs = [], 0
    for pack in kept:
        entries: list[Entry] = pack.entries
        if part and blobs + len(entries) > packindex.WRITE_BLOBS:
            yield part
            part, blobs = [], 0
        part.append((pack.info, entries))
        blobs += len(entries)
    if part:
        yield part


def _delete(backend: Backend, keys: list[str], result: PackSweep,
            progress: ProgressFactory, label: str) -> int:
    """Delete `keys` in batches; how many failed (each reported, up to 10)."""
    failed = 0
    with progress(label, len(keys) or None) as update:
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            for key, message in backend.delete_many(batch):
                failed += 1
                if len(result.problems) < 10:
                    result.problems.append(f"{key}: not removed: {message}")
            update(len(batch))
    return failed

"""Prune's last step in a packed repository: drop the blobs no list names, pack by pack,
while other hosts back up (docs/design.md, "Prune with concurrent backups").

Run under the prune lock, which backups' shared locks do not conflict with, after the
snapshots to remove are gone. The rules of the chunked sweep (volbackup.repo.sweep) hold:
every list under snapshots/ counts; if any list or index object cannot be read, nothing
is removed; nothing younger than `min_age` is removed or repacked.

1. Plans a killed prune left are carried out first (`_carry_out`).
2-3. A pack whose blobs are all unused is doomed; one whose unused share is at least
   `repack_unused` has its used records copied, byte for byte (sealed ones with their
   sealed keys: no identity is needed), into new packs, and is doomed. The new packs, their
   index object and one compacted index object for every pack kept are written.
4. The plan (volbackup.repo.pruneplan) names the doomed packs and the index objects they
   supersede: from then on backups ignore those packs.
5. Wait for the locks that exist now (the runs that may have counted on a doomed blob).
6. Read the lists written since step 2: a doomed pack one of them needs is rescued; every
   pack that stays gets an index object if only superseded ones named it; the marker.
7. Delete the superseded index objects, then the doomed packs (a pack leaves the index
   before it is deleted, restic's rule), then the plan.
8. Delete packs no index object names (leftovers of killed runs) once older than
   `min_age` and than every run that holds a lock.
A kill at any point leaves every used blob indexed, and a plan the next prune finishes.

Memory: the referenced ids (~100 bytes each) and the loaded index (48 bytes a blob), plus
the entries of the kept packs while the compacted index is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.pauses import pause
from volbackup.repo import packs, pruneplan
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.packindex import PackInfo
from volbackup.repo.packstore import ListingProblem, PackedBlobStore, index_parts
from volbackup.repo.sweep import BATCH, ChunkSweep, ProgressFactory, _no_progress, referenced_ids
from volbackup.timefmt import utc_iso

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
    plan: str | None = None     # the name of the plan this prune wrote
    adopted: int = 0            # plans of killed prunes carried out first
    rescued: int = 0            # doomed packs kept: a snapshot made meanwhile needs them
    waiting_for: list[str] = field(default_factory=list)  # locks held past the wait
    notes: list[str] = field(default_factory=list)        # warnings, not failures


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
          repack_unused: float = REPACK_UNUSED, lock: str = "",
          waiting: pruneplan.Waiting | None = None) -> PackSweep:
    """`lock`: the key of the prune lock held (not needed for a dry run); `waiting`: how
    long, and by which clock, to wait for backups."""
    result = PackSweep()
    waiting = waiting or pruneplan.Waiting()
    if not dry_run:
        # Step 1: plans of killed prunes first. The prune lock is held, so their prunes
        # are gone (or their locks were broken as stale on the way in).
        found = pruneplan.read_plans(backend, store.cipher.mac)
        result.notes += [f"prune plan ignored: {p}" for p in found.problems]
        for plan in found.plans:
            result.adopted += 1
            if not _carry_out(backend, store, plan, None, lock, waiting, result, progress):
                return result
    lists: set[str] = set()
    store.forget()      # the index as it is now: plans carried out, backups' new packs
    referenced = referenced_ids(backend, gone, result, trees_in=store, read=lists)
    if referenced is None:
        return result
    store.forget()                       # the index as it is now
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
    result.packs_removed += len(doomed)
    result.packs_repacked = len(repack)
    result.unindexed_removed = len(unindexed)
    result.removed = sum(len(p.entries) for p in doomed + repack) \
        - sum(1 for p in repack for e in p.entries if e[0] in referenced)
    freed = sum(p.info.length for p in doomed + repack) + sum(size for _, size in unindexed)
    moved = sum(p.used for p in repack)
    result.removed_bytes = freed - moved
    if dry_run or not (doomed or repack or unindexed):
        return result
    # Step 3: the new packs and index objects, before anything goes.
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
    for key in _write_index(store, kept, result):
        old_index.discard(key)          # the same entries: the same name
    # Step 4: the plan. A pack this prune made is never doomed by it: with a nonce or a
    # fresh key it cannot come out byte for byte as a doomed one, and packs written before
    # nonces could (the same records moved again, a kill having left both indexed).
    plan = pruneplan.Plan(pruneplan.new_name(now), lock, utc_iso(now),
                          sorted(p.info.hex for p in doomed + repack if p.info.hex not in made),
                          sorted(old_index))
    if plan.doomed or plan.superseded:
        pruneplan.write_plan(backend, plan, store.cipher.mac)
        result.plan = plan.name
        pause("prune-planned")
        if not _carry_out(backend, store, plan, lists, lock, waiting, result, progress):
            # Nothing of this plan was deleted yet (the repacked copies are written).
            result.packs_removed -= len(doomed)
            result.removed = result.removed_bytes = result.unindexed_removed = 0
            return result
    # Step 8: packs no index object names (leftovers of killed runs), once old, and
    # older than every run that holds a lock now (a running backup indexes its packs
    # only when its snapshot is done).
    store.forget()
    indexed = {info.hex for info in store.index().packs}
    if store.loaded.problems:
        return result   # an index object unreadable now: no pack counts as unindexed
    since = pruneplan.oldest_lock(backend, lock)
    keys = [packs.pack_key(pack_id) for pack_id, _ in unindexed if pack_id not in indexed
            and (since is None or (listed[pack_id][1] or now) < since)]
    result.unindexed_removed = len(keys)
    result.failed += _delete(backend, keys, result, progress, "removing packs")
    return result


def _carry_out(backend: Backend, store: PackedBlobStore, plan: pruneplan.Plan,
               checked: set[str] | None, lock: str, waiting: pruneplan.Waiting,
               result: PackSweep, progress: ProgressFactory) -> bool:
    """Steps 5-7 of a plan (5-6 only if it has no checked marker yet): wait for the
    backups whose locks exist now, check the snapshot lists not in `checked` (None: all,
    for a plan this prune did not make), keep indexed and keep the packs they need,
    then delete. False when backups still run after the wait: the plan stays, for the
    next prune."""
    if plan.rescued is None:
        if plan.doomed:
            held = pruneplan.wait_for_locks(backend, lock, waiting)
            if held:
                result.waiting_for = [h.describe() for h in held]
                result.notes.append(
                    f"prune plan {plan.name}: {len(held)} run(s) still hold a lock after "
                    f"{waiting.seconds:g}s ({held[0].describe()}): its packs are left for "
                    f"the next prune")
                return False
        pause("prune-waited")
        if not _check(backend, store, plan, checked, result):
            return False
        pause("prune-checked")
    # Step 7: out of the index first, then the packs (restic's order). Not if this
    # prune's lock was broken meanwhile: another prune may have taken the plan over.
    store.confirm_lock()
    keys = sorted(set(plan.superseded) - set(plan.kept_index or ()))
    result.index_removed += len(keys) - _delete(backend, keys, result, progress, "index")
    pause("prune-deleting")
    keys = [packs.pack_key(p) for p in sorted(plan.deleting)]
    failed = _delete(backend, keys, result, progress, "removing packs")
    result.failed += failed
    if checked is None:     # a killed prune's plan: what it removed is this prune's count
        result.packs_removed += len(keys) - failed
    pruneplan.remove_plan(backend, plan)
    return True


def _check(backend: Backend, store: PackedBlobStore, plan: pruneplan.Plan,
           checked: set[str] | None, result: PackSweep) -> bool:
    """Step 6: every blob a list this prune has not seen names whose copies are all in
    doomed packs rescues one of them; every pack that stays and that only superseded
    index objects name gets a new index object; then the checked marker. False (nothing
    deleted) if a list or an index object cannot be read."""
    seen = set(checked or ())
    lists: set[str] = set()
    found = PackSweep()
    store.forget()      # the index the new snapshots' trees are read through
    referenced = referenced_ids(backend, (), found, trees_in=store, read=lists, skip=seen)
    store.forget()      # loaded after every manifest and list was read: it has their blobs
    index = store.index()
    if referenced is None or store.loaded.problems:
        result.problems += found.problems + [
            f"prune plan {plan.name} not carried out: {p}" for p in store.loaded.problems[:10]]
        return False
    doomed = set(plan.doomed)
    rescued: set[str] = set()
    for blob_id in referenced:
        where = index.all_locations(blob_id)
        if where and all(loc.pack.hex in doomed for loc in where):
            rescued.add(where[0].pack.hex)
    going = doomed - rescued
    superseded = set(plan.superseded)
    covered = {pack_id for key, named in store.loaded.packs_of.items()
               if key not in superseded for pack_id in named}
    orphaned: dict[bytes, _Pack] = {}
    offsets: set[tuple[bytes, int]] = set()
    for blob_id, loc in index.entries():
        if loc.pack.id in covered or loc.pack.hex in going \
                or (loc.pack.id, loc.offset) in offsets:
            continue
        offsets.add((loc.pack.id, loc.offset))
        orphaned.setdefault(loc.pack.id, _Pack(loc.pack, [])).entries.append(
            (blob_id, loc.offset, loc.stored, loc.plain))
    for pack_id in list(orphaned):
        try:
            backend.stat(packs.pack_key(pack_id.hex()))
        except BlobNotFound:
            del orphaned[pack_id]   # missing: left out, as step 2 leaves it out
    kept_index = _write_index(store, list(orphaned.values()), result)
    result.rescued += len(rescued)
    pruneplan.write_checked(backend, plan, sorted(rescued), kept_index, store.cipher.mac)
    return True


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


def _write_index(store: PackedBlobStore, kept: list[_Pack], result: PackSweep) -> list[str]:
    """Index objects for the packs `kept` (as many as WRITE_BLOBS needs); their keys."""
    keys = []
    for part in index_parts((pack.info, pack.entries) for pack in kept):
        keys.append(store.write_index(part))
        result.index_written += 1
    return keys


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

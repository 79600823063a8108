"""`verify --packs`: every pack against the index, and the index against the packs.

restic's `check` is the model: the structure of the repository, apart from the snapshots
that use it (which `verify SNAPSHOT` reads blob by blob). For each pack stored: its bytes
against its name (sha256, read as a stream), its trailer (MAC first when encrypted), and
its records against the index entries that place blobs in it; for each index entry, a
pack that exists and holds it. Reported, one line each: a pack missing, damaged, not what
the index says, an index object that cannot be used, a prune plan that cannot be used (its
MAC fails: forged, or altered; everyone ignores it); noted: blobs stored twice, packs no
index names (what a killed backup leaves; prune removes them once old), and the prune
plans pending (volbackup.repo.pruneplan: a prune that stopped waiting for backups, or was
killed; the next prune finishes them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from volbackup.errors import IntegrityError
from volbackup.repo import packs
from volbackup.repo.backends import BadEntry, BlobNotFound
from volbackup.repo.packstore import ListingProblem, PackedBlobStore
from volbackup.repo.sweep import ProgressFactory, _no_progress
from volbackup.stream.chunks import read_chunks


@dataclass
class PackCheck:
    packs: int = 0              # packs stored
    blobs: int = 0              # index entries
    bytes: int = 0              # bytes of the packs read
    duplicated: int = 0         # blobs with more than one copy (prune keeps one)
    unindexed: int = 0          # packs no index object names
    prune_plans: list[str] = field(default_factory=list)   # pending: their names
    doomed_packs: int = 0       # packs those plans will delete (and no marker rescued)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_packs(store: PackedBlobStore, progress: ProgressFactory = _no_progress) -> PackCheck:
    result = PackCheck()
    store.forget()
    index = store.index()
    result.problems += store.loaded.problems
    plans = store.loaded.plans      # read with the index (MACs checked), as a writer reads
    result.prune_plans = [plan.name for plan in plans.plans]
    result.doomed_packs = len(plans.doomed())
    result.problems += plans.problems
    listed: dict[str, int] = {}
    for entry in store.pack_listing():
        if isinstance(entry, ListingProblem):
            result.problems.append(entry.message)
        else:
            listed[entry[0]] = entry[1]
    result.packs = len(listed)
    expected: dict[str, set[tuple[bytes, int, int, int]]] = {}
    lengths: dict[str, int] = {}
    copies: dict[bytes, set[str]] = {}
    for blob_id, loc in index.entries():
        expected.setdefault(loc.pack.hex, set()).add(
            (blob_id, loc.offset, loc.stored, loc.plain))
        lengths[loc.pack.hex] = loc.pack.length
        copies.setdefault(blob_id, set()).add(loc.pack.hex)
    result.blobs = sum(len(e) for e in expected.values())
    result.duplicated = sum(1 for where in copies.values() if len(where) > 1)
    del copies
    for pack_id in sorted(set(expected) - set(listed)):
        result.problems.append(f"pack {pack_id} is missing: the index places "
                               f"{len(expected[pack_id])} blobs in it")
    with progress("checking packs", sum(listed.values()) or None) as update:
        for pack_id, size in sorted(listed.items()):
            problem = _check_one(store, pack_id, size, expected.get(pack_id),
                                 lengths.get(pack_id))
            if problem == "unindexed":
                result.unindexed += 1
            elif problem:
                result.problems.append(problem)
            result.bytes += size
            update(size)
    return result


def _check_one(store: PackedBlobStore, pack_id: str, size: int,
               expected: set | None, length: int | None) -> str | None:
    """A one-line problem with the pack, "unindexed", or None."""
    where = f"pack {pack_id}"
    digest = hashlib.sha256()
    try:
        with store.backend.open_read(packs.pack_key(pack_id)) as reader:
            for piece in read_chunks(reader):
                digest.update(piece)
        if digest.hexdigest() != pack_id:
            return f"{where} does not match its name (damaged, or replaced)"
        trailer = store.trailer(pack_id, size)
    except BlobNotFound:
        return f"{where} vanished while it was checked (a prune running?)"
    except (IntegrityError, BadEntry) as e:
        return f"{where}: {e}"
    if expected is None:
        return "unindexed"
    if length != size:
        return f"{where} is {size} bytes, the index says {length}"
    records = {(r.id, r.offset, r.stored, r.plain) for r in trailer.records}
    if expected - records:
        return (f"{where} does not hold {len(expected - records)} of the blobs the index "
                f"places in it")
    if records - expected:
        return f"{where} holds {len(records - expected)} blobs the index does not name"
    return None

"""Copying a tree snapshot between two packed repositories that name blobs alike (both
plain, or both encrypted under the same repository key), for `volbackup copy`
(volbackup.ops.copy; docs/design.md, "copy and verify").

The source's trees (the data's and the catalogue's) are walked piece by piece, each piece
checked as a reader checks it (volbackup.repo.trees.nodes). Every blob they name that the
target's index lacks (a copy in a pack a prune plan dooms does not count) is fetched from
the source, neighbours of one pack in one ranged read, and checked against its id
(tag, frame, length, id: the source is untrusted) before the target packs it, in the
order the trees name it: as it is stored when both stores seal alike, else from its frame
(sealed again with the target's own data key). A tree piece the target lacks is stored
from the bytes the walk checked. In a plain target a blob it holds already is read back
once per lock, and replaced if it is not what its id says (the rule of every copy into a
plain store). Nothing else is read from the source: a second copy of a snapshot that
shares most blobs with one copied before reads its tree pieces and its new blobs.

A catalogue's pieces are cut by a key (volbackup.repo.catalogtree): an encrypted
repository derives it from the repository key, so the same in both, and its tree is copied
as the data's is; a plain one derives it from its own config id, so its lines are read
from the source (checked) and cut again with the target's key.

The caller writes the manifest after `copy_snapshot` returns: the blobs are durable and
indexed by then (the target's `flush`), so a copy that fails or is killed leaves packs and
perhaps an index object, never a snapshot (the next copy reuses what is indexed, prune
removes what is not).

Memory: one tree piece per level, the pieces walked (one entry per ~1,000 blobs), the
fetches in flight (READERS groups of up to GROUP_BYTES); never the snapshot's list of
blobs. The target's store keeps a record of each blob it writes under its lock, as it does
for a backup.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from volbackup.errors import IntegrityError
from volbackup.repo import catalogtree, trees
from volbackup.repo.blobstore import CATALOG, DATA, TREE, Saved
from volbackup.repo.config import MAX_CHUNK
from volbackup.repo.manifest import Manifest
from volbackup.repo.packindex import Location
from volbackup.repo.packstore import CLAIMED, GROUP_BYTES, HELD, PackedBlobStore, StoredRecord
from volbackup.stream.archive import Progress, no_progress

READERS = 4     # fetches of the source (and read-backs of the target) in flight


@dataclass
class BlobCopy:
    """What copying one snapshot's blobs did."""

    blobs: int = 0          # blobs its trees name: data, catalogue pieces, tree pieces
    bytes: int = 0          # their plain bytes
    sent: int = 0           # of them, written to the target (lacked, or held wrong)
    sent_plain: int = 0     # plain bytes of those
    sent_bytes: int = 0     # stored bytes of those
    replaced: int = 0       # of `sent`: held by the target with wrong bytes
    packs: int = 0          # packs written
    index_objects: int = 0  # index objects written

    @property
    def present(self) -> int:
        """Blobs the target held already (and, plain, that checked out)."""
        return self.blobs - self.sent

    @property
    def present_bytes(self) -> int:
        return self.bytes - self.sent_plain


@dataclass(frozen=True)
class Sending:
    """How blobs go from one store to the other."""

    as_stored: bool         # records as stored (both plain; or the same key and recipients)
    check_held: bool        # read back what the target holds (a plain target)
    level: int              # zstd level of what is compressed again (tree pieces)


def copy_snapshot(source: PackedBlobStore, target: PackedBlobStore, manifest: Manifest,
                  sending: Sending, cut_keys: tuple[bytes, bytes],
                  progress: Progress = no_progress) -> tuple[BlobCopy, dict]:
    """Copy the blobs of the tree snapshot `manifest` (revealed) that `target` lacks, and
    make them durable and indexed there. `cut_keys`: the catalogue cut keys of source and
    target. The result, and the manifest's `catalog` field for the target (the source's,
    unless the catalogue was cut again)."""
    if not target.names_like(source):
        raise ValueError("copy_snapshot needs two stores that name blobs alike")
    where = f"snapshot {manifest.snapshot}"
    result = BlobCopy()
    data = trees.TreeRoot.from_fields(manifest.data, where)
    _copy_tree(source, target, data, DATA, MAX_CHUNK, sending, result, progress)
    field = manifest.catalog
    assert field is not None    # a tree manifest has one (Manifest._check_tree)
    source_key, target_key = cut_keys
    if source_key == target_key:
        root = catalogtree.check_field(field, where)
        _copy_tree(source, target, root, CATALOG, catalogtree.MAX_PIECE, sending, result,
                   no_progress)
    else:
        writer = catalogtree.CatalogTreeWriter(_Saving(target, sending, result),
                                               sending.level, target_key)
        field = catalogtree.recut(source, field, manifest.bytes, source_key, where, writer)
    made = target.flush()
    result.index_objects = len(made)
    result.packs = sum(len(packed) for _, packed in made)
    return result, field


@dataclass
class _Run:
    """Blobs that lie one after the other in one pack, up to GROUP_BYTES: read with one
    request. Fetched from the source (the target lacks them), or, `checking`, read back
    from a plain target (it holds them)."""

    checking: bool
    items: list[tuple[str, int, Location | None]]   # (id, length, first copy)
    end: int = 0
    size: int = 0

    def takes(self, location: Location | None) -> bool:
        last = self.items[-1][2]
        return location is not None and last is not None and location.pack == last.pack \
            and location.offset == self.end and self.size + location.stored <= GROUP_BYTES

    def add(self, blob_id: str, length: int, location: Location | None) -> None:
        self.items.append((blob_id, length, location))
        if location is not None:
            self.end, self.size = location.offset + location.stored, \
                self.size + location.stored

    def run(self, source: PackedBlobStore, target: PackedBlobStore) -> list:
        """StoredRecords from the source, or (checking) whether each is sound in the
        target; raises when a fetched blob has no copy that checks out."""
        located = [(i, n, loc) for i, n, loc in self.items if loc is not None]
        whole = len(located) == len(self.items)
        if self.checking:
            return target.are_sound(located) if whole \
                else [target.is_sound(i, n) for i, n, _ in self.items]
        return source.read_records(located) if whole and len(located) > 1 \
            else [source.read_record(i, n) for i, n, _ in self.items]


def _copy_tree(source: PackedBlobStore, target: PackedBlobStore, root: trees.TreeRoot,
               leaf_kind: str, max_length: int, sending: Sending, result: BlobCopy,
               progress: Progress) -> None:
    walked: dict[bytes, int] = {}
    claimed: set[bytes] = set()             # by this copy, not yet packed
    ahead: deque[tuple[Future, _Run]] = deque()
    runs: dict[bool, _Run] = {}             # the run being gathered: fetching, checking

    def put(blob_id: str, length: int, record: StoredRecord, replaced: bool = False) -> None:
        raw = bytes.fromhex(blob_id)
        stored = target.put_record(raw, leaf_kind, length, record, sending.as_stored,
                                   replaced)
        claimed.discard(raw)
        result.sent += 1
        result.sent_plain += length
        result.sent_bytes += stored
        result.replaced += 1 if replaced else 0

    def settle(future: Future, run: _Run) -> None:
        for (blob_id, length, _), outcome in zip(run.items, future.result()):
            if not run.checking:
                put(blob_id, length, outcome)
            elif not outcome:   # held with wrong bytes: the source's instead
                put(blob_id, length, source.read_record(blob_id, length), replaced=True)

    def submit(run: _Run) -> None:
        ahead.append((pool.submit(run.run, source, target), run))
        while len(ahead) > 2 * READERS or (ahead and ahead[0][0].done()):
            settle(*ahead.popleft())

    def gather(checking: bool, blob_id: str, length: int, location: Location | None) -> None:
        run = runs.get(checking)
        if run is not None and run.takes(location):
            run.add(blob_id, length, location)
            return
        if run is not None:
            submit(run)
        runs[checking] = _Run(checking, [])
        runs[checking].add(blob_id, length, location)

    with ThreadPoolExecutor(READERS, thread_name_prefix="volbackup-copy") as pool:
        try:
            for node in trees.nodes(source, root, walked, max_length):
                if node.piece is not None:
                    _put_piece(target, node, sending, result)
                    continue
                result.blobs += 1
                result.bytes += node.length
                if leaf_kind == DATA:
                    progress(node.length)
                raw = bytes.fromhex(node.id)
                state = target.claim(raw)
                if state == CLAIMED:
                    claimed.add(raw)
                    gather(False, node.id, node.length, source.first_location(node.id))
                elif state == HELD and sending.check_held:
                    gather(True, node.id, node.length, target.countable_location(node.id))
            for run in runs.values():
                submit(run)
            runs.clear()
            while ahead:
                settle(*ahead.popleft())
        except BaseException:
            for future, _ in ahead:
                future.cancel()
            target.release(claimed)
            raise


class _Saving:
    """The target's `save` as a catalogue cut again uses it (its pieces and its tree's):
    each counted in `result`, and one a plain target holds read back (`check_held`)."""

    def __init__(self, store: PackedBlobStore, sending: Sending, result: BlobCopy):
        self._store, self._sending, self._result = store, sending, result

    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        saved = self._store.save(data, level, self._sending.check_held, kind)
        _count(self._result, saved, len(data))
        return saved


def _count(result: BlobCopy, saved: Saved, length: int) -> None:
    result.blobs += 1
    result.bytes += length
    if saved.written:
        result.sent += 1
        result.sent_plain += length
        result.sent_bytes += saved.stored
        result.replaced += 1 if saved.replaced else 0


def _put_piece(target: PackedBlobStore, node: trees.Node, sending: Sending,
               result: BlobCopy) -> None:
    """A tree piece, from the bytes the walk loaded and checked."""
    assert node.piece is not None
    saved = target.save(node.piece, sending.level, verify_existing=sending.check_held,
                        kind=TREE)
    if saved.id != node.id:     # names_like said both name blobs alike
        raise IntegrityError(f"tree piece {node.id[:16]} is named {saved.id[:16]} in the "
                             f"target")
    _count(result, saved, node.length)

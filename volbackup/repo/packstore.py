"""The packed blob store: blobs in pack objects of ~16 MiB, found through an index.

restic's `internal/repository` is the model: `save` asks the index (and the packs this run
is filling), and only then compresses and packs the blob; full packs are written by an
uploader thread while the stream goes on; `flush` writes what is still open and then an
index object for this run's packs, so that a blob is named by an index object only once
its pack is durable, and a manifest (written after `flush`) only once both are
(docs/design.md, "Write ordering"). Nothing lists `packs/` but prune: "is this blob
stored?" is the index, loaded once per repository lock (a prune may have repacked in
between) and never trusted over the packs: every read checks the blob against its name.

Memory: the loaded index (about 51 bytes per blob); a pack filling (one per kind) and the
UPLOADS packs being written are spill files in the temporary directory ($TMPDIR), as in
restic, so they cost disk (up to 16 MiB each at the default size) and no memory.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.pauses import pause
from volbackup.repo.backends import Backend, BadEntry, BlobNotFound, RangeBeyondEnd
from volbackup.repo.blobstore import (DATA, TREE, BlobStore, Prepared, Saved,
                                      ThreadCompressors)
from volbackup.repo.chunkstore import open_frame
from volbackup.repo.crypto import PlainChunks, SealedChunks
from volbackup.repo import packindex, packs, pruneplan
from volbackup.repo.packindex import BlobIndex, Entry, Location, PackInfo
from volbackup.repo.packs import DATA_PACK, NO_SLOT, TREE_PACK, PackBuilder, Trailer

# Packs being written while the next one fills: one; a backup is bound by hashing and
# compressing, not by uploads (docs/performance.md).
UPLOADS = 1
UPLOAD_PIECE = 1 << 20      # read from a spill file and written at a time
INDEX_EARLY_BLOBS = 1 << 16   # a run indexes its packs once they hold this many blobs
# Spill files written and uploaded are kept (unlinked, still open) and written over by
# the next packs of this lock: pages of a file made afresh are pages the kernel must find
# and zero: 0.3-0.4 s of system CPU per 656 MiB of packs on the VM measured, 0.1 s written
# over (docs/performance.md, "The first backup's CPU per byte"). At most this many, of up to
# a pack's size each; closed when the lock ends (`forget`) or the store closes.
SPILLS_KEPT = UPLOADS + 2
# What has_room is asked for a pack's own data key before it is made: an age file of a
# 32-byte key to a few recipients takes far less than this.
_NEW_KEY = bytes(4096)
TRAILERS_KEPT = 64          # trailers of encrypted packs kept for their sealed keys
KEYS_KEPT = 256             # data keys opened
GROUP_BYTES = 2 << 20       # neighbouring blobs read in one request, up to this (restore)


@dataclass
class _OpenPack:
    builder: PackBuilder
    entries: list[Entry] = field(default_factory=list)
    data_key: bytes | None = None
    slot: int = NO_SLOT


@dataclass(frozen=True)
class StoredRecord:
    """One blob as a pack holds it, checked (tag, frame, length, id): what a copy into a
    store that names blobs the same way takes (`put_record`)."""

    stored: bytes               # the record's bytes in its pack
    frame: bytes                # its zstd frame (opened, when sealed)
    sealed_key: bytes | None    # the sealed data key it is sealed under (None: not sealed)
    pack_kind: int              # DATA_PACK or TREE_PACK: where it lies


@dataclass(frozen=True)
class _Opened:
    stored: bytes
    frame: bytes
    plain: bytes
    location: Location


# What `claim` finds: the caller must store the blob (then `put_record`, or `release`);
# it is stored and sound (written or checked under this lock, or being written by this
# run); it is indexed, not checked under this lock.
CLAIMED, SOUND, HELD = "claimed", "sound", "held"


@dataclass(frozen=True)
class ListingProblem:
    message: str
    unreadable: bool        # it may hide packs (prune then removes nothing)


@dataclass
class IndexLoad:
    """What loading the index found besides the blobs: objects it could not use."""

    objects: int = 0
    keys: list[str] = field(default_factory=list)      # of the objects loaded
    problems: list[str] = field(default_factory=list)
    packs_of: dict[str, list[bytes]] = field(default_factory=dict)  # key -> pack ids named
    plans: pruneplan.Plans = field(default_factory=pruneplan.Plans)  # read after the lock


class PackedBlobStore(BlobStore):
    def __init__(self, backend: Backend, cipher: PlainChunks | SealedChunks, pack_size: int,
                 uploads: int = UPLOADS, before_index: Callable[[], None] = lambda: None):
        self.backend = backend
        self._before_index = before_index       # raises if this run may not index now
        self.cipher = cipher
        self.encrypted = cipher.encrypted
        self.pack_size = pack_size
        self._uploads_max = uploads
        self._lock = threading.Lock()           # the index, pending, written
        self._pack_lock = threading.Lock()      # the packs being filled
        self._index: BlobIndex | None = None
        self.loaded = IndexLoad()
        self._pending: set[bytes] = set()       # in a pack not yet durable
        self._open: dict[int, _OpenPack] = {}
        self._uploading: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._written: list[tuple[PackInfo, list[Entry]]] = []   # durable, not yet indexed
        self._written_blobs = 0                 # ... their blobs
        self._indexed_early: list[tuple[str, list[str]]] = []   # see _index_early
        self._failed: BaseException | None = None
        self._sound: set[bytes] = set()         # checked under this lock (written: the index)
        self._reloaded_for: set[bytes] = set()  # packs gone, blobs unindexed: reloaded for
        self._compressor = ThreadCompressors()
        self._trailers: OrderedDict[bytes, dict[int, packs.Record]] = OrderedDict()
        self._trailer_slots: dict[bytes, tuple[bytes, ...]] = {}
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._read_lock = threading.Lock()
        self._spills: list[BinaryIO] = []      # spill files to write the next packs into
        self._spill_lock = threading.Lock()

    # -- naming and formatting
    def blob_id(self, data: bytes) -> str:
        return self.cipher.chunk_id(data)

    # -- the index
    def index(self) -> BlobIndex:
        """The index, loaded once under the current lock (with this run's packs added)."""
        with self._lock:
            return self._loaded()

    def _written_here(self, raw: bytes) -> bool:
        """Whether this run wrote the blob into a durable pack (sound: never doomed, and
        checked as it was written); the caller holds the lock."""
        return self._index is not None and self._index.written_here(raw)

    def _loaded(self) -> BlobIndex:
        if self._index is None:
            self._index, self.loaded = load_index(self.backend, self.cipher)
            pause("index-loaded")
        return self._index

    # -- writing
    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        blob_id = self.blob_id(data)
        raw = bytes.fromhex(blob_id)
        if self._held_or_claimed(raw):
            if not verify_existing or self._is_sound(raw, blob_id, len(data)):
                return Saved(blob_id, len(data))
            stored = self._append(raw, kind, self._compressor(level).compress(data), len(data))
            return Saved(blob_id, len(data), stored, replaced=True)
        stored = self._append_claimed(raw, kind, self._compressor(level).compress(data),
                                      len(data))
        return Saved(blob_id, len(data), stored)

    def _held_or_claimed(self, raw: bytes) -> bool:
        """True when the index or this run holds the blob; else it is claimed for this
        caller (`_append_claimed` packs it, or releases the claim when that fails)."""
        with self._lock:
            self._raise_failed()
            if raw in self._pending or self._loaded().has(raw):
                return True
            self._pending.add(raw)
            return False

    def _append_claimed(self, raw: bytes, kind: str, frame: bytes, plain: int,
                        sealed: tuple[bytes, bytes | None] | None = None) -> int:
        try:
            return self._append(raw, kind, frame, plain, sealed)
        except BaseException:
            with self._lock:
                self._pending.discard(raw)
            raise

    def prepare(self, data: bytes, level: int, verify_existing: bool = False,
                kind: str = DATA) -> Prepared:
        """Name the blob and, unless the index or this run holds it, compress it; nothing
        is claimed, so a blob twice in flight is compressed twice and packed once."""
        if verify_existing:
            return Prepared(self.save(data, level, verify_existing, kind))
        blob_id = self.blob_id(data)
        raw = bytes.fromhex(blob_id)
        with self._lock:
            self._raise_failed()
            held = raw in self._pending or self._loaded().has(raw)
        if held:
            return Prepared(Saved(blob_id, len(data)))
        return Prepared(None, blob_id, self._compressor(level).compress(data), len(data), kind)

    def commit(self, prepared: Prepared) -> Saved:
        """Pack a prepared blob (in the caller's order) unless it was packed meanwhile."""
        if prepared.saved is not None:
            return prepared.saved
        raw = bytes.fromhex(prepared.id)
        if self._held_or_claimed(raw):
            return Saved(prepared.id, prepared.length)
        stored = self._append_claimed(raw, prepared.kind, prepared.frame, prepared.length)
        return Saved(prepared.id, prepared.length, stored)

    def _is_sound(self, raw: bytes, blob_id: str, length: int) -> bool:
        """A blob the index has: written or checked under this lock, or read back now
        from a copy a writer may count on (a copy in a pack a prune plan dooms does not
        count, however sound: the pack may be deleted before this run's snapshot)."""
        with self._lock:
            if raw in self._sound or self._written_here(raw):
                return True
        try:
            self._read(blob_id, length, countable=True)
        except IntegrityError:
            return False
        with self._lock:
            self._sound.add(raw)
        return True

    def _append(self, raw: bytes, kind: str, frame: bytes, plain: int,
                sealed: tuple[bytes, bytes | None] | None = None) -> int:
        """Put one record into the open pack of its kind; close the pack when full.
        `sealed` (copy of a stored record): (stored bytes, its sealed data key or None)
        kept as they are."""
        pack_kind = TREE_PACK if kind == TREE else DATA_PACK
        seals = sealed is None and self.encrypted and pack_kind == DATA_PACK
        with self._pack_lock:
            pack = self._open.get(pack_kind)
            if pack is not None and not pack.builder.has_room(
                    sealed[1] if sealed is not None else
                    _NEW_KEY if seals and pack.data_key is None else None):
                self._close(pack_kind)
                pack = None
            if pack is None:
                pack = self._open[pack_kind] = self._new_pack(pack_kind)
            if sealed is not None:
                stored = sealed[0]
                slot = NO_SLOT if sealed[1] is None else pack.builder.slot(sealed[1])
            elif seals:
                if pack.data_key is None:   # made when a record needs it (not when repacking)
                    pack.data_key, sealed_key = self.cipher.new_data_key()
                    pack.slot = pack.builder.slot(sealed_key)
                stored, slot = self.cipher.seal_record(pack.data_key, raw, frame), pack.slot
            else:
                stored, slot = frame, NO_SLOT
            offset = pack.builder.add(raw, kind, stored, plain, slot)
            pack.entries.append((raw, offset, len(stored), plain))
            if len(pack.builder) >= self.pack_size:
                self._close(pack_kind)
        return len(stored)

    def _new_pack(self, pack_kind: int) -> _OpenPack:
        with self._spill_lock:
            spill = self._spills.pop() if self._spills else None
        if spill is None:
            spill = tempfile.TemporaryFile(prefix="volbackup-pack-")  # unlinked: a kill leaves none
        spill.seek(0)       # written over: what lies past the new pack's end is never read
        return _OpenPack(PackBuilder(pack_kind, self.cipher.mac, spill))

    def _keep_spill(self, spill: BinaryIO) -> None:
        with self._spill_lock:
            if len(self._spills) < SPILLS_KEPT:
                self._spills.append(spill)
                return
        spill.close()

    def _close_spills(self) -> None:
        with self._spill_lock:
            spills, self._spills = self._spills, []
        for spill in spills:
            spill.close()

    def _close(self, pack_kind: int) -> None:
        """Hand the open pack of this kind to an uploader (under the pack lock); wait while
        UPLOADS are being written already, which holds back whoever fills packs."""
        pack = self._open.pop(pack_kind, None)
        if pack is None or not pack.entries:
            return
        if pack.data_key is None:       # no fresh sealed key makes its bytes new: a nonce
            pack.builder.add_nonce()
        pack_id, size, body = pack.builder.finish_body()
        info = PackInfo(bytes.fromhex(pack_id), size, pack_kind)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._uploads_max,
                                            thread_name_prefix="volbackup-pack")
        while len(self._uploading) >= self._uploads_max:
            self._uploading.pop(0).exception()
            self._raise_failed()
        self._uploading.append(self._pool.submit(self._upload, info, body, pack.entries))

    def _upload(self, info: PackInfo, body: BinaryIO, entries: list[Entry]) -> None:
        try:
            with self.backend.open_write(packs.pack_key(info.hex)) as out:
                left = info.length      # the spill file may hold an older pack's bytes after
                while left:
                    piece = body.read(min(UPLOAD_PIECE, left))
                    if not piece:
                        raise OSError(f"spill file of pack {info.hex} ends {left} bytes short")
                    out.write(piece)
                    left -= len(piece)
        except BaseException as e:
            body.close()
            with self._lock:
                self._failed = self._failed or e
            raise
        self._keep_spill(body)
        with self._lock:
            if self._index is not None:
                self._index.add(info, entries)
            self._written.append((info, entries))
            self._written_blobs += len(entries)
            for raw, _, _, _ in entries:
                self._pending.discard(raw)
            ready = None
            if self._written_blobs >= INDEX_EARLY_BLOBS:
                ready, self._written, self._written_blobs = self._written, [], 0
        if ready:               # a long run: index its packs now, not all at its end
            self._index_early(ready)

    def _index_early(self, written: list[tuple[PackInfo, list[Entry]]]) -> None:
        """Index durable packs during the run, so that what waits for the run's end (and
        memory) does not grow with the blobs it writes; `flush` reports them."""
        try:
            made = self._write_indexes(written)
        except BaseException as e:
            with self._lock:
                self._failed = self._failed or e
            raise
        with self._lock:
            self._indexed_early += made
            if self._index is not None:
                self._index.fold()      # this run's blobs at 48 bytes each from now on

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def confirm_lock(self) -> None:
        """Raise LockLost if this process's lock was broken (before it indexes packs, and
        before prune deletes)."""
        self._before_index()

    def save_record(self, raw: bytes, kind: str, stored: bytes, plain: int,
                    sealed_key: bytes | None) -> int:
        """Put a record into a new pack as it is stored (sealed under `sealed_key`, which
        goes into the new pack's slots): prune's repacking, which holds no identity."""
        return self._append(raw, kind, b"", plain, (stored, sealed_key))

    def flush(self) -> list[tuple[str, list[str]]]:
        """Make every blob saved so far durable and indexed: close the open packs, wait
        for their uploads, then write an index object for the packs written since the
        last flush (several for a very long run). What a snapshot's lists and manifest
        are written after. The index objects written, and the packs each names."""
        with self._pack_lock:
            for pack_kind in list(self._open):
                self._close(pack_kind)
            uploading, self._uploading = self._uploading, []
        for future in uploading:
            future.exception()
        with self._lock:
            self._raise_failed()
            written, self._written, self._written_blobs = self._written, [], 0
            made, self._indexed_early = self._indexed_early, []
        return made + self._write_indexes(written)

    def _write_indexes(self, written: list[tuple[PackInfo, list[Entry]]]
                       ) -> list[tuple[str, list[str]]]:
        """Index objects for these durable packs (after this process's lock is confirmed):
        each one's key and the packs it names."""
        if written:
            self.confirm_lock()
        return [(self.write_index(part), [info.hex for info, _ in part])
                for part in index_parts(written)]

    def write_index(self, part: list[tuple[PackInfo, list[Entry]]]) -> str:
        """Write one index object naming these packs (`index_parts` sizes a part); its
        key. The caller has made the packs durable first."""
        name, data = packindex.encode(part, self.cipher.mac)
        key = packindex.index_key(name)
        self.backend.write_bytes(key, data)
        return key

    def forget(self) -> None:
        """A lock begins or ends: the index is loaded afresh next time. Packs still open
        (a run that failed) are dropped: nothing names their blobs."""
        with self._pack_lock:
            self._open.clear()
            uploading, self._uploading = self._uploading, []
        for future in uploading:
            future.exception()
        self._close_spills()
        with self._lock:
            self._index = None
            self._pending.clear()
            self._written, self._written_blobs, self._indexed_early = [], 0, []
            self._sound = set()
            self._reloaded_for = set()
            self._failed = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._close_spills()

    # -- reading
    def load(self, blob_id: str, length: int) -> tuple[bytes, int]:
        opened = self._read(blob_id, length)
        return opened.plain, len(opened.stored)

    def has(self, blob_id: str, length: int) -> bool:
        try:
            self._read(blob_id, length)
        except IntegrityError:
            return False
        return True

    def load_stored(self, blob_id: str, length: int) -> bytes:
        return self._read(blob_id, length).stored

    # -- copying blobs between two packed stores that name them alike (repo/packcopy.py)
    def names_like(self, other: "PackedBlobStore") -> bool:
        """Does this store give a blob the same id as `other` (both plain: sha256; both
        encrypted under the same repository key: the same keyed HMAC)?"""
        return self.cipher.same_names(other.cipher)

    def first_location(self, blob_id: str) -> Location | None:
        """Where a reader looks first for the blob (None: the index has no copy)."""
        found = self._locations(bytes.fromhex(blob_id))
        return found[0] if found else None

    def read_record(self, blob_id: str, length: int) -> StoredRecord:
        """The blob as stored, from the first copy that checks out (as `load` reads)."""
        return self._record_of(bytes.fromhex(blob_id), self._read(blob_id, length))

    def read_records(self, group: list[tuple[str, int, Location]]) -> list[StoredRecord]:
        """Neighbours of one pack (as `_groups` makes them) in one ranged read, each
        checked; one that fails is read alone, from any copy (`read_record`), which raises
        if none checks out."""
        first = group[0][2]
        total = sum(loc.stored for _, _, loc in group)
        try:
            data = self.backend.read_range(packs.pack_key(first.pack.hex), first.offset, total)
        except (BlobNotFound, RangeBeyondEnd, BadEntry):
            data = b""      # each is read alone: its own error, or another copy
        out = []
        for blob_id, length, loc in group:
            at = loc.offset - first.offset
            try:
                if len(data) != total:
                    raise IntegrityError("short group read")
                raw = bytes.fromhex(blob_id)
                stored = data[at:at + loc.stored]
                frame, plain = self._checked(raw, blob_id, length, loc, stored)
                out.append(self._record_of(raw, _Opened(stored, frame, plain, loc)))
            except IntegrityError:
                out.append(self.read_record(blob_id, length))
        return out

    def _record_of(self, raw: bytes, opened: _Opened) -> StoredRecord:
        loc = opened.location
        sealed = None
        if self.encrypted and loc.pack.kind == DATA_PACK:
            sealed = self._sealed_key(loc.pack, loc, raw)
        return StoredRecord(opened.stored, opened.frame, sealed, loc.pack.kind)

    def claim(self, raw: bytes) -> str:
        """Is the blob stored (SOUND, HELD), or must the caller store it (CLAIMED: the
        caller then calls `put_record`, or `release` if it cannot)? A blob only in packs
        a prune plan dooms is not stored (`BlobIndex.has`)."""
        with self._lock:
            self._raise_failed()
            if raw in self._pending or raw in self._sound or self._written_here(raw):
                return SOUND
            if self._loaded().has(raw):
                return HELD
            self._pending.add(raw)
            return CLAIMED

    def release(self, claimed: Iterable[bytes]) -> None:
        """Claims that will not be stored (a copy that failed)."""
        with self._lock:
            self._pending.difference_update(claimed)

    def is_sound(self, blob_id: str, length: int) -> bool:
        """A blob `claim` said is HELD: read back from a copy a writer may count on, and
        checked (once per lock)."""
        return self._is_sound(bytes.fromhex(blob_id), blob_id, length)

    def countable_location(self, blob_id: str) -> Location | None:
        """The first copy of a blob outside the packs a prune plan dooms (what `is_sound`
        reads first), or None."""
        with self._lock:
            index = self._loaded()
            return next((loc for loc in index.locations(bytes.fromhex(blob_id))
                         if loc.pack.id not in index.doomed), None)

    def are_sound(self, group: list[tuple[str, int, Location]]) -> list[bool]:
        """`is_sound` of held blobs that are neighbours in one pack (their countable
        copies, as `_groups` makes runs): one ranged read, each checked; one that fails
        is read back alone, from its other copies."""
        first = group[0][2]
        total = sum(loc.stored for _, _, loc in group)
        try:
            data = self.backend.read_range(packs.pack_key(first.pack.hex), first.offset, total)
        except (BlobNotFound, RangeBeyondEnd, BadEntry):
            data = b""
        out = []
        for blob_id, length, loc in group:
            raw = bytes.fromhex(blob_id)
            at = loc.offset - first.offset
            try:
                if len(data) != total:
                    raise IntegrityError("short group read")
                self._checked(raw, blob_id, length, loc, data[at:at + loc.stored])
            except IntegrityError:
                out.append(self._is_sound(raw, blob_id, length))
                continue
            with self._lock:
                self._sound.add(raw)
            out.append(True)
        return out

    def put_record(self, raw: bytes, kind: str, length: int, record: StoredRecord,
                   as_stored: bool, replaced: bool = False) -> int:
        """Pack a copied blob: as it was stored (`as_stored`, when both stores seal alike,
        and it lies in the kind of pack it goes to here), else its frame (sealed here if
        this store seals). Its stored bytes written. A claimed blob is unclaimed if this
        fails; one put again (`replaced`: held with wrong bytes) is sound from now on."""
        pack_kind = TREE_PACK if kind == TREE else DATA_PACK
        sealed = (record.stored, record.sealed_key) \
            if as_stored and record.pack_kind == pack_kind else None
        if replaced:
            stored = self._append(raw, kind, record.frame, length, sealed)
            with self._lock:
                self._sound.add(raw)
            return stored
        return self._append_claimed(raw, kind, record.frame, length, sealed)

    def save_stored(self, blob_id: str, length: int, fetch: Callable[[], bytes]) -> Saved:
        """(Plain stores only: `stores_like`.) A record as another plain store keeps it."""
        raw = bytes.fromhex(blob_id)
        if self._held_or_claimed(raw):
            if self._is_sound(raw, blob_id, length):
                return Saved(blob_id, length)
            stored = self._append(raw, DATA, b"", length, (fetch(), None))
            return Saved(blob_id, length, stored, replaced=True)
        stored = self._append_claimed(raw, DATA, b"", length, (fetch(), None))
        return Saved(blob_id, length, stored)

    def stores_like(self, other: BlobStore) -> bool:
        return self.plain_frames and other.plain_frames

    def indexed(self, blob_id: str) -> bool:
        with self._lock:
            return self._loaded().has(bytes.fromhex(blob_id))

    def reuse(self, blob_id: str, length: int) -> Saved:
        """A blob of a file the files cache did not read: held as a deduplicated one is
        (a copy outside doomed packs), or BlobMissing, which fails this read."""
        raw = bytes.fromhex(blob_id)
        with self._lock:
            self._raise_failed()
            held = raw in self._pending or self._loaded().has(raw)
        if not held:
            raise ChunkMissing(f"blob {blob_id[:16]} of a file the parent snapshot holds "
                              f"left the index during the backup; reading the volume again")
        return Saved(blob_id, length)

    def _locations(self, raw: bytes) -> list[Location]:
        with self._lock:
            waiting = raw in self._pending
        if waiting:        # in a pack of this run not yet written: write it first
            self.flush_packs()
        with self._lock:
            return self._loaded().locations(raw)

    def flush_packs(self) -> None:
        """Close and write the open packs (no index object: `flush` writes those)."""
        with self._pack_lock:
            for pack_kind in list(self._open):
                self._close(pack_kind)
            uploading = list(self._uploading)
        for future in uploading:
            future.exception()
        with self._lock:
            self._raise_failed()

    def _read(self, blob_id: str, length: int, countable: bool = False) -> _Opened:
        """The stored bytes, frame and plaintext of a blob, from the first of its copies
        that checks out (`countable`: of those outside doomed packs only); ChunkMissing when the index
        has none, IntegrityError when none is sound."""
        raw = bytes.fromhex(blob_id)
        while True:
            locations = self._locations(raw)
            if countable:
                with self._lock:
                    doomed = self._loaded().doomed
                locations = [loc for loc in locations if loc.pack.id not in doomed]
            if not locations:
                if not countable and self._reload_for({raw}):
                    continue
                raise ChunkMissing(f"chunk {blob_id} is missing (no index entry)")
            error: IntegrityError | None = None
            gone: set[bytes] = set()
            for location in locations:
                try:
                    return self._read_at(raw, blob_id, length, location)
                except ChunkMissing as e:       # its pack is gone
                    gone.add(location.pack.id)
                    error = error or e
                except IntegrityError as e:
                    error = error or e
            assert error is not None
            if not self._reload_for(gone):
                raise error

    def _reload_for(self, gone: set[bytes]) -> bool:
        """A pack the index names is gone (a prune may have moved its blobs since the
        index was loaded: a reader holds no lock), or a blob it lacks is asked for (a
        snapshot written since: prune walks the trees of manifests it lists after its
        index was loaded). Load the index again, keeping this run's own packs, once per
        pack or blob id; False if each was reloaded for already (then it is missing:
        damage, or a snapshot removed meanwhile)."""
        with self._lock:
            if gone <= self._reloaded_for:
                return False
            self._reloaded_for |= gone
            mine = self._loaded().added()
            self._index = None          # not two indexes in memory
            self._index, self.loaded = load_index(self.backend, self.cipher)
            for pack, entries in mine:
                self._index.add(pack, entries)
        return True

    def load_many(self, entries: Iterable[tuple[str, int]], readers: int
                  ) -> Iterator[tuple[bytes, int]]:
        """As BlobStore.load_many, with neighbours read together: blobs a snapshot names
        one after the other lie one after the other in a pack (they were packed in stream
        order), so a run of them, up to GROUP_BYTES, is one ranged read (one request on
        S3 instead of ~60 for a 2 MiB run of 32 KiB blobs). A blob of a run that does not
        check out is read again by itself, from any other copy (`load`)."""
        with ThreadPoolExecutor(max(1, readers // 2), thread_name_prefix="volbackup-fetch") \
                as pool:
            ahead: deque[Future] = deque()
            try:
                for group in self._groups(entries):
                    ahead.append(pool.submit(self._load_group, group))
                    if len(ahead) >= max(1, readers // 2):
                        yield from _released(ahead.popleft().result())
                while ahead:
                    yield from _released(ahead.popleft().result())
            finally:
                for future in ahead:
                    future.cancel()

    def _groups(self, entries: Iterable[tuple[str, int]]
                ) -> Iterator[list[tuple[str, int, Location | None]]]:
        """Runs of entries whose first copies are neighbours in one pack."""
        group: list[tuple[str, int, Location | None]] = []
        end = size = 0
        for blob_id, length in entries:
            found = self._locations(bytes.fromhex(blob_id))
            loc = found[0] if found else None
            if group and loc is not None and group[-1][2] is not None \
                    and loc.pack == group[-1][2].pack and loc.offset == end \
                    and size + loc.stored <= GROUP_BYTES:
                group.append((blob_id, length, loc))
                end, size = end + loc.stored, size + loc.stored
                continue
            if group:
                yield group
            group = [(blob_id, length, loc)]
            end, size = (loc.offset + loc.stored, loc.stored) if loc else (0, 0)
        if group:
            yield group

    def _load_group(self, group: list[tuple[str, int, Location | None]]
                    ) -> list[tuple[bytes, int] | IntegrityError]:
        """The group's blobs in order; the first that fails (read alone too) ends the
        list as its error, so that every blob before it is still released."""
        if len(group) == 1:
            blob_id, length, _ = group[0]
            try:
                return [self.load(blob_id, length)]
            except IntegrityError as e:
                return [e]
        first = group[0][2]
        assert first is not None
        total = sum(loc.stored for _, _, loc in group if loc is not None)
        try:
            data = self.backend.read_range(packs.pack_key(first.pack.hex), first.offset, total)
        except (BlobNotFound, RangeBeyondEnd, BadEntry):
            data = b""      # each is read alone: its own error, or another copy
        out = []
        view = memoryview(data)     # each record a slice of the read, not a copy
        for blob_id, length, loc in group:
            assert loc is not None
            at = loc.offset - first.offset
            try:
                if len(data) != total:
                    raise IntegrityError("short group read")
                plain = self._open_record(bytes.fromhex(blob_id), blob_id, length, loc,
                                          view[at:at + loc.stored])
                out.append((plain, loc.stored))
            except IntegrityError:
                try:
                    out.append(self.load(blob_id, length))
                except IntegrityError as e:
                    out.append(e)
                    break
        return out

    def _read_at(self, raw: bytes, blob_id: str, length: int,
                 location: Location) -> _Opened:
        pack = location.pack
        try:
            stored = self.backend.read_range(packs.pack_key(pack.hex), location.offset,
                                             location.stored)
        except BlobNotFound:
            raise ChunkMissing(f"chunk {blob_id} is missing (its pack {pack.hex} is "
                               f"gone)") from None
        except (RangeBeyondEnd, BadEntry) as e:
            raise IntegrityError(f"chunk {blob_id}: pack {pack.hex} is not what the index "
                                 f"says ({e})") from None
        frame, plain = self._checked(raw, blob_id, length, location, stored)
        return _Opened(stored, frame, plain, location)

    def _open_record(self, raw: bytes, blob_id: str, length: int, location: Location,
                     stored: bytes | memoryview) -> bytes:
        """A record's plaintext, checked (tag, frame, length, id)."""
        return self._checked(raw, blob_id, length, location, stored)[1]

    def _checked(self, raw: bytes, blob_id: str, length: int, location: Location,
                 stored: bytes | memoryview) -> tuple[bytes | memoryview, bytes]:
        """A record's frame and plaintext, checked (tag, frame, length, id)."""
        pack = location.pack
        if location.plain != length:
            raise IntegrityError(f"chunk {blob_id} holds {location.plain} bytes (index), the "
                                 f"chunk list says {length}")
        frame = stored
        if self.encrypted and pack.kind == DATA_PACK:
            key = self._data_key(pack, location, raw)
            frame = self.cipher.open_record(key, raw, stored)
        return frame, open_frame(frame, blob_id, length, self.cipher.chunk_id)

    def _data_key(self, pack: PackInfo, location: Location, raw: bytes) -> bytes:
        """The data key of the record at `location`: its slot in the pack's trailer (read
        once, MAC checked), that slot's sealed key opened with the identity (once)."""
        sealed = self._sealed_key(pack, location, raw)
        with self._read_lock:
            key = self._keys.get(sealed)
        if key is None:
            key = self.cipher.open_data_key(sealed, f"data key of pack {pack.hex}")
            with self._read_lock:
                self._keys[sealed] = key
                while len(self._keys) > KEYS_KEPT:
                    self._keys.popitem(last=False)
        return key

    def _sealed_key(self, pack: PackInfo, location: Location, raw: bytes) -> bytes:
        """The sealed data key of the record at `location`, from its pack's trailer (read
        once, MAC checked), which must place the record where the index does."""
        with self._read_lock:
            records = self._trailers.get(pack.id)
        if records is None:
            trailer = packs.read_trailer(self.backend, pack.hex, pack.length, self.cipher.mac)
            records = {r.offset: r for r in trailer.records}
            with self._read_lock:
                self._trailers[pack.id] = records
                self._trailer_slots[pack.id] = trailer.slots
                while len(self._trailers) > TRAILERS_KEPT:
                    gone, _ = self._trailers.popitem(last=False)
                    self._trailer_slots.pop(gone, None)
        record = records.get(location.offset)
        if record is None or record.id != raw or record.stored != location.stored \
                or record.plain != location.plain or record.slot == NO_SLOT:
            raise IntegrityError(f"chunk {raw.hex()}: the index and pack {pack.hex}'s "
                                 f"trailer disagree")
        with self._read_lock:
            return self._trailer_slots[pack.id][record.slot]

    # -- what prune and verify look at
    def pack_listing(self) -> Iterator[tuple[str, int, object] | ListingProblem]:
        """(pack id, size, modified) of every pack stored, and a problem for each entry
        under packs/ that is not one: `unreadable` when it may hide packs (a directory
        that cannot be listed, a symlink), else a foreign file, left alone."""
        for info in self.backend.list(packs.PREFIX):
            pack_id = packs.pack_id_of(info.key)
            if info.error:
                yield ListingProblem(info.error, unreadable=True)
            elif pack_id is None:
                yield ListingProblem(f"{info.key} in repository {self.backend.describe()} "
                                     f"is not a pack (left alone)", unreadable=False)
            else:
                yield pack_id, info.size, info.modified

    def trailer(self, pack_id: str, size: int) -> Trailer:
        return packs.read_trailer(self.backend, pack_id, size, self.cipher.mac)


def _released(results: list) -> Iterator[tuple[bytes, int]]:
    for result in results:
        if isinstance(result, IntegrityError):
            raise result
        yield result


def index_parts(written: Iterable[tuple[PackInfo, list[Entry]]]
                ) -> Iterator[list[tuple[PackInfo, list[Entry]]]]:
    """Packs in groups of at most WRITE_BLOBS blobs: one index object each."""
    part: list[tuple[PackInfo, list[Entry]]] = []
    blobs = 0
    for pack, entries in written:
        if part and blobs + len(entries) > packindex.WRITE_BLOBS:
            yield part
            part, blobs = [], 0
        part.append((pack, entries))
        blobs += len(entries)
    if part:
        yield part


def load_index(backend: Backend, cipher: PlainChunks | SealedChunks
               ) -> tuple[BlobIndex, IndexLoad]:
    """Every index object of the repository, merged. One that cannot be read or fails
    its checks is left out and named in the result's problems: a backup then stores its
    blobs again, and verify reports it (docs/design.md). The prune plans are read first
    (the caller's lock is written: volbackup.repo.pruneplan): their doomed packs are
    marked in the index, so that a writer does not count on them."""
    loaded, objects = IndexLoad(), []
    loaded.plans = pruneplan.read_plans(backend, cipher.mac)
    for info in backend.list(packindex.PREFIX):
        name = packindex.index_name_of(info.key)
        if info.error or name is None:
            loaded.problems.append(info.error or f"{info.key} is not an index object "
                                                 f"(left alone)")
            continue
        where = f"index object {name}"
        try:
            raw = backend.read_bytes(info.key, limit=packindex.MAX_BYTES)
            if len(raw) > packindex.MAX_BYTES:
                raise IntegrityError(f"{where} is larger than an index object can be")
            if hashlib.sha256(raw).hexdigest() != name:
                raise IntegrityError(f"{where} does not match its name (damaged)")
            objects.append(packindex.decode(raw, cipher.mac, where))
            loaded.keys.append(info.key)
            loaded.packs_of[info.key] = [p.id for p in objects[-1].packs]
        except BlobNotFound:
            continue        # removed by a prune since the listing
        except (IntegrityError, BadEntry) as e:
            loaded.problems.append(str(e))
    loaded.objects = len(objects)
    index = BlobIndex(objects)
    index.doomed = loaded.plans.doomed()
    loaded.problems.extend(index.conflicts)
    return index, loaded



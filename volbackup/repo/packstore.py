"""The packed blob store: blobs in pack objects of ~16 MiB, found through an index.

restic's `internal/repository` is the model: `save` asks the index (and the packs this run
is filling), and only then compresses and packs the blob; full packs are written by two
uploader threads while the stream goes on; `flush` writes what is still open and then an
index object for this run's packs, so that a blob is named by an index object only once
its pack is durable, and a manifest (written after `flush`) only once both are
(docs/design.md, "Write ordering"). Nothing lists `packs/` but prune: "is this blob
stored?" is the index, loaded once per repository lock (a prune may have repacked in
between) and never trusted over the packs: every read checks the blob against its name.

Memory: the loaded index (48 bytes per blob), one pack filling per kind, and at most
UPLOADS packs being written.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import zstandard

from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.repo.backends import Backend, BadEntry, BlobNotFound, RangeBeyondEnd
from volbackup.repo.blobstore import DATA, TREE, BlobStore, Saved
from volbackup.repo.chunkstore import open_frame
from volbackup.repo.crypto import PlainChunks, SealedChunks
from volbackup.repo import packindex, packs
from volbackup.repo.packindex import BlobIndex, Entry, Location, PackInfo
from volbackup.repo.packs import DATA_PACK, NO_SLOT, TREE_PACK, PackBuilder, Trailer

# Packs being written while the next one fills: one, so that a backup holds two packs
# (32 MiB at the default size) besides what the chunked path holds (peak RSS < 150 MB,
# docs/performance.md); a backup is bound by hashing and compressing, not by uploads.
UPLOADS = 1
TRAILERS_KEPT = 64          # trailers of encrypted packs kept for their sealed keys
KEYS_KEPT = 256             # data keys opened


@dataclass
class _OpenPack:
    builder: PackBuilder
    entries: list[Entry] = field(default_factory=list)
    data_key: bytes | None = None
    slot: int = NO_SLOT


@dataclass
class IndexLoad:
    """What loading the index found besides the blobs: objects it could not use."""

    objects: int = 0
    keys: list[str] = field(default_factory=list)      # of the objects loaded
    problems: list[str] = field(default_factory=list)


class PackedBlobStore(BlobStore):
    def __init__(self, backend: Backend, cipher: PlainChunks | SealedChunks, pack_size: int,
                 uploads: int = UPLOADS):
        self.backend = backend
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
        self._failed: BaseException | None = None
        self._sound: set[bytes] = set()         # checked (or written) under this lock
        self._local = threading.local()
        self._trailers: OrderedDict[bytes, dict[int, packs.Record]] = OrderedDict()
        self._trailer_slots: dict[bytes, tuple[bytes, ...]] = {}
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._read_lock = threading.Lock()

    # -- naming and formatting
    def blob_id(self, data: bytes) -> str:
        return self.cipher.chunk_id(data)

    def _compressor(self, level: int) -> zstandard.ZstdCompressor:
        if not hasattr(self._local, "compressors"):
            self._local.compressors = {}
        made = self._local.compressors
        if level not in made:
            made[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return made[level]

    # -- the index
    def index(self) -> BlobIndex:
        """The index, loaded once under the current lock (with this run's packs added)."""
        with self._lock:
            return self._loaded()

    def _loaded(self) -> BlobIndex:
        if self._index is None:
            self._index, self.loaded = load_index(self.backend, self.cipher)
        return self._index

    # -- writing
    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        blob_id = self.blob_id(data)
        raw = bytes.fromhex(blob_id)
        with self._lock:
            self._raise_failed()
            held = raw in self._pending or self._loaded().has(raw)
            if not held:
                self._pending.add(raw)
        if held:
            if not verify_existing or self._is_sound(raw, blob_id, len(data)):
                return Saved(blob_id, len(data))
            stored = self._append(raw, kind, self._compressor(level).compress(data), len(data))
            return Saved(blob_id, len(data), stored, replaced=True)
        try:
            stored = self._append(raw, kind, self._compressor(level).compress(data), len(data))
        except BaseException:
            with self._lock:
                self._pending.discard(raw)
            raise
        return Saved(blob_id, len(data), stored)

    def _is_sound(self, raw: bytes, blob_id: str, length: int) -> bool:
        """A blob the index has: written or checked under this lock, or read back now."""
        with self._lock:
            if raw in self._sound:
                return True
        if not self.has(blob_id, length):
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
        with self._pack_lock:
            pack = self._open.get(pack_kind)
            if pack is not None and not pack.builder.has_room(None if sealed is None
                                                              else sealed[1]):
                self._close(pack_kind)
                pack = None
            if pack is None:
                pack = self._open[pack_kind] = self._new_pack(pack_kind)
            if sealed is not None:
                stored = sealed[0]
                slot = NO_SLOT if sealed[1] is None else pack.builder.slot(sealed[1])
            elif pack.data_key is not None:
                stored, slot = self.cipher.seal_record(pack.data_key, raw, frame), pack.slot
            else:
                stored, slot = frame, NO_SLOT
            offset = pack.builder.add(raw, kind, stored, plain, slot)
            pack.entries.append((raw, offset, len(stored), plain))
            if len(pack.builder) >= self.pack_size:
                self._close(pack_kind)
        return len(stored)

    def _new_pack(self, pack_kind: int) -> _OpenPack:
        pack = _OpenPack(PackBuilder(pack_kind, self.cipher.mac))
        if self.encrypted and pack_kind == DATA_PACK:
            pack.data_key, sealed_key = self.cipher.new_data_key()
            pack.slot = pack.builder.slot(sealed_key)
        return pack

    def _close(self, pack_kind: int) -> None:
        """Hand the open pack of this kind to an uploader (under the pack lock); wait while
        UPLOADS are being written already, which holds back whoever fills packs."""
        pack = self._open.pop(pack_kind, None)
        if pack is None or not pack.entries:
            return
        pack_id, data = pack.builder.finish()
        info = PackInfo(bytes.fromhex(pack_id), len(data), pack_kind)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._uploads_max,
                                            thread_name_prefix="volbackup-pack")
        while len(self._uploading) >= self._uploads_max:
            self._uploading.pop(0).exception()
            self._raise_failed()
        self._uploading.append(self._pool.submit(self._upload, info, data, pack.entries))

    def _upload(self, info: PackInfo, data: bytearray, entries: list[Entry]) -> None:
        try:
            self.backend.write_bytes(packs.pack_key(info.hex), data)
        except BaseException as e:
            with self._lock:
                self._failed = self._failed or e
            raise
        with self._lock:
            if self._index is not None:
                self._index.add(info, entries)
            self._written.append((info, entries))
            for raw, _, _, _ in entries:
                self._pending.discard(raw)
                self._sound.add(raw)

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

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
            written, self._written = self._written, []
        made = []
        for part in _index_parts(written):
            name, data = packindex.encode(part, self.cipher.mac)
            self.backend.write_bytes(packindex.index_key(name), data)
            made.append((packindex.index_key(name), [info.hex for info, _ in part]))
        return made

    def forget(self) -> None:
        """A lock begins or ends: the index is loaded afresh next time. Packs still open
        (a run that failed) are dropped: nothing names their blobs."""
        with self._pack_lock:
            self._open.clear()
            uploading, self._uploading = self._uploading, []
        for future in uploading:
            future.exception()
        with self._lock:
            self._index = None
            self._pending.clear()
            self._written = []
            self._sound = set()
            self._failed = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- reading
    def load(self, blob_id: str, length: int) -> tuple[bytes, int]:
        stored, plain = self._read(blob_id, length)
        return plain, len(stored)

    def has(self, blob_id: str, length: int) -> bool:
        try:
            self._read(blob_id, length)
        except IntegrityError:
            return False
        return True

    def load_stored(self, blob_id: str, length: int) -> bytes:
        return self._read(blob_id, length)[0]

    def save_stored(self, blob_id: str, length: int, fetch: Callable[[], bytes]) -> Saved:
        """(Plain stores only: `stores_like`.) A record as another plain store keeps it."""
        raw = bytes.fromhex(blob_id)
        with self._lock:
            self._raise_failed()
            held = raw in self._pending or self._loaded().has(raw)
            if not held:
                self._pending.add(raw)
        if held:
            if self._is_sound(raw, blob_id, length):
                return Saved(blob_id, length)
            stored = self._append(raw, DATA, b"", length, (fetch(), None))
            return Saved(blob_id, length, stored, replaced=True)
        try:
            stored = self._append(raw, DATA, b"", length, (fetch(), None))
        except BaseException:
            with self._lock:
                self._pending.discard(raw)
            raise
        return Saved(blob_id, length, stored)

    def stores_like(self, other: BlobStore) -> bool:
        return self.plain_frames and other.plain_frames

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

    def _read(self, blob_id: str, length: int) -> tuple[bytes, bytes]:
        """(stored bytes, plaintext) of a blob, from the first of its copies that checks
        out; ChunkMissing when the index has none, IntegrityError when none is sound."""
        raw = bytes.fromhex(blob_id)
        locations = self._locations(raw)
        if not locations:
            raise ChunkMissing(f"chunk {blob_id} is missing (no index entry)")
        error: IntegrityError | None = None
        for location in locations:
            try:
                return self._read_at(raw, blob_id, length, location)
            except IntegrityError as e:
                error = error or e
        assert error is not None
        raise error

    def _read_at(self, raw: bytes, blob_id: str, length: int,
                 location: Location) -> tuple[bytes, bytes]:
        pack = location.pack
        if location.plain != length:
            raise IntegrityError(f"chunk {blob_id} holds {location.plain} bytes (index), the "
                                 f"chunk list says {length}")
        try:
            stored = self.backend.read_range(packs.pack_key(pack.hex), location.offset,
                                             location.stored)
        except BlobNotFound:
            raise ChunkMissing(f"chunk {blob_id} is missing (its pack {pack.hex} is "
                               f"gone)") from None
        except (RangeBeyondEnd, BadEntry) as e:
            raise IntegrityError(f"chunk {blob_id}: pack {pack.hex} is not what the index "
                                 f"says ({e})") from None
        frame = stored
        if self.encrypted and pack.kind == DATA_PACK:
            key = self._data_key(pack, location, raw)
            frame = self.cipher.open_record(key, raw, stored)
        return stored, open_frame(frame, blob_id, length, self.cipher.chunk_id)

    def _data_key(self, pack: PackInfo, location: Location, raw: bytes) -> bytes:
        """The data key of the record at `location`: its slot in the pack's trailer (read
        once, MAC checked), that slot's sealed key opened with the identity (once)."""
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
            sealed = self._trailer_slots[pack.id][record.slot]
            key = self._keys.get(sealed)
        if key is None:
            key = self.cipher.open_data_key(sealed, f"data key of pack {pack.hex}")
            with self._read_lock:
                self._keys[sealed] = key
                while len(self._keys) > KEYS_KEPT:
                    self._keys.popitem(last=False)
        return key

    # -- what prune and verify look at
    def pack_listing(self) -> Iterator[tuple[str, int, object] | str]:
        """(pack id, size, modified) of every pack stored, and a message for each entry
        under packs/ that is not one."""
        for info in self.backend.list(packs.PREFIX):
            pack_id = packs.pack_id_of(info.key)
            if info.error or pack_id is None:
                yield info.error or f"{info.key} in repository {self.backend.describe()} " \
                                    f"is not a pack (left alone)"
                continue
            yield pack_id, info.size, info.modified

    def trailer(self, pack_id: str, size: int) -> Trailer:
        return packs.read_trailer(self.backend, pack_id, size, self.cipher.mac)


def _index_parts(written: list[tuple[PackInfo, list[Entry]]]
                 ) -> Iterator[list[tuple[PackInfo, list[Entry]]]]:
    """The packs of one flush in groups of at most WRITE_BLOBS blobs: one index object each."""
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
    blobs again, and verify reports it (docs/design.md)."""
    loaded, objects = IndexLoad(), []
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
            objects.append(packindex.decode(raw, cipher.mac, where))
            loaded.keys.append(info.key)
        except BlobNotFound:
            continue        # removed by a prune since the listing
        except (IntegrityError, BadEntry) as e:
            loaded.problems.append(str(e))
    loaded.objects = len(objects)
    index = BlobIndex(objects)
    loaded.problems.extend(index.conflicts)
    return index, loaded



"""The blob store: where a chunked repository keeps the pieces of its snapshots.

A blob is a piece of plaintext (a chunk of a tar stream, a piece of a catalogue) stored
compressed, sealed when the repository is encrypted, and named by a keyed hash of its
plaintext. The store owns three decisions that callers used to make themselves:

- whether a blob is stored already (deduplication): `save(data)` asks what the store
  holds and only then writes, as restic's `Repository.SaveBlob` asks its index and kopia's
  `WriteContent` does; callers never claim, put and mark done;
- how blobs are named and sealed (its cipher): fixed when the store is built, never
  swapped (volbackup.repo.crypto.PlainChunks or SealedChunks);
- how one blob is formatted (zstd level, checksum), in one place.

`LooseChunkStore` is today's layout, one object per chunk under `chunks/`
(volbackup.repo.chunkstore). A store that puts many blobs into one pack object is meant
to be a second implementation of `BlobStore`, so that snapshots, copy and verify need not
change for it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import zstandard

from volbackup.errors import ChunkMissing
from volbackup.repo.chunkstore import ChunkObjects, StoredChunk


# What a blob holds. A loose store keeps every kind alike; a packed one seals data and
# catalogue pieces but not tree pieces (prune walks trees without an identity), and never
# puts trees into the packs that hold data (docs/design.md, "Packed layout").
DATA, CATALOG, TREE = "data", "catalog", "tree"
KINDS = (DATA, CATALOG, TREE)


@dataclass(frozen=True)
class Saved:
    """What `save` did with one blob."""

    id: str
    length: int             # plaintext bytes
    stored: int = 0         # stored bytes written now (0: it was stored already)
    replaced: bool = False  # a stored one was not what its name says, and was written again

    @property
    def written(self) -> bool:
        return self.stored > 0


@dataclass(frozen=True)
class Prepared:
    """A blob named (and, if it is to be stored, compressed), not yet stored: either what
    `save` did already (`saved`), or what `commit` stores."""

    saved: Saved | None = None
    id: str = ""
    frame: bytes = b""
    length: int = 0
    kind: str = DATA


class BlobStore(ABC):
    """Content-addressed blobs, deduplicated, named and sealed by a cipher fixed at build.

    What the store knows is stored is learnt afresh under each repository lock (`forget`
    is called when one begins and ends): a prune may have removed blobs in between."""

    encrypted: bool

    @property
    def plain_frames(self) -> bool:
        """Plain: a blob is named by the sha256 of its plaintext and stored as a bare zstd
        frame, whatever the layout (a loose chunk object, a record of a pack), so that
        two such stores `stores_like` each other. Two encrypted stores have other keys."""
        return not self.encrypted

    @abstractmethod
    def blob_id(self, data: bytes) -> str:
        """The name of a blob of this plaintext: sha256, or a keyed HMAC when encrypted."""

    @abstractmethod
    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        """Store `data` (a blob of `kind`) unless it is stored already; durable when this
        returns. With
        `verify_existing`, a blob held already is read back and checked once under this
        lock, and written again if it is not what its name says (copy into a plain store)."""

    def prepare(self, data: bytes, level: int, verify_existing: bool = False,
                kind: str = DATA) -> "Prepared":
        """The part of `save` that may run on any thread in any order (naming,
        compressing); `commit` of the result, called in stream order, stores it. A store
        that packs blobs keeps them in the order of the commits, so that a restore reads
        neighbours together. By default `save` does it all here."""
        return Prepared(self.save(data, level, verify_existing, kind))

    def commit(self, prepared: "Prepared") -> Saved:
        """Store what `prepare` made, unless it is stored already; durable at `flush`."""
        assert prepared.saved is not None
        return prepared.saved

    @abstractmethod
    def load(self, blob_id: str, length: int) -> tuple[bytes, int]:
        """A blob's plaintext, checked against its name and `length`, and its stored size;
        IntegrityError (ChunkMissing when it is not there) otherwise."""

    def load_many(self, entries: Iterable[tuple[str, int]], readers: int
                  ) -> Iterator[tuple[bytes, int]]:
        """`load` of each (id, length) of `entries`, in order, `readers` fetched ahead by
        worker threads (restores from S3 are not latency-bound); memory: `readers` blobs,
        whatever the number of entries."""
        with ThreadPoolExecutor(readers, thread_name_prefix="volbackup-fetch") as pool:
            ahead: deque[Future] = deque()
            try:
                for blob_id, length in entries:
                    ahead.append(pool.submit(self.load, blob_id, length))
                    if len(ahead) >= readers:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()

    @abstractmethod
    def has(self, blob_id: str, length: int) -> bool:
        """Is the blob stored and sound (read back and checked as `load` checks it)?"""

    @abstractmethod
    def load_stored(self, blob_id: str, length: int) -> bytes:
        """A blob's stored form, checked as `load` checks it: what `save_stored` of a store
        that `stores_like` this one takes."""

    @abstractmethod
    def save_stored(self, blob_id: str, length: int, fetch: Callable[[], bytes]) -> Saved:
        """Store a blob in its stored form, `fetch()` (called only when it is needed),
        unless a sound one is held already (checked as `has` checks, once per lock)."""

    @abstractmethod
    def stores_like(self, other: "BlobStore") -> bool:
        """Do both name and store blobs the same way, so that `load_stored` of one is what
        `save_stored` of the other takes?"""

    @abstractmethod
    def forget(self) -> None:
        """Drop what is known of the stored blobs (a lock begins or ends)."""

    def indexed(self, blob_id: str) -> bool:
        """Does the index say the blob is stored where a writer may count on it (not in
        a pack a prune plan dooms)? Nothing is read. A store without an index knows
        nothing without a read: False (the files cache then reads every file)."""
        return False

    def reuse(self, blob_id: str, length: int) -> Saved:
        """Name a blob the caller does not have the bytes of (the files cache takes a
        file whole from a parent snapshot), which `indexed` said the store holds."""
        raise ChunkMissing(f"blob {blob_id[:16]} cannot be reused without its bytes here")

    def flush(self) -> list[tuple[str, list[str]]]:
        """Make every blob saved so far durable (and findable): what a list that names
        them, or a manifest, is written after. A store that writes each blob in `save`
        has nothing to do; a packed one writes its open packs and their index (it says
        which index objects, and the packs each names)."""
        return []


class ThreadCompressors:
    """`compressors(level)`: this thread's zstd compressor at `level` (a ZstdCompressor is
    not shared by threads; making one per blob would cost more than compressing it)."""

    def __init__(self):
        self._local = threading.local()

    def __call__(self, level: int) -> zstandard.ZstdCompressor:
        made = self._local.__dict__.setdefault("compressors", {})
        if level not in made:
            made[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return made[level]


class KnownChunks:
    """The chunks a backup need not write: those listed under the current lock, plus those
    written since. Never a cache kept across locks: a prune may have swept in between.
    Shared by the jobs of one run: a chunk another job is writing is waited for, so that no
    chunk list names a chunk before it is durable."""

    def __init__(self, objects: ChunkObjects):
        self._objects = objects
        self._ids: set[bytes] | None = None
        self._writing: dict[bytes, threading.Event] = {}
        self._sound: set[bytes] = set()  # written, or read back and checked, under this lock
        self._lock = threading.Lock()

    def claim(self, digest: bytes) -> bool:
        """True: the caller must write this chunk, then call done(). False: it is stored
        (perhaps after waiting for the caller that was writing it)."""
        while True:
            with self._lock:
                if self._ids is None:
                    self._ids = self._objects.ids()
                if digest in self._ids:
                    return False
                writing = self._writing.get(digest)
                if writing is None:
                    self._writing[digest] = threading.Event()
                    return True
            writing.wait()  # then stored, or that writer failed and this one claims it

    def done(self, digest: bytes, stored: bool) -> None:
        with self._lock:
            writing = self._writing.pop(digest)
            if stored and self._ids is not None:
                self._ids.add(digest)
                self._sound.add(digest)
        writing.set()

    def sound(self, digest: bytes, check: Callable[[], bool]) -> bool:
        """For a chunk `claim` said is stored: True when it was written or checked under
        this lock already, or `check()` (a read-back) finds it sound; False: the caller
        writes it again, then calls `vouch`."""
        with self._lock:
            if digest in self._sound:
                return True
        if not check():
            return False
        self.vouch(digest)
        return True

    def vouch(self, digest: bytes) -> None:
        """This chunk was written again (its stored bytes were wrong): sound from now on."""
        with self._lock:
            self._sound.add(digest)

    def forget(self) -> None:
        """Drop what was listed (a new lock begins, or one ended)."""
        with self._lock:
            self._ids = None
            self._sound = set()


class LooseChunkStore(BlobStore):
    """One object per blob under `chunks/` (the chunked layout's store since `init` made
    it). "Is it stored?" is answered from a listing of `chunks/` made once per lock
    (KnownChunks), plus what was written since."""

    def __init__(self, objects: ChunkObjects):
        self.objects = objects
        self.encrypted = objects.cipher.encrypted
        self._known = KnownChunks(objects)
        self._compressor = ThreadCompressors()

    def blob_id(self, data: bytes) -> str:
        return self.objects.chunk_id(data)

    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        blob_id = self.blob_id(data)
        digest = bytes.fromhex(blob_id)
        if not self._known.claim(digest):
            if not verify_existing or self._known.sound(
                    digest, lambda: self.objects.holds(blob_id, len(data))):
                return Saved(blob_id, len(data))
            stored = self.objects.put(blob_id, data, self._compressor(level))  # it was wrong
            self._known.vouch(digest)
            return Saved(blob_id, len(data), stored, replaced=True)
        stored = 0
        try:
            stored = self.objects.put(blob_id, data, self._compressor(level))
        finally:
            self._known.done(digest, stored > 0)
        return Saved(blob_id, len(data), stored)

    def load(self, blob_id: str, length: int) -> tuple[bytes, int]:
        return self.objects.get(blob_id, length)

    def has(self, blob_id: str, length: int) -> bool:
        return self.objects.holds(blob_id, length)

    def load_stored(self, blob_id: str, length: int) -> bytes:
        return self.objects.get_stored(blob_id, length)

    def save_stored(self, blob_id: str, length: int, fetch: Callable[[], bytes]) -> Saved:
        digest = bytes.fromhex(blob_id)
        if not self._known.claim(digest):
            if self._known.sound(digest, lambda: self.objects.holds(blob_id, length)):
                return Saved(blob_id, length)
            stored = self.objects.put_stored(blob_id, fetch())
            self._known.vouch(digest)
            return Saved(blob_id, length, stored, replaced=True)
        stored = 0
        try:
            stored = self.objects.put_stored(blob_id, fetch())
        finally:
            self._known.done(digest, stored > 0)
        return Saved(blob_id, length, stored)

    def stores_like(self, other: BlobStore) -> bool:
        return self.plain_frames and other.plain_frames

    def forget(self) -> None:
        self._known.forget()

    def listing(self) -> Iterator[StoredChunk | str]:
        """Every chunk stored, and a message for each entry that is no chunk (prune)."""
        return self.objects.listing()

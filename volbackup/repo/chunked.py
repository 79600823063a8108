"""Snapshots of a chunked repository: a tar stream cut into chunks, and its chunk list.

Writing: the tar stream (checked as for an archive) is cut by content-defined chunking;
each chunk is hashed, and the ones the repository lacks are compressed and stored by a
few worker threads while the stream goes on. The chunk list, one line per chunk
(`<sha256 hex> <length>`), is written as the chunks complete, in stream order, into a blob
that appears only when every chunk is durable. The manifest is written after it.

Reading: the list is read as a stream, once through to check it against the manifest
before any chunk is fetched, then again as the chunks are fetched ahead by worker threads
(restores from S3 are not latency-bound), each checked against its name, and the tar
stream they form goes through the same checks as an archive's, the last piece held back
until the whole stream's sha256, the list's sha256 and the tar structure check out.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import zstandard

from volbackup.errors import IntegrityError
from volbackup.repo.chunkstore import ChunkStore
from volbackup.repo.config import CHUNKER_PLAIN, MAX_CHUNK, RepoConfig
from volbackup.stream.archive import (Packed, Progress, HashingWriter, no_progress, kept_tar,
                                      release_checked)
from volbackup.stream.chunker import cut, cut_at_members
from volbackup.stream.chunks import read_chunks, split_lines
from volbackup.stream.tarstream import Entry, TarWalker

LIST_SUFFIX = ".chunks"
WRITERS = 4         # threads compressing and storing new chunks
READERS = 8         # chunks fetched ahead on restore
_LINE = re.compile(rb"([0-9a-f]{64}) ([1-9][0-9]{0,8})\n")
MAX_LINE = 64 + 1 + 9 + 1


@dataclass
class ChunkedPacked(Packed):
    chunks: int = 0
    new_chunks: int = 0
    tar_sha256: str = ""
    replaced_chunks: int = 0    # with `check_existing`: stored ones that failed, written again


class KnownChunks:
    """The chunks a backup need not write: those listed under the current lock, plus those
    written since. Never a cache kept across locks: a prune may have swept in between.
    Shared by the jobs of one run: a chunk another job is writing is waited for, so that no
    chunk list names a chunk before it is durable."""

    def __init__(self, store: ChunkStore):
        self._store = store
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
                    self._ids = self._store.ids()
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


def pack(tar_chunks: Iterable[bytes], list_out: BinaryIO, store: ChunkStore,
         config: RepoConfig, known: KnownChunks, level: int = 3,
         progress: Progress = no_progress, seed: int | None = None,
         on_walker: Callable[[TarWalker], None] = lambda walker: None,
         check_existing: bool = False) -> ChunkedPacked:
    """Store a tar stream as chunks, writing its chunk list to `list_out`; raises
    IntegrityError if the tar is incomplete (nothing of it is then referenced). `seed`:
    the chunker's, when not the config's (an encrypted repository's comes from its key).
    `on_walker` is shown the walker that checks the stream (the catalogue listens).
    `check_existing` (copy into a plain repository): a chunk the store holds already is
    read back and checked once, and written again if it is not what its name says; a
    backup trusts the names it lists (docs/security.md says what that lets a writer do)."""
    # Names are not checked for repeats here: what is packed is a volume's stream, or a
    # stream whose names were checked (an unpacker's, import's), each name once.
    walker = TarWalker(unique=False)
    on_walker(walker)
    tar_sha256 = hashlib.sha256()
    listing = HashingWriter(list_out)
    local = threading.local()
    result = ChunkedPacked(0, 0, "", 0, None)

    def compressor() -> zstandard.ZstdCompressor:
        if not hasattr(local, "compressor"):
            local.compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return local.compressor

    def store_one(data: bytes) -> tuple[str, int, int, bool]:
        digest = bytes.fromhex(store.chunk_id(data))
        if not known.claim(digest):
            if not check_existing or known.sound(
                    digest, lambda: store.holds(digest.hex(), len(data))):
                return digest.hex(), len(data), 0, False
            stored = store.put(digest.hex(), data, compressor())  # the stored one was wrong
            known.vouch(digest)
            return digest.hex(), len(data), stored, True
        stored = 0
        try:
            stored = store.put(digest.hex(), data, compressor())
        finally:
            known.done(digest, stored > 0)
        return digest.hex(), len(data), stored, False

    def record(future: Future) -> None:
        chunk_id, length, stored, replaced = future.result()
        listing.write(f"{chunk_id} {length}\n".encode())
        result.chunks += 1
        result.new_chunks += 1 if stored else 0
        result.replaced_chunks += 1 if replaced else 0
        result.stored_bytes += stored

    c = config.chunker
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="volbackup-chunk") as pool:
        try:
            if c.algorithm == CHUNKER_PLAIN:
                cuts = cut(kept_tar(tar_chunks, walker), c.avg_size, c.min_size, c.max_size,
                           c.normalized_chunking, c.seed if seed is None else seed)
            else:
                cuts = cut_at_members(kept_tar(tar_chunks, walker), walker, c.avg_size,
                                      c.min_size, c.max_size, c.normalized_chunking,
                                      c.seed if seed is None else seed)
            for data in cuts:
                tar_sha256.update(data)
                result.bytes += len(data)
                pending.append(pool.submit(store_one, data))
                while len(pending) > 2 * WRITERS or (pending and pending[0].done()):
                    record(pending.popleft())
                progress(len(data))
            while pending:
                record(pending.popleft())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    result.sha256, result.tar_sha256 = listing.sha256.hexdigest(), tar_sha256.hexdigest()
    result.entries, result.root = walker.entries, walker.first
    return result


class ChunkedUnpacker:
    """As volbackup.stream.archive.Unpacker, for a chunked snapshot: `chunks()` yields the
    checked tar stream; `walker`, `root` and `stored_bytes` as there."""

    def __init__(self, open_list: Callable[[], object], store: ChunkStore, expected_sha256: str,
                 expected_chunks: int, expected_tar_sha256: str, expected_bytes: int,
                 progress: Progress = no_progress):
        self._open_list = open_list
        self._store = store
        self._expected = (expected_sha256, expected_chunks, expected_tar_sha256, expected_bytes)
        self._progress = progress
        self.walker = TarWalker()
        self.stored_bytes = 0

    @property
    def root(self) -> Entry | None:
        return self.walker.first

    def _listed(self) -> Iterator[tuple[str, int]]:
        want_sha, want_chunks, _, want_bytes = self._expected
        return listed(self._open_list, want_sha, want_chunks, want_bytes)

    def check_list(self) -> None:
        """Read the list alone (about 75 bytes per chunk) and check it against the
        manifest, so that a list that is not the manifest's (a line dropped, two lines
        swapped: each chunk valid) is refused before any byte is released, not after a
        restore wrote wrong bytes. Whoever reads it again checks it again."""
        for _ in self._listed():
            pass

    def chunks(self) -> Iterator[bytes]:
        self.check_list()
        tar_sha256 = hashlib.sha256()
        want_tar = self._expected[2]

        def plaintext() -> Iterator[bytes]:
            for plain, stored in fetch_ahead(self._store, self._listed()):
                tar_sha256.update(plain)
                self.stored_bytes += stored
                yield plain

        def check() -> None:
            if tar_sha256.hexdigest() != want_tar:
                raise IntegrityError(f"tar stream sha256 is {tar_sha256.hexdigest()}, the "
                                     f"manifest says {want_tar}")
            self.walker.finish()

        yield from release_checked(plaintext(), self.walker, check, self._progress)

    def drain(self) -> None:
        for _ in self.chunks():
            pass


def listed(open_list: Callable[[], object], want_sha256: str, want_chunks: int,
           want_bytes: int, what: str = "chunk list") -> Iterator[tuple[str, int]]:
    """The entries of a chunk list, streamed (memory: one line), checked against what the
    manifest says of it: more chunks or bytes than it says fail at once (a manifest's
    counts bound the reading, whatever the list's size), another sha256 or fewer at the
    end."""
    digest, chunks, total = hashlib.sha256(), 0, 0
    with open_list() as reader:
        for chunk_id, length in iter_list(reader, digest):
            chunks += 1
            total += length
            if total > want_bytes or chunks > want_chunks:
                raise IntegrityError(f"{what} is longer than the manifest says")
            yield chunk_id, length
    if digest.hexdigest() != want_sha256:
        raise IntegrityError(f"{what} sha256 is {digest.hexdigest()}, the manifest says "
                             f"{want_sha256}")
    if (chunks, total) != (want_chunks, want_bytes):
        raise IntegrityError(f"{what} holds {chunks} chunks of {total} bytes, the manifest "
                             f"says {want_chunks} of {want_bytes}")


def fetch_ahead(store: ChunkStore, entries: Iterable[tuple[str, int]],
                readers: int = READERS) -> Iterator[tuple[bytes, int]]:
    """(plaintext, stored size) of each chunk of `entries`, in order, each checked, fetched
    `readers` ahead by worker threads (restores from S3 are not latency-bound); memory:
    `readers` chunks, whatever the number of entries."""
    with ThreadPoolExecutor(readers, thread_name_prefix="volbackup-fetch") as pool:
        ahead: deque[Future] = deque()
        try:
            for chunk_id, length in entries:
                ahead.append(pool.submit(store.get, chunk_id, length))
                if len(ahead) >= readers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


def iter_list(reader, digest=None) -> Iterator[tuple[str, int]]:
    """The (chunk id, length) entries of a chunk list read from `reader`, each checked
    (a chunk list is untrusted input); `digest` (a hashlib object) sees every byte."""
    for line in _lines(reader):
        if digest is not None:
            digest.update(line)
        match = _LINE.fullmatch(line)
        if not match or int(match[2]) > MAX_CHUNK:
            raise IntegrityError(f"chunk list has an invalid line {line[:80]!r}")
        yield match[1].decode(), int(match[2])


def _lines(reader) -> Iterator[bytes]:
    """Lines of a chunk list (volbackup.stream.chunks.split_lines)."""
    return split_lines(read_chunks(reader), MAX_LINE)

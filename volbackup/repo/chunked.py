"""Snapshots of a chunked repository: a tar stream cut into chunks, and its chunk list.

Writing: the tar stream (checked as for an archive) is cut by content-defined chunking;
each chunk is handed to the blob store by a few worker threads while the stream goes on
(the store names it, and compresses and stores it if it lacks it). The chunk list, one
line per chunk (`<sha256 hex> <length>`), is written as the chunks complete, in stream
order, into a blob that appears only when every chunk is durable. The manifest is written after it.

Reading: the list is read as a stream, once through to check it against the manifest
before any chunk is fetched, then again as the chunks are fetched ahead by worker threads
(restores from S3 are not latency-bound), each checked against its name, and the tar
stream they form goes through the same checks as an archive's, the last piece held back
until the whole stream's sha256, the list's sha256 and the tar structure check out.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

from volbackup.errors import IntegrityError
from volbackup.repo.blobstore import BlobStore, Prepared, Saved
from volbackup.repo.trees import TreeRoot, TreeWriter, walk
from volbackup.repo.config import CHUNKER_EACH, CHUNKER_PLAIN, MAX_CHUNK, RepoConfig
from volbackup.stream.archive import (Packed, Progress, HashingWriter, no_progress, kept_tar,
                                      release_checked)
from volbackup.stream.chunker import cut, cut_at_members, cut_each_member, seed_name_key
from volbackup.stream.chunks import read_chunks, split_lines
from volbackup.stream.reuse import Reused
from volbackup.stream.tarstream import Entry, TarWalker

LIST_SUFFIX = ".chunks"
WRITERS = 4         # threads compressing and storing new chunks
# Chunks are handed to a writer in batches of about this many bytes: a volume of small
# files is cut into thousands of small blobs, and a task each (a Future, a queue, a GIL
# handoff) cost more CPU than hashing and compressing a small one (docs/performance.md,
# "The first backup's CPU per byte"). A chunk of this size or more goes alone.
BATCH_BYTES = 512 << 10
READERS = 8         # chunks fetched ahead on restore
_LINE = re.compile(rb"([0-9a-f]{64}) ([1-9][0-9]{0,8})\n")
MAX_LINE = 64 + 1 + 9 + 1


@dataclass
class ChunkedPacked(Packed):
    chunks: int = 0
    new_chunks: int = 0
    tar_sha256: str | None = ""     # None: not computed (the packed layout)
    replaced_chunks: int = 0    # with `check_existing`: stored ones that failed, written again
    data: TreeRoot | None = None    # with a `tree`: the root of the data tree (no list)


def pack(tar_chunks: Iterable[bytes], list_out: BinaryIO | None, store: BlobStore,
         config: RepoConfig, level: int = 3,
         progress: Progress = no_progress, seed: int | None = None,
         on_walker: Callable[[TarWalker], None] = lambda walker: None,
         check_existing: bool = False, whole_digest: bool = True,
         name_key: bytes | None = None, tree: TreeWriter | None = None) -> ChunkedPacked:
    """Store a tar stream as chunks, writing its chunk list to `list_out`; raises
    IntegrityError if the tar is incomplete (nothing of it is then referenced). `seed`:
    the chunker's, when not the config's (an encrypted repository's comes from its key).
    `on_walker` is shown the walker that checks the stream (the catalogue listens).
    `check_existing` (copy into a plain repository): a chunk the store holds already is
    read back and checked once, and written again if it is not what its name says; a
    backup trusts the names it lists (docs/security.md says what that lets a writer do).
    Which chunks are stored already is the store's business (BlobStore.save).
    `name_key` keys the member-name hash of the each-member chunker (an encrypted
    repository's comes from its key; by default the seed's bytes).
    `whole_digest` False: no sha256 of the whole stream (`tar_sha256` None): each chunk's
    id and the list's sha256 already cover every byte, so that the stream is hashed once
    (the packed layout; the chunked one keeps the field its readers know).
    `tree` (the packed layout): the chunks' ids go into this tree writer instead of a list
    (`list_out` None); the result's `data` is its root, `sha256` empty, and its
    `stored_bytes` count the tree pieces it added."""
    # Names are not checked for repeats here: what is packed is a volume's stream, or a
    # stream whose names were checked (an unpacker's, import's), each name once.
    walker = TarWalker(unique=False)
    on_walker(walker)
    tar_sha256 = hashlib.sha256() if whole_digest else None
    listing = HashingWriter(list_out) if tree is None else None
    result = ChunkedPacked(0, 0, "", 0, None)

    def store_batch(batch: list[bytes]) -> list[Prepared]:
        return [store.prepare(data, level, check_existing) for data in batch]

    def record(future: Future | _Ready) -> None:
        for prepared in future.result():
            saved = store.commit(prepared)      # in stream order: packs keep it
            if tree is not None:
                tree.add(saved.id, saved.length)    # a tree piece goes into a tree pack
            else:
                listing.write(f"{saved.id} {saved.length}\n".encode())
            result.chunks += 1
            result.new_chunks += 1 if saved.written else 0
            result.replaced_chunks += 1 if saved.replaced else 0
            result.stored_bytes += saved.stored

    batch: list[bytes] = []
    batch_bytes = 0

    def submit_batch() -> None:
        nonlocal batch, batch_bytes
        if batch:
            pending.append(pool.submit(store_batch, batch))
            batch, batch_bytes = [], 0

    c = config.chunker
    pending: deque[Future | _Ready] = deque()
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="volbackup-chunk") as pool:
        try:
            if c.algorithm == CHUNKER_PLAIN:
                cuts = cut(kept_tar(tar_chunks, walker), c.avg_size, c.min_size, c.max_size,
                           c.normalized_chunking, c.seed if seed is None else seed)
            elif c.algorithm == CHUNKER_EACH:
                chunker_seed = c.seed if seed is None else seed
                cuts = cut_each_member(kept_tar(tar_chunks, walker), walker, c.avg_size,
                                       c.min_size, c.max_size, c.normalized_chunking,
                                       chunker_seed, name_key=name_key
                                       or seed_name_key(chunker_seed))
            else:
                cuts = cut_at_members(kept_tar(tar_chunks, walker), walker, c.avg_size,
                                      c.min_size, c.max_size, c.normalized_chunking,
                                      c.seed if seed is None else seed)
            for data in cuts:
                if isinstance(data, Reused):    # the files cache: its blobs, unread
                    submit_batch()              # (the order of the stream is kept)
                    pending.append(_Ready([store.reuse(blob_id, length)
                                           for blob_id, length in data.blobs]))
                    result.bytes += sum(length for _, length in data.blobs)
                    progress(data.length)
                    continue
                if tar_sha256 is not None:
                    tar_sha256.update(data)
                result.bytes += len(data)
                batch.append(data)
                batch_bytes += len(data)
                if batch_bytes >= BATCH_BYTES:
                    submit_batch()
                while len(pending) > 2 * WRITERS or (pending and pending[0].done()):
                    record(pending.popleft())
                progress(len(data))
            submit_batch()
            while pending:
                record(pending.popleft())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    if tree is not None:
        result.data = tree.finish()
        result.stored_bytes += tree.stored_bytes
        result.sha256 = ""
    else:
        result.sha256 = listing.sha256.hexdigest()
    result.tar_sha256 = tar_sha256.hexdigest() if tar_sha256 is not None else None
    result.entries, result.root = walker.entries, walker.first
    return result


class _Ready:
    """Blobs stored already, where the packer waits for futures (in stream order): as
    much of a Future as it uses, without a Future's lock."""

    def __init__(self, saved: list[Saved]):
        self._prepared = [Prepared(one) for one in saved]

    def result(self) -> list[Prepared]:
        return self._prepared

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


class ChunkedUnpacker:
    """As volbackup.stream.archive.Unpacker, for a chunked snapshot: `chunks()` yields the
    checked tar stream; `walker`, `root` and `stored_bytes` as there."""

    def __init__(self, open_list: Callable[[], object], store: BlobStore, expected_sha256: str,
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
        want_tar = self._expected[2]
        # A snapshot with no whole-stream digest (the packed layout's) is checked by its
        # chunks' ids and its list's sha256 alone: one hash of each byte.
        tar_sha256 = hashlib.sha256() if want_tar else None

        def plaintext() -> Iterator[bytes]:
            for plain, stored in fetch_ahead(self._store, self._listed()):
                if tar_sha256 is not None:
                    tar_sha256.update(plain)
                self.stored_bytes += stored
                yield plain

        def check() -> None:
            if tar_sha256 is not None and tar_sha256.hexdigest() != want_tar:
                raise IntegrityError(f"tar stream sha256 is {tar_sha256.hexdigest()}, the "
                                     f"manifest says {want_tar}")
            self.walker.finish()

        yield from release_checked(plaintext(), self.walker, check, self._progress)

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class TreeUnpacker(ChunkedUnpacker):
    """A ChunkedUnpacker of a tree snapshot: the blobs are the leaves of its data tree,
    whose root the manifest names (under its MAC when encrypted). Each piece is checked
    against its id as it is loaded (volbackup.repo.trees.walk), so a leaf is the
    snapshot's before any of its bytes is read: no list to check through first."""

    def __init__(self, store: BlobStore, root: TreeRoot, expected_bytes: int,
                 progress: Progress = no_progress):
        super().__init__(lambda: None, store, "", root.blobs, "", expected_bytes, progress)
        self.tree_root = root

    def _listed(self) -> Iterator[tuple[str, int]]:
        return walk(self._store, self.tree_root)

    def check_list(self) -> None:
        """Nothing to read ahead: every piece is checked as it is walked."""


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


def fetch_ahead(store: BlobStore, entries: Iterable[tuple[str, int]],
                readers: int = READERS) -> Iterator[tuple[bytes, int]]:
    """(plaintext, stored size) of each chunk of `entries`, in order, each checked, fetched
    `readers` ahead by worker threads (restores from S3 are not latency-bound); memory:
    `readers` chunks, whatever the number of entries. How is the store's business
    (BlobStore.load_many: a packed store reads neighbours in one request)."""
    return store.load_many(entries, readers)


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

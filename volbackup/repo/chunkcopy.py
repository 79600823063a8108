"""Copying a chunk list and its chunks between two chunked repositories that name chunks
the same way (both plain: a chunk's name is the sha256 of its plaintext, whatever the
chunker's parameters), for `volbackup copy` (volbackup.ops.copy).

The source's list is read once through and checked against the manifest (sha256, count,
bytes) before any chunk moves, then again as the chunks the target lacks are fetched,
checked against their names (BlobStore.load_stored) and stored in the target as they are
stored in the source (no compressing again), a few at a time, by the target's store, which
decides what it lacks (BlobStore.save_stored). A chunk the target holds already is read
back and checked once: one that is not what its name says (damaged, or planted by a writer
to the target) is replaced by the source's, so that a snapshot the copy commits restores
from the target. The list goes into a blob that appears only when its chunks are durable
and the second read matched the manifest too; the caller writes the manifest after it. A
snapshot has two such lists: its data's (`.chunks`) and its catalogue's (`.catalog`,
volbackup.repo.catalogs), one call each.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from volbackup.errors import BlobMissing, IntegrityError
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.blobstore import BlobStore
from volbackup.repo.chunked import WRITERS, iter_list
from volbackup.stream.archive import Progress, no_progress


@dataclass
class ListCopy:
    """What copying one chunk list did."""

    chunks: int = 0         # entries in the list
    bytes: int = 0          # plaintext bytes they hold
    sent: int = 0           # chunks the target lacked, and now has
    sent_bytes: int = 0     # stored bytes of those
    sent_plain: int = 0     # plaintext bytes of those
    lists: int = 1          # chunk lists written
    replaced: int = 0       # of `sent`: held by the target with wrong bytes, replaced

    def __add__(self, other: "ListCopy") -> "ListCopy":
        return ListCopy(self.chunks + other.chunks, self.bytes + other.bytes,
                        self.sent + other.sent, self.sent_bytes + other.sent_bytes,
                        self.sent_plain + other.sent_plain, self.lists + other.lists,
                        self.replaced + other.replaced)


@dataclass(frozen=True)
class Side:
    """One repository's end of a copy: where its lists (blobs) and chunks are."""

    backend: Backend
    store: BlobStore


@dataclass(frozen=True)
class Expected:
    """What the manifest says of a chunk list."""

    sha256: str
    chunks: int
    bytes: int
    what: str               # for messages: "chunk list of snapshot X"


def copy_list(source: Side, source_key: str, target: Side, target_key: str,
              expected: Expected, progress: Progress = no_progress) -> ListCopy:
    """Copy the chunk list at `source_key` to `target_key`, with the chunks the target
    lacks; raises IntegrityError (nothing of the list appears) if the list or a chunk
    is not what the manifest says."""
    if not target.store.stores_like(source.store):
        raise ValueError("copy_list needs two stores that store chunks alike")
    _check(source, source_key, expected, lambda chunk_id, length: None)
    result = ListCopy()
    pending: deque[Future] = deque()

    def send(chunk_id: str, length: int) -> tuple[int, int, int, int]:
        saved = target.store.save_stored(
            chunk_id, length, lambda: source.store.load_stored(chunk_id, length))
        return (1, saved.stored, length, 1 if saved.replaced else 0) if saved.written \
            else (0, 0, 0, 0)

    def settle(future: Future) -> None:
        sent, stored, plain, replaced = future.result()
        result.sent += sent
        result.sent_bytes += stored
        result.sent_plain += plain
        result.replaced += replaced

    with ThreadPoolExecutor(WRITERS, thread_name_prefix="volbackup-copy") as pool, \
            target.backend.open_write(target_key) as out:
        try:
            def each(chunk_id: str, length: int) -> None:
                out.write(f"{chunk_id} {length}\n".encode())
                pending.append(pool.submit(send, chunk_id, length))
                while len(pending) > 2 * WRITERS or (pending and pending[0].done()):
                    settle(pending.popleft())
                result.chunks += 1
                result.bytes += length
                progress(length)

            _check(source, source_key, expected, each)
            while pending:
                settle(pending.popleft())
            target.store.flush()    # the chunks durable (and indexed) before the list
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return result


def _check(source: Side, key: str, expected: Expected,
           each: Callable[[str, int], None]) -> None:
    """Read the list at `key`, calling `each` per entry, and raise if it is not the
    manifest's (longer, shorter, or another sha256)."""
    digest, chunks, total = hashlib.sha256(), 0, 0
    try:
        with source.backend.open_read(key) as reader:
            for chunk_id, length in iter_list(reader, digest):
                chunks, total = chunks + 1, total + length
                if chunks > expected.chunks or total > expected.bytes:
                    raise IntegrityError(f"{expected.what} is longer than the manifest says")
                each(chunk_id, length)
    except BlobNotFound:
        raise BlobMissing(f"{expected.what} ({key}) is missing") from None
    if digest.hexdigest() != expected.sha256:
        raise IntegrityError(f"{expected.what} has sha256 {digest.hexdigest()}, the manifest "
                             f"says {expected.sha256}")
    if (chunks, total) != (expected.chunks, expected.bytes):
        raise IntegrityError(f"{expected.what} holds {chunks} chunks of {total} bytes, the "
                             f"manifest says {expected.chunks} of {expected.bytes}")

"""Part of a snapshot, as a tar stream of the entries a catalogue selects.

The selected entries' bytes (headers, data, padding) are cut out of the snapshot's tar
stream and followed by an end-of-archive marker: a valid tar of just those entries. In a
chunked repository only the chunks that hold them are fetched (the chunk list, checked
whole against the manifest first, says which chunk holds which offsets); in the archive
layout the whole archive is read, checked, and cut.

The result is checked as any snapshot stream is (structure, safe names) and each member
is compared with its catalogue line (name, type, size, sha256 of the data): a catalogue
that lies about where an entry sits yields an error, never another entry's bytes. The
end is held back until all of that checked out.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from volbackup.errors import IntegrityError
from volbackup.repo.chunked import READERS, iter_list
from volbackup.repo.blobstore import BlobStore
from volbackup.repo.trees import TreeRoot, walk_range
from volbackup.stream import catalog
from volbackup.stream.archive import END_MARKER, Progress, no_progress, release_checked
from volbackup.stream.catalog import CatalogEntry
from volbackup.stream.tarstream import Entry, TarWalker

Spans = Iterable[tuple[int, int]]


def merged(entries: Iterable[CatalogEntry], expected: deque) -> Iterator[tuple[int, int]]:
    """The stream spans of `entries` (in order), adjacent ones joined; each entry is put
    on `expected` as its span is handed out."""
    start = end = None
    for entry in entries:
        expected.append(entry)
        if start is not None and entry.at == end:
            end = entry.end
            continue
        if start is not None:
            yield start, end
        start, end = entry.at, entry.end
    if start is not None:
        yield start, end


def cut_spans(stream: Iterable[bytes], spans: Spans) -> Iterator[bytes]:
    """The bytes of `spans` (sorted, disjoint) out of a whole tar stream."""
    spans = iter(spans)
    span = next(spans, None)
    at = 0
    for piece in stream:
        end = at + len(piece)
        while span is not None and span[0] < end:
            a, b = max(span[0], at), min(span[1], end)
            if a < b:
                yield piece[a - at:b - at]
            if span[1] <= end:
                span = next(spans, None)
            else:
                break
        at = end
        if span is None:
            return
    if span is not None:
        raise IntegrityError(f"tar stream ended at {at}, before offset {span[0]}")


def chunked_spans(open_list: Callable[[], object], store: BlobStore, spans: Spans,
                  check_list: Callable[[], None]) -> Iterator[bytes]:
    """The bytes of `spans` from a chunked snapshot, fetching only the chunks that hold
    them (READERS ahead). `check_list()` has checked the whole list against the manifest;
    it is read again here."""
    check_list()

    def leaves(start: int) -> Iterator[tuple[str, int, int]]:
        offset = 0
        with open_list() as reader:
            for chunk_id, length in iter_list(reader):
                yield chunk_id, length, offset
                offset += length

    yield from _blob_spans(leaves, store, spans, "chunk list")


def tree_spans(store: BlobStore, root: TreeRoot, spans: Spans) -> Iterator[bytes]:
    """The bytes of `spans` from a tree snapshot: the tree pieces before the first span
    are skipped, those from it on are loaded (each checked against its id, walk_range;
    leaf pieces are small beside the blobs they name), and only the blobs that hold the
    spans are fetched."""
    def leaves(start: int) -> Iterator[tuple[str, int, int]]:
        return walk_range(store, root, start, root.bytes)

    yield from _blob_spans(leaves, store, spans, "data tree")


def _blob_spans(leaves: Callable[[int], Iterable[tuple[str, int, int]]], store: BlobStore,
                spans: Spans, what: str) -> Iterator[bytes]:
    """The bytes of `spans` (sorted, disjoint) out of the blobs `leaves(start)` gives
    (id, length, offset in the stream; in order, from the one holding `start` or
    earlier), READERS fetched ahead."""
    spans = iter(spans)
    span = next(spans, None)
    if span is None:
        return
    ahead: deque[tuple[Future, int, list[tuple[int, int]]]] = deque()

    def take() -> Iterator[bytes]:
        future, offset, parts = ahead.popleft()
        plain, _ = future.result()
        for a, b in parts:
            yield plain[a - offset:b - offset]

    with ThreadPoolExecutor(READERS, thread_name_prefix="volbackup-fetch") as pool:
        try:
            for blob_id, length, offset in leaves(span[0]):
                end = offset + length
                parts = []
                while span is not None and span[0] < end:
                    a, b = max(span[0], offset), min(span[1], end)
                    if a < b:
                        parts.append((a, b))
                    if span[1] <= end:
                        span = next(spans, None)
                    else:
                        break
                if parts:
                    ahead.append((pool.submit(store.load, blob_id, length), offset, parts))
                    while len(ahead) > READERS:
                        yield from take()
                if span is None:
                    break
            while ahead:
                yield from take()
        finally:
            for future, _, _ in ahead:
                future.cancel()
    if span is not None:
        raise IntegrityError(f"{what} ends before offset {span[0]}")


class PartialUnpacker:
    """As the snapshot unpackers: `chunks()` yields a checked tar stream, of the entries
    `entries()` (a fresh iterator each call) selects; `walker`, `root`, `stored_bytes`."""

    def __init__(self, entries: Callable[[], Iterator[CatalogEntry]],
                 read_spans: Callable[[Spans], Iterator[bytes]],
                 progress: Progress = no_progress):
        self._entries, self._read_spans, self._progress = entries, read_spans, progress
        self.walker = TarWalker()
        self.stored_bytes = 0

    @property
    def root(self) -> Entry | None:
        return self.walker.first

    def chunks(self) -> Iterator[bytes]:
        expected: deque[CatalogEntry] = deque()
        current: list[CatalogEntry] = []
        self.walker.on_member = lambda start, data_at, entry: current.append(
            _check_header(expected, start, data_at, entry))
        self.walker.on_entry = lambda at, data_at, entry, content: _check_content(
            current.pop(), content)

        def pieces() -> Iterator[bytes]:
            yield from self._read_spans(merged(self._entries(), expected))
            yield bytes(END_MARKER)

        def check() -> None:
            if expected:
                raise IntegrityError(f"partial stream lacks {expected[0].path!r}")
            self.walker.finish()

        yield from release_checked(pieces(), self.walker, check, self._progress)

    def drain(self) -> None:
        for _ in self.chunks():
            pass


def _check_header(expected: deque, start: int, data_at: int, entry: Entry) -> CatalogEntry:
    """The catalogue line this header must match: checked as the header is read, before
    any of its data is released (a catalogue that points elsewhere gets nothing)."""
    if not expected:
        raise IntegrityError(f"partial stream holds an unexpected entry {entry.name!r}")
    want = expected.popleft()
    got = catalog.entry_of(want.at, want.data, entry, want.sha256)
    if (got.path, got.type, got.size, got.link, data_at - start) != (
            want.path, want.type, want.size, want.link, want.data - want.at):
        raise IntegrityError(
            f"catalogue entry {want.path!r} does not match the snapshot's bytes at offset "
            f"{want.at} (found {got.path!r}, {got.type}, {got.size} bytes): the catalogue "
            f"is damaged or forged")
    return want


def _check_content(want: CatalogEntry, content: str | None) -> None:
    if content != want.sha256:
        raise IntegrityError(f"the data of {want.path!r} does not match its catalogue sha256")


def file_bytes(stream: Iterable[bytes], entry: CatalogEntry) -> Iterator[bytes]:
    """A file's data out of the checked one-member stream PartialUnpacker gives for it."""
    skip, left = entry.data - entry.at, entry.size
    for piece in stream:
        if skip:
            cut = min(skip, len(piece))
            piece, skip = piece[cut:], skip - cut
        if piece and left:
            out = piece[:left]
            left -= len(out)
            yield out


def sha256_of(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()

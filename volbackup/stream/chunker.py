"""Content-defined chunking of a tar stream (FastCDC 2020, pyfastcdc's compiled chunker).

The same bytes cut with the same parameters give the same chunks wherever they sit in
the stream: an edit moves only the cut points near it, so the rest deduplicates.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Iterable, Iterator

from pyfastcdc.cy import FastCDC  # the Cython build; never the pure-Python fallback

from volbackup.errors import IntegrityError
from volbackup.stream.reuse import Reused


class _IterReader:
    """A readinto() reader over an iterator of byte pieces (what pyfastcdc reads from)."""

    def __init__(self, pieces: Iterable[bytes]):
        self._pieces = iter(pieces)
        self._view = memoryview(b"")

    def readinto(self, buffer: memoryview) -> int:
        while not self._view:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._view = memoryview(piece)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def cut(pieces: Iterable[bytes], avg_size: int, min_size: int, max_size: int,
        normalized_chunking: int = 1, seed: int = 0) -> Iterator[bytes]:
    """The stream as content-defined chunks (each a new bytes object, at most max_size)."""
    chunker = FastCDC(avg_size, min_size=min_size, max_size=max_size,
                      normalized_chunking=normalized_chunking, seed=seed)
    for chunk in chunker.cut_stream(_IterReader(pieces)):
        yield bytes(chunk.data)


# Cutting at tar members (the default of new repositories): a file of at least LARGE bytes
# gets chunks of its own (a cut where its header starts and where its data ends); smaller
# files are grouped, a group ending before a member whose name hashes to 0 mod GROUP_MOD
# once the group holds GROUP_MIN bytes, or before any member once it holds GROUP_MAX. A
# changed small file then rewrites its group, not a whole chunk of neighbours, and since
# group ends depend on names, not offsets, adding or removing a file moves no other group.
# benchmarks/dedup.py has the measurements (docs/performance.md).
LARGE = 512 << 10
GROUP_MIN = 32 << 10
GROUP_MAX = 1 << 20
GROUP_MOD = 4


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


def cut_at_members(pieces: Iterable[bytes], walker, avg_size: int, min_size: int,
                   max_size: int, normalized_chunking: int = 1, seed: int = 0
                   ) -> Iterator[bytes]:
    """As cut(), over a tar stream that `walker` (a TarWalker) checks as `pieces` arrive
    (volbackup.stream.archive.kept_tar feeds it): cuts also where members start or end,
    as above; between those cuts, FastCDC as cut() does."""
    chunker = FastCDC(avg_size, min_size=min_size, max_size=max_size,
                      normalized_chunking=normalized_chunking, seed=seed)
    cuts: deque[int] = deque()
    last = [0]  # the last cut decided

    def on_member(start: int, data_at: int, entry) -> None:
        group = start - last[0]
        if entry.size >= LARGE:
            end = data_at + -(-entry.size // 512) * 512
            cuts.extend(c for c in (start, end) if c > last[0])
            last[0] = end
        elif group >= GROUP_MAX or (group >= GROUP_MIN
                                    and _name_hash(entry.name) % GROUP_MOD == 0):
            cuts.append(start)
            last[0] = start

    walker.on_member = on_member
    buf = bytearray()
    at = 0                      # stream offset of buf[0]
    window = 4 * max_size
    for piece in pieces:
        buf += piece
        while cuts and cuts[0] <= at + len(buf):
            end = cuts.popleft() - at
            if end > 0:
                yield from _cut_all(chunker, buf, end)
                del buf[:end]
                at += end
        if len(buf) >= window:  # a long stretch without a cut: FastCDC's own points
            settled = min(walker.settled, cuts[0] if cuts else walker.settled) - at
            done = _cut_before(chunker, buf, settled)
            with memoryview(buf) as view:
                yield from _copies(view, done)
            if done:
                del buf[:done[-1][1]]
                at += done[-1][1]
    if buf:
        yield from _cut_all(chunker, buf, len(buf))


def _cut_all(chunker, buf: bytearray, end: int) -> Iterator[bytes]:
    """The chunks of buf[:end], the last ending at `end`."""
    with memoryview(buf) as view:
        spans = [(c.offset, c.offset + c.length) for c in chunker.cut_buf(view[:end])]
        yield from _copies(view, spans)


def _copies(view: memoryview, spans: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    """Each span of `view` (a bytearray's, which must not be resized meanwhile) as bytes,
    copied once: `bytes(buf[a:b])` copies twice (a bytearray slice, then bytes of it),
    0.15 CPU-seconds more a GiB."""
    for a, b in spans:
        yield bytes(view[a:b])


def _cut_before(chunker, buf: bytearray, limit: int) -> list[tuple[int, int]]:
    """Spans of the chunks of buf that FastCDC ended by content (not by the end of buf)
    and that end at or before `limit`."""
    view = memoryview(buf)
    spans = [(c.offset, c.offset + c.length) for c in chunker.cut_buf(view)]
    view.release()
    return [(a, b) for a, b in spans[:-1] if b <= limit]


# Cutting at every member (the packed layout's blobs, docs/design.md "Blobs: cut at every
# member"): a member of at least SMALL bytes (its headers, its data and the data's padding)
# gets blobs of its own, cut where its first header starts and where its data's padding
# ends, FastCDC between; smaller members (directories, symlinks, tiny files) are grouped,
# a group ending before a member that is not small, before a small member whose keyed name
# hash is 0 mod EACH_GROUP_MOD, or where the next member would take it past
# EACH_GROUP_MAX. Nothing depends on offsets but that last rule, so an inserted, removed or
# changed member disturbs its own blobs (and its group) only. The headers of a member with
# at least HEADERS_APART bytes of data are a blob of their own: a file changed in place
# gets a new mtime (and perhaps size), which then rewrites ~1 KiB, not the first ~1.25 MiB
# of its data besides the change (restic and borg keep metadata apart from content too).
SMALL = 4 << 10
HEADERS_APART = 64 << 10
EACH_GROUP_MAX = 64 << 10
EACH_GROUP_MOD = 8


def seed_name_key(seed: int) -> bytes:
    """The key of the member-name hash when the caller has no other: the chunker seed's
    bytes (a plain repository's seed is in its config; an encrypted repository's caller
    should pass a key derived from the repository key instead)."""
    return seed.to_bytes(8, "little")


def member_name_hash(name: str, key: bytes) -> int:
    """BLAKE2b-64 of a member's name, keyed, so that which names end groups cannot be
    told from the names alone."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"),
                                          digest_size=8, key=key).digest(), "little")


def cut_each_member(pieces: Iterable[bytes], walker, avg_size: int, min_size: int,
                    max_size: int, normalized_chunking: int = 1, seed: int = 0, *,
                    name_key: bytes) -> Iterator[bytes]:
    """The tar stream `pieces`, which `walker` (a TarWalker) checks as they arrive
    (volbackup.stream.archive.kept_tar feeds it, so every header in a piece has been told
    before the piece comes here), cut at every member as above.

    Memory: the bytes of the segment whose end is not known yet (a group: at most
    EACH_GROUP_MAX plus a member; extended headers the walker bounds), or, inside a large
    member, a window of 4 * max_size from which FastCDC's own cuts are given out before
    its end arrives (a 4 GiB member is never held)."""
    chunker = FastCDC(avg_size, min_size=min_size, max_size=max_size,
                      normalized_chunking=normalized_chunking, seed=seed)
    # Segments whose end is known, in stream order: (end offset, FastCDC inside?). A
    # segment starts where the one before it ends; bytes after the last are a group (or
    # the end-of-archive marker) whose end is not known yet.
    segments: deque[tuple[int, bool]] = deque()
    group = [0]  # where the open group starts (== the last segment's end)

    def on_member(start: int, data_at: int, entry) -> None:
        end = data_at + -(-entry.size // 512) * 512
        if end - start >= SMALL:
            if start > group[0]:
                segments.append((start, False))
            if entry.size >= HEADERS_APART:
                segments.append((data_at, False))
            segments.append((end, True))
            group[0] = end
        elif start > group[0] and (end - group[0] > EACH_GROUP_MAX or member_name_hash(
                entry.name, name_key) % EACH_GROUP_MOD == 0):
            segments.append((start, False))
            group[0] = start

    walker.on_member = on_member
    buf = bytearray()
    at = 0                      # stream offset of buf[0]
    window = 4 * max_size

    def whole_segments() -> Iterator[bytes]:
        """The blobs of the segments that are all in buf."""
        nonlocal at
        while segments and segments[0][0] <= at + len(buf):
            end, inside = segments.popleft()
            n = end - at
            if inside:
                yield from _cut_all(chunker, buf, n)
            elif n:
                with memoryview(buf) as view:
                    yield bytes(view[:n])
            del buf[:n]
            at = end

    for piece in pieces:
        if isinstance(piece, Reused):   # members taken whole (files cache): they are blobs
            yield from whole_segments()
            if segments:
                raise IntegrityError("a reused member came inside another member")
            if buf:                     # the open group ends where they start
                yield bytes(buf)
                at += len(buf)
                buf.clear()
            yield piece
            at += piece.length
            group[0] = at
            continue
        buf += piece
        yield from whole_segments()
        if segments and segments[0][1] and len(buf) >= window:
            # a large member, not all here: FastCDC's own cuts so far
            done = _cut_before(chunker, buf, len(buf))
            with memoryview(buf) as view:
                yield from _copies(view, done)
            if done:
                del buf[:done[-1][1]]
                at += done[-1][1]
    if segments and segments[0][1]:  # cut short inside a member (the walker says so)
        yield from _cut_all(chunker, buf, len(buf))
    elif buf:
        yield bytes(buf)

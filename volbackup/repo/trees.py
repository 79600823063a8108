"""Trees: a long list of blobs (a snapshot's data blobs, its catalogue's pieces) stored as
content-defined pieces that are blobs themselves, so that metadata deduplicates like data
(docs/design.md, "Trees: metadata in content-defined pieces"; bup's hashsplit, restic's
trees).

A tree blob (kind TREE) is a sequence of 44-byte records `id (32) | length u32 LE |
span u64 LE`: a leaf record names a listed blob (span == its length); a record above
names a tree piece one level down (its length in bytes, span the sum of its spans). A
piece ends after a record whose id, bytes 28-31 read as u32 LE, is 0 mod 1024, or at
8,192 records, or where its level ends; levels stack until one piece remains, the root.
The cut depends on each record alone, so an inserted or removed blob changes its own
leaf piece and the pieces above it; and one list has exactly one tree, which the reader
insists on (a piece cut anywhere else is refused).

Memory, writing and reading: one open piece per level (at most 4 levels of 352 KiB),
never the whole list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from volbackup.errors import IntegrityError, RepositoryError, VolbackupError
from volbackup.repo.blobstore import TREE, BlobStore, Saved
from volbackup.repo.config import MAX_CHUNK

RECORD = struct.Struct("<32sIQ")
RECORD_SIZE = RECORD.size           # 44
CUT_MOD = 1024                      # a piece ends after an id whose bytes 28-31 are 0 mod this
MAX_RECORDS = 8192                  # ... or at this many records
MAX_PIECE = MAX_RECORDS * RECORD_SIZE
MAX_HEIGHT = 4                      # 1,024^4 blobs on average: more is refused
MAX_LENGTH = (1 << 32) - 1          # a length is a u32


class BadTree(IntegrityError):
    """A tree (a snapshot's blob list or catalogue) that breaks a rule: the manifest's
    root, a piece's length, records, cuts, spans or counts (exit 6)."""


class TreeTooTall(VolbackupError):
    """A list so long (or so unlucky in its ids) that its tree would pass MAX_HEIGHT."""


@dataclass(frozen=True)
class TreeRoot:
    """What a manifest records of a tree: its root piece (id and bytes), the height (1:
    the root lists the blobs; 0: the empty tree, id ""), and the leaves' count and bytes."""

    id: str
    length: int
    height: int
    blobs: int
    bytes: int

    def to_fields(self) -> dict:
        return {"root": self.id, "length": self.length, "height": self.height,
                "blobs": self.blobs, "bytes": self.bytes}

    @classmethod
    def from_fields(cls, data: object, where: str) -> "TreeRoot":
        """From a manifest's fields (untrusted): the types here; the values by check()."""
        names = ("root", "length", "height", "blobs", "bytes")
        if not isinstance(data, dict) or set(data) != set(names) \
                or not isinstance(data["root"], str) \
                or not all(type(data[n]) is int for n in names[1:]):
            raise RepositoryError(f"{where} has an invalid tree root")
        root = cls(data["root"], data["length"], data["height"], data["blobs"], data["bytes"])
        root.check()
        return root

    def check(self) -> None:
        """BadTree unless the values can be those of a tree (before anything is read)."""
        if self.height == 0:
            if (self.id, self.length, self.blobs, self.bytes) != ("", 0, 0, 0):
                raise BadTree("tree of height 0 is not the empty tree")
            return
        if not 1 <= self.height <= MAX_HEIGHT:
            raise BadTree(f"tree has height {self.height}, not 1-{MAX_HEIGHT}")
        if len(self.id) != 64 or self.id.strip("0123456789abcdef"):
            raise BadTree(f"tree root {self.id[:80]!r} is not a blob id")
        _check_piece_length(self.id, self.length)
        if self.blobs < 1 or self.bytes < self.blobs:
            raise BadTree(f"tree {_short(self.id)} claims {self.blobs} blobs of "
                          f"{self.bytes} bytes")


EMPTY = TreeRoot("", 0, 0, 0, 0)


def ends_piece(record_id: bytes) -> bool:
    """Does a piece end after a record with this id (the cut rule)?"""
    return int.from_bytes(record_id[28:32], "little") % CUT_MOD == 0


class _Level:
    """The open piece of one level, and what became of the level's first closed piece."""

    __slots__ = ("buf", "count", "span", "pieces", "first")

    def __init__(self):
        self.buf = bytearray()
        self.count = 0          # records in the open piece
        self.span = 0
        self.pieces = 0         # pieces closed on this level
        self.first: tuple[bytes, int] | None = None  # its record, until a second closes


class TreeWriter:
    """Builds the tree of a list given one blob at a time (`add`), saving each piece as
    it closes (kind TREE, zstd at `level`); `finish()` saves the rest and says the root.

    A level's first piece is not named to the level above until a second one closes: a
    level of one piece is the top, and nothing above it is written."""

    def __init__(self, store: BlobStore, level: int,
                 on_add: Callable[[str, int], None] | None = None):
        self._store = store
        self._zstd_level = level
        self._on_add = on_add   # shown each blob added (a parent record keeps the list)
        self._levels: list[_Level] = [_Level()]
        self._root: TreeRoot | None = None
        self.blobs = 0
        self.bytes = 0
        self.pieces = 0         # tree pieces saved
        self.new_pieces = 0     # ... of which the store did not hold already
        self.stored_bytes = 0   # what those took

    def add(self, blob_id: str, length: int) -> None:
        """The next blob of the list: its id and plain length (its span)."""
        if self._root is not None:
            raise ValueError("add() after finish()")
        if not 0 < length <= MAX_LENGTH:
            raise ValueError(f"a listed blob has length {length}")
        self.blobs += 1
        self.bytes += length
        self._push(0, RECORD.pack(bytes.fromhex(blob_id), length, length), length)
        if self._on_add is not None:
            self._on_add(blob_id, length)

    def finish(self) -> TreeRoot:
        """Save what is open; the root (EMPTY when nothing was added). Call once."""
        if self._root is not None:
            return self._root
        if self.blobs == 0:
            self._root = EMPTY
            return EMPTY
        height = 0
        while True:
            level = self._levels[height]
            if level.count:
                self._close(height)
            if level.pieces == 1:
                root_id, length, _ = RECORD.unpack(level.first[0])
                self._root = TreeRoot(root_id.hex(), length, height + 1, self.blobs,
                                      self.bytes)
                return self._root
            height += 1

    def _push(self, height: int, record: bytes, span: int) -> None:
        if height == len(self._levels):
            if height == MAX_HEIGHT:
                raise TreeTooTall(f"a list of more than {self.blobs} blobs needs a tree "
                                  f"taller than {MAX_HEIGHT}; too long to store")
            self._levels.append(_Level())
        level = self._levels[height]
        level.buf += record
        level.count += 1
        level.span += span
        if level.count == MAX_RECORDS or ends_piece(record[:32]):
            self._close(height)

    def _close(self, height: int) -> None:
        level = self._levels[height]
        data = bytes(level.buf)
        saved: Saved = self._store.save(data, self._zstd_level, kind=TREE)
        self.pieces += 1
        self.new_pieces += 1 if saved.written else 0
        self.stored_bytes += saved.stored
        record, span = RECORD.pack(bytes.fromhex(saved.id), len(data), level.span), level.span
        level.buf.clear()
        level.count = level.span = 0
        level.pieces += 1
        if level.pieces == 1:
            level.first = (record, span)
            return
        if level.first is not None:
            self._push(height + 1, *level.first)
            level.first = None
        self._push(height + 1, record, span)


class Leaf(NamedTuple):
    id: str
    length: int
    offset: int     # where its bytes start in the stream the list makes


def walk(store: BlobStore, root: TreeRoot, max_length: int = MAX_CHUNK) -> Iterator[tuple[str, int]]:
    """The listed blobs, (id, length) in order, of the tree `root` (from a manifest:
    untrusted, as every piece is). Each piece is loaded (and checked against its id) by
    the store, then checked here: whole records, cut where the rule cuts and nowhere else,
    no zero lengths, spans that add up, a leaf's span its length and at most `max_length`;
    the count and bytes are the root's. BadTree otherwise, raised before the first leaf
    of the piece that breaks a rule is given out (earlier leaves may have been)."""
    root.check()
    if root.height == 0:
        return
    count = 0
    for leaf in _leaves(store, root, 0, root.bytes, max_length):
        count += 1
        if count > root.blobs:
            raise BadTree(f"tree {_short(root.id)} lists more than the {root.blobs} blobs "
                          f"its manifest says")
        yield leaf.id, leaf.length
    if count != root.blobs:
        raise BadTree(f"tree {_short(root.id)} lists {count} blobs, its manifest "
                      f"{root.blobs}")


def walk_range(store: BlobStore, root: TreeRoot, start: int, end: int,
               max_length: int = MAX_CHUNK) -> Iterator[Leaf]:
    """The listed blobs holding bytes `start` to `end` (exclusive) of the stream, in
    order, with their offsets: only the pieces whose spans cover the range are loaded
    (a partial read). Each piece is checked as walk() checks it; the count of leaves is
    not (only walk() sees them all), the bytes are (the root's spans)."""
    root.check()
    if root.height == 0 or start >= end or start >= root.bytes:
        return
    yield from _leaves(store, root, max(0, start), min(end, root.bytes), max_length)


def referenced(store: BlobStore, root: TreeRoot, walked: set[bytes],
               max_length: int = MAX_CHUNK) -> Iterator[bytes]:
    """Every id a tree names, its pieces' and its leaves' (what a prune keeps), each
    piece loaded and checked as walk() checks it. A piece in `walked` is named but not
    read again (same id, same bytes: its subtree was named already); every piece read is
    added to it, so trees that share pieces (an unchanged volume's) are read once.
    `walked` holds pieces only: a data blob with a piece's id is a leaf, not a subtree
    walked. Memory: one piece per level."""
    root.check()
    if root.height == 0:
        return
    yield from _referenced(store, root.id, root.length, root.bytes, root.height, True,
                           True, walked, max_length)


class Node(NamedTuple):
    id: str
    length: int
    piece: bytes | None     # a tree piece's checked bytes; None: a leaf (a listed blob)


def nodes(store: BlobStore, root: TreeRoot, walked: dict[bytes, int],
          max_length: int = MAX_CHUNK) -> Iterator[Node]:
    """Every blob a tree names, depth first, each piece (with its bytes, loaded and
    checked as walk() checks it) before what it names: what a copy of the tree sends. A
    piece in `walked` (same id, same bytes: it and its subtree were given out already) is
    skipped; `walked` maps each piece read to the count of leaves beneath it, so that the
    count is still checked against the root's (BadTree as soon as it is passed, or after
    the last node when it falls short). Memory: one piece per level, and `walked`."""
    root.check()
    if root.height == 0:
        return
    left = [root.blobs]     # leaves the root still allows
    count = yield from _nodes(store, root.id, root.length, root.bytes, root.height, True,
                              True, walked, max_length, left, root)
    if count != root.blobs:
        raise BadTree(f"tree {_short(root.id)} lists {count} blobs, its manifest "
                      f"{root.blobs}")


def _nodes(store: BlobStore, piece_id: str, length: int, span: int, height: int,
           last: bool, is_root: bool, walked: dict[bytes, int], max_length: int,
           left: list[int], root: TreeRoot) -> Iterator[Node]:
    raw = bytes.fromhex(piece_id)
    if raw in walked:
        _spend(left, walked[raw], root)
        return walked[raw]
    data = _piece(store, piece_id, length, span, height, last, is_root, max_length)
    yield Node(piece_id, length, data)
    count = 0
    records = len(data) // RECORD_SIZE
    for i, (child_id, child_length, child_span) in enumerate(RECORD.iter_unpack(data)):
        if height == 1:
            _spend(left, 1, root)
            count += 1
            yield Node(child_id.hex(), child_length, None)
        else:
            count += yield from _nodes(store, child_id.hex(), child_length, child_span,
                                       height - 1, last and i == records - 1, False,
                                       walked, max_length, left, root)
    walked[raw] = count
    return count


def _spend(left: list[int], leaves: int, root: TreeRoot) -> None:
    left[0] -= leaves
    if left[0] < 0:
        raise BadTree(f"tree {_short(root.id)} lists more than the {root.blobs} blobs "
                      f"its manifest says")


def _referenced(store: BlobStore, piece_id: str, length: int, span: int, height: int,
                last: bool, is_root: bool, walked: set[bytes],
                max_length: int) -> Iterator[bytes]:
    raw = bytes.fromhex(piece_id)
    yield raw
    if raw in walked:
        return
    data = _piece(store, piece_id, length, span, height, last, is_root, max_length)
    count = len(data) // RECORD_SIZE
    for i, (child_id, child_length, child_span) in enumerate(RECORD.iter_unpack(data)):
        if height == 1:
            yield child_id
        else:
            yield from _referenced(store, child_id.hex(), child_length, child_span,
                                   height - 1, last and i == count - 1, False, walked,
                                   max_length)
    walked.add(raw)


def _leaves(store: BlobStore, root: TreeRoot, start: int, end: int,
            max_length: int) -> Iterator[Leaf]:
    """Depth first, one piece per level held: the leaves of `root` meeting [start, end)."""
    # a frame: [a piece's bytes, its height, index of the next record, offset of that
    # record's bytes in the stream, is the piece the last of its level?]
    data = _piece(store, root.id, root.length, root.bytes, root.height, True, True,
                  max_length)
    stack = [[data, root.height, 0, 0, True]]
    while stack:
        frame = stack[-1]
        data, height, index, offset, last = frame
        if index * RECORD_SIZE == len(data) or offset >= end:
            stack.pop()
            continue
        if height == 1:  # the leaves: a piece at a time
            stack.pop()
            for child_id, length, span in RECORD.iter_unpack(memoryview(data)[index * RECORD_SIZE:]):
                if offset >= end:
                    break
                if offset + span > start:
                    yield Leaf(child_id.hex(), length, offset)
                offset += span
            continue
        child_id, length, span = RECORD.unpack_from(data, index * RECORD_SIZE)
        frame[2], frame[3] = index + 1, offset + span
        if offset + span <= start:
            continue
        child_last = last and (index + 1) * RECORD_SIZE == len(data)
        stack.append([_piece(store, child_id.hex(), length, span, height - 1, child_last,
                             False, max_length), height - 1, 0, offset, child_last])


def _piece(store: BlobStore, piece_id: str, length: int, span: int, height: int,
           last: bool, is_root: bool, max_length: int) -> bytes:
    """One piece, loaded and checked (the module's docstring has the rules)."""
    _check_piece_length(piece_id, length)
    data, _ = store.load(piece_id, length)
    if len(data) != length:  # the store checks this; a piece is never trusted to have
        raise BadTree(f"tree piece {_short(piece_id)} holds {len(data)} bytes, not {length}")
    where = f"tree piece {_short(piece_id)}"
    count = length // RECORD_SIZE
    for i in range(count - 1):
        if ends_piece(data[i * RECORD_SIZE:i * RECORD_SIZE + 32]):
            raise BadTree(f"{where} goes on after record {i}, where the cut rule ends it")
    if not last and count < MAX_RECORDS and not ends_piece(data[-RECORD_SIZE:]):
        raise BadTree(f"{where} ends after {count} records, where the cut rule does not "
                      f"end it")
    if is_root and height > 1 and count < 2:
        raise BadTree(f"{where} is a root of height {height} over one piece (that piece "
                      f"is the root)")
    total = 0
    for i, (_, child_length, child_span) in enumerate(RECORD.iter_unpack(data)):
        if child_length == 0 or child_span == 0:
            raise BadTree(f"{where} has a record of length {child_length}, span "
                          f"{child_span} (record {i})")
        if height == 1 and (child_span != child_length or child_length > max_length):
            raise BadTree(f"{where} lists a blob of length {child_length}, span "
                          f"{child_span} (record {i}; at most {max_length} bytes, span "
                          f"its length)")
        total += child_span
    if total != span:
        raise BadTree(f"{where} spans {total} bytes, not the {span} its parent or "
                      f"manifest says")
    return data


def _check_piece_length(piece_id: str, length: int) -> None:
    if not (RECORD_SIZE <= length <= MAX_PIECE and length % RECORD_SIZE == 0):
        raise BadTree(f"tree piece {_short(piece_id)} has length {length}, not 1 to "
                      f"{MAX_RECORDS} records of {RECORD_SIZE} bytes")


def _short(blob_id: str) -> str:
    return blob_id[:16]

"""Catalogue version 2: the packed layout's catalogue, in content-defined pieces under a
tree (docs/design.md, "Trees: metadata in content-defined pieces"). Not yet used by a
layout; version 1 (volbackup.repo.catalogs) is what snapshots hold today.

A line is version 1's without the absolute offsets `at` and `data`, which one early
change would shift in every later line: `hdr` (bytes of header blocks before the data)
and, only when the entry's data takes other than its size rounded up to 512 bytes in
the stream (a sparse member), `span` (those bytes). A reader sums them in stream order.
Lines are cut into `catalog` blobs after a line whose BLAKE2b-64 keyed with `cut_key` is
0 mod 256 (about 45 KiB), or after the line that takes a piece to 4 MiB; the pieces are
the leaves of a tree (volbackup.repo.trees). An unchanged entry has an unchanged line,
so an unchanged volume's catalogue is stored once, and a changed file rewrites its piece
and the tree pieces above it.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import Iterator, NamedTuple

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo.blobstore import CATALOG, BlobStore
from volbackup.repo.chunked import fetch_ahead
from volbackup.repo.trees import TreeRoot, TreeWriter, walk
from volbackup.stream import catalog
from volbackup.stream.catalog import KINDS, MAX_INT, MAX_LINE, CatalogEntry, invalid_field
from volbackup.stream.reuse import ReusedMember
from volbackup.stream.tarstream import BLOCK, Entry, TarWalker, normal_name

VERSION = 3                  # 2 without `st`: read alike
READS = (2, VERSION)
MAX_STAT = (1 << 64) - 1     # an inode number or a time in ns
CUT_MOD = 256                # a piece ends after a line whose keyed hash is 0 mod this
PIECE_BYTES = 4 << 20        # ... or after the line that takes it to this many bytes
MAX_PIECE = PIECE_BYTES - 1 + MAX_LINE
AHEAD = 4                    # pieces fetched ahead of the reader (S3 round trips)
_FIELDS = {"path": str, "type": str, "size": int, "mode": int, "uid": int, "gid": int,
           "mtime": (int, float), "link": str, "hdr": int, "span": int, "sha256": str,
           "st": list}
_OPTIONAL = ("span", "sha256", "st")
_FIELD_NAMES = frozenset(_FIELDS)
_FIELD_CHECKS = tuple((name, kind, name in _OPTIONAL) for name, kind in _FIELDS.items())


def plain_cut_key(config_id: str) -> bytes:
    """The cut key of a plain repository (from its config's id; an encrypted one's caller
    derives one from the repository key, so that piece sizes tell nothing of the lines)."""
    return hashlib.blake2b(config_id.encode(), digest_size=32,
                           key=b"volbackup catalogue cuts").digest()


def ends_piece(line: bytes, cut_key: bytes) -> bool:
    return int.from_bytes(hashlib.blake2b(line, digest_size=8, key=cut_key).digest(),
                          "little") % CUT_MOD == 0


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def to_line(entry: CatalogEntry, span: int | None) -> bytes:
    """The version 2 line of `entry`; `span` the bytes its data takes in the stream."""
    out = {"path": entry.path, "type": entry.type, "size": entry.size, "mode": entry.mode,
           "uid": entry.uid, "gid": entry.gid, "mtime": entry.mtime, "link": entry.link,
           "hdr": entry.data - entry.at}
    if span is not None and span != _padded(entry.size):
        out["span"] = span
    if entry.sha256 is not None:
        out["sha256"] = entry.sha256
    if entry.st is not None:
        out["st"] = list(entry.st)
    return (json.dumps(out, separators=(",", ":")) + "\n").encode()


def parse_line(line: bytes, at: int, stream_bytes: int) -> tuple[CatalogEntry, int]:
    """One version 2 line whose entry starts at `at`, checked as version 1 checks its
    lines: the entry with its offsets, and where the next one starts."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise IntegrityError(f"catalogue has an invalid line {line[:80]!r}") from None
    if type(data) is not dict or not data.keys() <= _FIELD_NAMES:
        raise IntegrityError(f"catalogue has an invalid line {line[:80]!r}")
    for name, kind, optional in _FIELD_CHECKS:
        value = data.get(name)
        if value is None and optional:
            continue
        if value is True or value is False or not isinstance(value, kind):
            raise IntegrityError(f"catalogue line has an invalid {name}: {line[:80]!r}")
    st = data.get("st")
    if st is not None and not (len(st) == 3 and all(
            type(n) is int and 0 <= n <= MAX_STAT for n in st) and data["type"] == "file"):
        raise IntegrityError(f"catalogue line has an invalid st: {line[:80]!r}")
    hdr, span = data["hdr"], data.get("span")
    size = data["size"]
    if not (BLOCK <= hdr <= MAX_INT and hdr % BLOCK == 0) or (span is not None and not (
            0 <= span <= MAX_INT and span % BLOCK == 0 and span != _padded(size))):
        raise IntegrityError(f"catalogue line has an invalid hdr or span: {line[:80]!r}")
    entry = CatalogEntry(path=data["path"], type=data["type"], size=size, mode=data["mode"],
                         uid=data["uid"], gid=data["gid"], mtime=data["mtime"],
                         link=data["link"], at=at, data=at + hdr,
                         sha256=data.get("sha256"), st=tuple(st) if st else None)
    end = entry.data + (_padded(size) if span is None else span)
    bad = invalid_field(entry)
    if bad:
        raise IntegrityError(f"catalogue line has an invalid {bad}: {line[:80]!r}")
    path = entry.path
    if (not path or path.startswith("/") or path != normal_name(path)
            or ".." in path.split("/") or entry.type not in KINDS
            or end > stream_bytes or (entry.size and entry.type != "file")):
        raise IntegrityError(f"catalogue line is not a valid entry: {line[:80]!r}")
    return entry, end


class _Reused(NamedTuple):
    line: bytes
    data: int
    end: int


class CatalogTreeWriter:
    """Takes the entries of a stream in order (`add`, or `record` a walker), storing each
    full piece as a `catalog` blob; `finish` stores the rest and the tree, and gives the
    manifest's `catalog` field. Each line is written when the next entry (or the end)
    says where its data ends: one entry is held, one piece, and the tree's open pieces."""

    def __init__(self, store: BlobStore, level: int, cut_key: bytes):
        self._store, self._level, self._cut_key = store, level, cut_key
        self._tree = TreeWriter(store, level)
        self._buf = bytearray()
        self._held: CatalogEntry | _Reused | None = None
        self.entries = 0
        self.pieces = self.new_pieces = self.stored_bytes = 0

    def record(self, walker: TarWalker) -> None:
        """Have `walker` add each entry as it passes (as catalog.record does), and each
        member the files cache took whole, as the parent's line (`add_reused`)."""
        def on_entry(at: int, data_at: int, entry: Entry, content: str | None) -> None:
            self.add(catalog.entry_of(at, data_at, entry, content))

        walker.on_entry = on_entry
        walker.on_reused = self.add_reused

    def add(self, entry: CatalogEntry) -> None:
        if self._held is not None:
            self._line(self._held, entry.at)
        self._held = entry
        self.entries += 1

    def add_reused(self, at: int, member: ReusedMember) -> None:
        """A member taken whole from the parent snapshot, at `at`: its line is the
        parent's (checked when the parent's catalogue was read), whose `hdr` and `span`
        hold as long as the member ends where it ended there (_line checks)."""
        if self._held is not None:
            self._line(self._held, at)
        self._held = _Reused(member.line, at + member.header, at + member.length)
        self.entries += 1

    def add_line(self, line: bytes) -> None:
        """A line as a catalogue holds it (checked by its reader): `recut`. Not mixed with
        `add`."""
        assert self._held is None
        self.entries += 1
        self._put(line)

    def finish(self, members_end: int) -> dict:
        """`members_end`: where the stream's last entry ends (its end-of-archive marker:
        TarWalker.end_marker_at). The manifest's `catalog` field."""
        if self._held is not None:
            self._line(self._held, members_end)
            self._held = None
        self._flush()
        root = self._tree.finish()
        self.new_pieces += self._tree.new_pieces
        self.stored_bytes += self._tree.stored_bytes
        return {"version": VERSION, "entries": self.entries, **root.to_fields()}

    def _line(self, entry: CatalogEntry | _Reused, next_at: int) -> None:
        if isinstance(entry, _Reused):
            if next_at != entry.end:
                raise IntegrityError("a reused member's line does not end where it does")
            self._put(entry.line)
            return
        if next_at < entry.data:
            raise IntegrityError(f"catalogue entry {entry.path!r} ends before its data")
        line = to_line(entry, next_at - entry.data)
        if len(line) > MAX_LINE:
            raise IntegrityError(f"tar entry {entry.path[:80]!r}... has a name or link "
                                 f"target of over {MAX_LINE >> 20} MiB: no volume holds one")
        self._put(line)

    def _put(self, line: bytes) -> None:
        self._buf += line
        if len(self._buf) >= PIECE_BYTES or ends_piece(line, self._cut_key):
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        data, self._buf = bytes(self._buf), bytearray()
        saved = self._store.save(data, self._level, kind=CATALOG)
        self.pieces += 1
        self.new_pieces += 1 if saved.written else 0
        self.stored_bytes += saved.stored
        self._tree.add(saved.id, len(data))


def check_field(value: object, where: str) -> TreeRoot:
    """A manifest's version 2 `catalog` field, its types and bounds: its tree's root."""
    if not isinstance(value, dict) or value.get("version") not in READS \
            or type(value.get("entries")) is not int or not 0 <= value["entries"] <= MAX_INT:
        raise RepositoryError(f"{where} has an invalid catalogue field")
    fields = {k: v for k, v in value.items() if k not in ("version", "entries")}
    root = TreeRoot.from_fields(fields, where)
    if root.blobs > value["entries"]:  # no piece is empty
        raise RepositoryError(f"{where} has an invalid catalogue field")
    return root


def entries(store: BlobStore, field: dict, stream_bytes: int, cut_key: bytes,
            where: str) -> Iterator[CatalogEntry]:
    """The entries of a version 2 catalogue, in stream order, every piece and line
    checked: the tree (volbackup.repo.trees.walk), each piece against its id, whole lines
    cut where the rule cuts and nowhere else, each line as version 1's are, the count.
    Memory: AHEAD pieces and the tree's path to them."""
    for _, entry in _checked_lines(store, field, stream_bytes, cut_key, where):
        yield entry


def entries_with_lines(store: BlobStore, field: dict, stream_bytes: int, cut_key: bytes,
                       where: str) -> Iterator[tuple[bytes, CatalogEntry]]:
    """As `entries`, with each entry's line as stored (the files cache passes a reused
    member's line on unchanged)."""
    return _checked_lines(store, field, stream_bytes, cut_key, where)


def recut(store: BlobStore, field: dict, stream_bytes: int, cut_key: bytes, where: str,
          writer: "CatalogTreeWriter") -> dict:
    """A version 2 or 3 catalogue read from `store` (checked as `entries` checks it, cut with
    `cut_key`) and written by `writer`, line for line, cut with the writer's key: a copy
    into a repository whose cut key is another (two plain repositories: each derives it
    from its own config id). The new `catalog` field."""
    for line, _ in _checked_lines(store, field, stream_bytes, cut_key, where):
        writer.add_line(line)
    # the same lines: the same version (2 has no `st`; a reader takes either)
    return {**writer.finish(members_end=0), "version": field["version"]}


def _checked_lines(store: BlobStore, field: dict, stream_bytes: int, cut_key: bytes,
                   where: str) -> Iterator[tuple[bytes, CatalogEntry]]:
    root = check_field(field, where)
    at = count = pieces = 0
    ids: deque[str] = deque()  # of the pieces being fetched, in order

    def listed() -> Iterator[tuple[str, int]]:
        for piece_id, length in walk(store, root, max_length=MAX_PIECE):
            ids.append(piece_id)
            yield piece_id, length

    for data, _ in fetch_ahead(store, listed(), AHEAD):
        piece_id = ids.popleft()
        pieces += 1
        last_piece = pieces == root.blobs
        if not data.endswith(b"\n"):
            raise IntegrityError(f"catalogue piece {piece_id[:16]} of {where} does not end "
                                 f"with a whole line")
        start = 0
        while start < len(data):
            stop = data.index(b"\n", start) + 1
            line = data[start:stop]
            if len(line) > MAX_LINE:
                raise IntegrityError(f"catalogue has a line of over {MAX_LINE} bytes")
            ends = stop >= PIECE_BYTES or ends_piece(line, cut_key)
            if ends != (stop == len(data)) and not (stop == len(data) and last_piece):
                raise IntegrityError(
                    f"catalogue piece {piece_id[:16]} of {where} is not cut where the cut "
                    f"rule cuts (after {stop} bytes)")
            entry, at = parse_line(line, at, stream_bytes)
            count += 1
            if count > field["entries"]:
                raise IntegrityError(f"catalogue of {where} holds more than the "
                                     f"{field['entries']} entries its manifest says")
            yield line, entry
            start = stop
    if count != field["entries"]:
        raise IntegrityError(f"catalogue of {where} holds {count} entries, its manifest "
                             f"{field['entries']}")

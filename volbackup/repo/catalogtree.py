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

import functools
import hashlib
import json
import os
import re
from collections import deque
from typing import Callable, Iterator, NamedTuple, Sequence

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo.blobstore import CATALOG, BlobStore
from volbackup.repo.chunked import fetch_ahead
from volbackup.repo.trees import TreeRoot, TreeWriter, walk
from volbackup.stream import catalog
from volbackup.stream.catalog import (KINDS, MAX_INT, MAX_LINE, CatalogEntry, in_range,
                                      invalid_field)
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
    """Whether the line's keyed BLAKE2b-64, read little-endian, is 0 mod CUT_MOD (256:
    its first byte is 0)."""
    hasher = _keyed(cut_key).copy()     # the key's block once, not once a line
    hasher.update(line)
    return hasher.digest()[0] == 0


@functools.lru_cache(maxsize=8)
def _keyed(cut_key: bytes):
    return hashlib.blake2b(digest_size=8, key=cut_key)


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


# A line as to_line writes it (json.dumps: ASCII, keys in this order, no spaces). Such a
# line is read by this pattern, which gives the values json.loads would; any other line
# (another writer's, or crafted) is read by json.loads. Both are then checked alike.
_STRING = rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+)"'
_NATURAL = rb"(0|[1-9][0-9]{0,19})"      # longer: read by json.loads
_CANONICAL = re.compile(
    rb'\{"path":' + _STRING + rb',"type":"([a-z]+)","size":' + _NATURAL
    + rb',"mode":' + _NATURAL + rb',"uid":' + _NATURAL + rb',"gid":' + _NATURAL
    + rb',"mtime":(-?(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,40})?(?:[eE][-+]?[0-9]{1,4})?),"link":'
    + _STRING
    + rb',"hdr":' + _NATURAL + rb'(?:,"span":' + _NATURAL + rb')?'
    + rb'(?:,"sha256":"([0-9a-f]{64})")?'
    + rb'(?:,"st":\[' + _NATURAL + rb',' + _NATURAL + rb',' + _NATURAL + rb'\])?\}\n?')


def _text(raw: bytes) -> str:
    return json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("ascii")


def _number(raw: bytes) -> int | float:
    return int(raw) if raw.isdigit() or raw[1:].isdigit() else float(raw)


def _fields(line: bytes) -> dict:
    """The fields of a line, as json.loads gives them, their types checked."""
    fields = _canonical_fields(line)
    return fields if fields is not None else _json_fields(line)


def _canonical_fields(line: bytes) -> dict | None:
    """The fields of a line in to_line's form (about 3x faster than json.loads), or None."""
    m = _CANONICAL.fullmatch(line)
    if m is not None:
        (path, kind, size, mode, uid, gid, mtime, link, hdr, span, sha256,
         ino, mtime_ns, ctime_ns) = m.groups()
        data = {"path": _text(path), "type": kind.decode(), "size": int(size),
                "mode": int(mode), "uid": int(uid), "gid": int(gid), "mtime": _number(mtime),
                "link": _text(link), "hdr": int(hdr)}
        if span is not None:
            data["span"] = int(span)
        if sha256 is not None:
            data["sha256"] = sha256.decode()
        if ino is not None:
            data["st"] = [int(ino), int(mtime_ns), int(ctime_ns)]
        return data
    return None


def _json_fields(line: bytes) -> dict:
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
    if st is not None and not (len(st) == 3 and all(type(n) is int for n in st)):
        raise IntegrityError(f"catalogue line has an invalid st: {line[:80]!r}")
    return data


def parse_line(line: bytes, at: int, stream_bytes: int) -> tuple[CatalogEntry, int]:
    """One version 2 line whose entry starts at `at`, checked as version 1 checks its
    lines: the entry with its offsets, and where the next one starts."""
    data = _fields(line)
    st = data.get("st")
    if st is not None and not (max(st) <= MAX_STAT and min(st) >= 0
                               and data["type"] == "file"):
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

    def __init__(self, store: BlobStore, level: int, cut_key: bytes,
                 on_line: Callable[[bytes], None] | None = None):
        self._store, self._level, self._cut_key = store, level, cut_key
        self._on_line = on_line   # shown each line stored (a parent record keeps them)
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

    def add_reused(self, at: int, members: Sequence[ReusedMember]) -> None:
        """Members taken whole from the parent snapshot, the first at `at`: each line is
        the parent's (checked when the parent's catalogue was read), whose `hdr` and `span`
        hold as long as the member ends where it ended there (_line checks it for the
        first; each of the others starts where the one before it ends, by this count)."""
        if self._held is not None:
            self._line(self._held, at)
        put = self._put
        for member in members[:-1]:
            put(member.line)
            at += member.length
        last = members[-1]
        self._held = _Reused(last.line, at + last.header, at + last.length)
        self.entries += len(members)

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
        if self._on_line is not None:
            self._on_line(line)
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


class ParentLine(NamedTuple):
    """A line of a parent snapshot's catalogue as the files cache reads it: what a file is
    matched on, where its member lies, and the line to pass on. `key` (the path's
    components, as the walk of a volume gives them) is None for an entry that cannot be
    taken: not a regular file with `st`, a digest and no link."""

    line: bytes
    key: tuple[bytes, ...] | None
    at: int          # where its member starts in the stream
    hdr: int         # its header bytes, before the data
    end: int         # where its member ends
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int | float
    st: tuple[int, int, int] | None


def parent_lines(store: BlobStore, field: dict, stream_bytes: int, cut_key: bytes,
                 where: str) -> Iterator[ParentLine]:
    """The catalogue's lines for the files cache, checked as far as it relies on them.

    A line in to_line's form is not checked whole as `entries` checks it, which cost the
    files cache a third of its time: what a taken file's line holds besides its offsets
    and its time is compared with the file's own lstat (path, size, mode, owner, `st`),
    so a line that passes is one a reader accepts; the offsets of every line are checked.
    Any other line is read by parse_line. Where pieces are cut is not checked: the
    backup cuts the lines it takes again, by its own rule."""
    at = 0
    for line in _piece_lines(store, field, cut_key, where, check_cuts=False):
        parsed = parent_line(line, at, stream_bytes)
        at = parsed.end
        yield parsed


def parent_line(line: bytes, at: int, stream_bytes: int) -> ParentLine:
    """One line whose member starts at `at`, as parent_lines reads it."""
    m = _CANONICAL.fullmatch(line)
    if m is None:
        entry, end = parse_line(line, at, stream_bytes)
        key = tuple(os.fsencode(entry.path).split(b"/")) \
            if entry.type == "file" and entry.st and entry.sha256 and not entry.link else None
        return ParentLine(line, key, at, entry.data - at, end, entry.size, entry.mode,
                          entry.uid, entry.gid, entry.mtime, entry.st)
    path, kind, size, mode, uid, gid, mtime, link, hdr, span, sha256, ino, mtime_ns, \
        ctime_ns = m.groups()
    hdr, size = int(hdr), int(size)
    spans = -(-size // BLOCK) * BLOCK if span is None else int(span)
    if not (BLOCK <= hdr <= MAX_INT and hdr % BLOCK == 0 and size <= MAX_INT) or (
            span is not None and not (spans <= MAX_INT and spans % BLOCK == 0
                                      and spans != _padded(size))):
        raise IntegrityError(f"catalogue line has an invalid hdr or span: {line[:80]!r}")
    end = at + hdr + spans
    if end > stream_bytes or (size and kind != b"file"):
        raise IntegrityError(f"catalogue line is not a valid entry: {line[:80]!r}")
    if kind != b"file" or ino is None or sha256 is None or link:
        return ParentLine(line, None, at, hdr, end, size, 0, 0, 0, 0, None)
    time = _number(mtime)
    if not in_range(time):
        raise IntegrityError(f"catalogue line has an invalid mtime: {line[:80]!r}")
    if b"\\" in path:
        try:
            key = tuple(os.fsencode(_text(path)).split(b"/"))
        except UnicodeEncodeError:      # a lone surrogate no file name decodes to
            key = None
    else:
        key = tuple(path.split(b"/"))
    return ParentLine(line, key, at, hdr, end, size, int(mode), int(uid), int(gid), time,
                      (int(ino), int(mtime_ns), int(ctime_ns)))


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
    at = 0
    for line in _piece_lines(store, field, cut_key, where):
        entry, at = parse_line(line, at, stream_bytes)
        yield line, entry


def _piece_lines(store: BlobStore, field: dict, cut_key: bytes, where: str,
                 check_cuts: bool = True) -> Iterator[bytes]:
    """The lines of a catalogue, each piece checked against its id and (`check_cuts`) the
    cut rule, and their number against the manifest's."""
    root = check_field(field, where)
    count = pieces = 0
    ids: deque[str] = deque()  # of the pieces being fetched, in order
    most = field["entries"]

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
        if data.count(b"\n") > most - count:
            raise IntegrityError(f"catalogue of {where} holds more than the "
                                 f"{most} entries its manifest says")
        start = 0
        while start < len(data):
            stop = data.index(b"\n", start) + 1
            line = data[start:stop]
            if len(line) > MAX_LINE:
                raise IntegrityError(f"catalogue has a line of over {MAX_LINE} bytes")
            if check_cuts and (stop >= PIECE_BYTES or ends_piece(line, cut_key)) != (
                    stop == len(data)) and not (stop == len(data) and last_piece):
                raise IntegrityError(
                    f"catalogue piece {piece_id[:16]} of {where} is not cut where the cut "
                    f"rule cuts (after {stop} bytes)")
            count += 1
            yield line
            start = stop
    if count != most:
        raise IntegrityError(f"catalogue of {where} holds {count} entries, its manifest "
                             f"{most}")

"""The index of a packed repository: which pack holds a blob, where, and how long it is.

    index     = "VBINDEX" || u8 version (1) || u8 flags (1: MAC present)
                || u32 LE pack count || u32 LE blob count
                || packs:     pack id (32) || u32 pack length || u8 pack kind   (ordinal = place)
                || ids:       blob count x 32 bytes, ascending (a repeat allowed: two copies)
                || locations: blob count x (u32 pack ordinal || u32 offset || u32 stored length
                              || u32 plain length), in the order of the ids
                || HMAC-SHA256(authentication key, "volbackup index" || all of the above)
                                                                        [encrypted repositories]

Index objects (`index/<sha256 of the bytes>`) are written after the packs they name and
before the manifest that needs them. Binary and column-wise, so that loading is slicing,
not parsing an entry at a time (docs/design.md, "Index objects"). An index object is
untrusted input: its MAC is checked first in an encrypted repository, then every count,
ordinal and range against the packs it names.

In memory (`BlobIndex`): every loaded object merged into one sorted id column and four
location columns (48 bytes per blob, plus a 256 KiB bucket table), looked up by
`bytes.find` inside the id's bucket; blobs added by this run sit beside it, in a dict until
their packs are indexed, then in a second table of the same form.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import re
import struct
import sys
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate, chain, islice, repeat
from typing import Callable, Iterable, Iterator

from volbackup.errors import IntegrityError
from volbackup.repo.packs import DATA_PACK, MAC_BYTES, MAX_STORED, TAIL_BYTES, TREE_PACK
from volbackup.repo.config import MAX_CHUNK

PREFIX = "index/"
_KEY = re.compile(r"index/([0-9a-f]{64})")
MAGIC = b"VBINDEX"
VERSION = 1
FLAG_MAC = 1
LABEL = b"volbackup index"
ID = 32
_HEAD = struct.Struct("<7sBBII")
_PACK = struct.Struct("<32sIB")
# A location this run added: pack ordinal, offset, stored and plain length, packed (one
# bytes object of 53 bytes a blob, where a list of tuples took about 250)
_ADDED = struct.Struct("<IQQQ")
MAX_BLOBS = 1 << 21          # per index object: a writer starts another before
MAX_PACKS = 1 << 20
MAX_PACK_BYTES = (1 << 32) - 1
MAX_BYTES = _HEAD.size + MAX_PACKS * _PACK.size + MAX_BLOBS * (ID + 16) + MAC_BYTES
WRITE_BLOBS = 1 << 19        # blobs per index object a writer makes (24 MiB)
_BUCKETS = 1 << 16
COUNTED_MOST = 1 << 18   # ids whose buckets _buckets counts rather than bisects


def index_key(name: str) -> str:
    return f"{PREFIX}{name}"


def index_name_of(key: str) -> str | None:
    match = _KEY.fullmatch(key)
    return match[1] if match else None


@dataclass(frozen=True)
class PackInfo:
    id: bytes       # 32 bytes: the sha256 of the pack
    length: int     # bytes
    kind: int       # DATA_PACK or TREE_PACK

    @property
    def hex(self) -> str:
        return self.id.hex()


@dataclass(frozen=True)
class Location:
    pack: PackInfo
    offset: int
    stored: int
    plain: int


@dataclass
class IndexObject:
    packs: list[PackInfo]
    ids: bytes          # ascending, ID bytes each
    columns: tuple[array, array, array, array]   # "I": pack ordinal, offset, stored, plain

    @property
    def blobs(self) -> int:
        return len(self.ids) // ID


Entry = tuple[bytes, int, int, int]   # blob id, offset, stored length, plain length


def encode(packs: list[tuple[PackInfo, list[Entry]]],
           mac: Callable[[bytes, bytes], bytes]) -> tuple[str, bytes]:
    """An index object for `packs` (each with the entries it holds): (name, bytes)."""
    rows = sorted((blob_id, ordinal, offset, stored, plain)
                  for ordinal, (_, entries) in enumerate(packs)
                  for blob_id, offset, stored, plain in entries)
    if len(packs) > MAX_PACKS or len(rows) > MAX_BLOBS:
        raise ValueError("too many packs or blobs for one index object")
    tag = mac(LABEL, b"")
    out = bytearray(_HEAD.pack(MAGIC, VERSION, FLAG_MAC if tag else 0, len(packs), len(rows)))
    for info, _ in packs:
        out += _PACK.pack(info.id, info.length, info.kind)
    out += b"".join(row[0] for row in rows)
    locs = array("I", (n for row in rows for n in row[1:]))
    if sys.byteorder != "little":
        locs.byteswap()
    out += locs.tobytes()
    out += mac(LABEL, bytes(out))
    data = bytes(out)
    return hashlib.sha256(data).hexdigest(), data


def decode(raw: bytes, mac: Callable[[bytes, bytes], bytes], where: str) -> IndexObject:
    """An index object's packs, ids and locations, checked (IntegrityError otherwise)."""
    want_mac = bool(mac(LABEL, b""))
    if len(raw) < _HEAD.size:
        raise IntegrityError(f"{where} is too short to be an index object")
    magic, version, flags, pack_count, blob_count = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError(f"{where} is not an index object")
    if version != VERSION:
        raise IntegrityError(f"{where} has index version {version}; this volbackup reads "
                             f"{VERSION} (upgrade volbackup?)")
    if flags & ~FLAG_MAC or bool(flags & FLAG_MAC) != want_mac:
        raise IntegrityError(f"{where} has flags {flags}: "
                             + ("not authenticated, in an encrypted repository" if want_mac
                                else "not an index object of a plain repository"))
    if want_mac:
        if len(raw) < _HEAD.size + MAC_BYTES or not hmac.compare_digest(
                mac(LABEL, raw[:-MAC_BYTES]), raw[-MAC_BYTES:]):
            raise IntegrityError(f"{where} is not authentic: its MAC does not match the "
                                 f"repository key (forged, or altered)")
        raw = raw[:-MAC_BYTES]
    if pack_count > MAX_PACKS or blob_count > MAX_BLOBS or len(raw) != (
            _HEAD.size + pack_count * _PACK.size + blob_count * (ID + 16)):
        raise IntegrityError(f"{where}: its length does not match its counts")
    at = _HEAD.size
    packs = []
    for pack_id, length, kind in _PACK.iter_unpack(raw[at:at + pack_count * _PACK.size]):
        if kind not in (DATA_PACK, TREE_PACK) or length <= TAIL_BYTES:
            raise IntegrityError(f"{where} names pack {pack_id.hex()} with an invalid kind "
                                 f"or length")
        packs.append(PackInfo(pack_id, length, kind))
    at += pack_count * _PACK.size
    ids = raw[at:at + blob_count * ID]
    locs = array("I", raw[at + blob_count * ID:])
    if sys.byteorder != "little":
        locs.byteswap()
    columns = (locs[0::4], locs[1::4], locs[2::4], locs[3::4])
    del locs
    _check_entries(ids, columns, packs, where)
    return IndexObject(packs, ids, columns)


def _check_entries(ids: bytes, columns: tuple[array, ...], packs: list[PackInfo],
                   where: str) -> None:
    """Ids in order (by the first two bytes, which lookups rely on: the whole order is
    not checked, an id out of place within its bucket is only found later); every location
    inside its pack and within the bounds of a blob. Column-wise, in C loops: a million
    entries in a fraction of a second."""
    if not ids:
        return
    keys = _prefixes(ids)
    if not all(map(operator.le, keys, islice(keys, 1, None))):
        raise IntegrityError(f"{where}: its ids are not in order")
    ordinals, offsets, stored, plain = columns
    limits = [p.length - TAIL_BYTES for p in packs]
    if max(ordinals) >= len(packs) or min(stored) == 0 or max(stored) > MAX_STORED \
            or min(plain) == 0 or max(plain) > MAX_CHUNK \
            or not all(map(operator.le, map(operator.add, offsets, stored),
                           map(limits.__getitem__, ordinals))):
        raise IntegrityError(f"{where} has a location outside its pack or out of bounds")


class _Table:
    """Blob ids in order and their four location columns, looked up by bucket (the
    ids' first two bytes)."""

    def __init__(self, ids: bytes | bytearray, columns: tuple[array, array, array, array]):
        self.ids, self.columns = ids, columns
        self.starts = _buckets(ids)

    def __len__(self) -> int:
        return len(self.ids) // ID

    def find(self, blob_id: bytes) -> int:
        """The position of the first copy of `blob_id`, or -1."""
        if len(blob_id) != ID:
            return -1
        bucket = blob_id[0] << 8 | blob_id[1]
        pos, end = self.starts[bucket] * ID, self.starts[bucket + 1] * ID
        while (pos := self.ids.find(blob_id, pos, end)) >= 0:
            if pos % ID == 0:
                return pos // ID
            pos += 1
        return -1

    def copies(self, blob_id: bytes) -> Iterator[int]:
        """The positions of every copy of `blob_id` (they are next to each other)."""
        i = self.find(blob_id)
        while 0 <= i < len(self) and self.ids[i * ID:(i + 1) * ID] == blob_id:
            yield i
            i += 1

    def row(self, i: int) -> tuple[int, int, int, int]:
        return tuple(column[i] for column in self.columns)  # type: ignore[return-value]

    def rows(self) -> Iterator[tuple[bytes, tuple[int, int, int, int]]]:
        """Every (blob id, location columns), in id order."""
        ids = self.ids
        for i in range(len(self)):
            yield bytes(ids[i * ID:(i + 1) * ID]), self.row(i)


class BlobIndex:
    """Every loaded index object merged: blob id -> its locations (more than one when a
    blob was stored twice; a reader takes the first that checks out).

    This run's own blobs (`add`) are kept apart, never doomed: first in a dict of packed
    records, then, once their packs are indexed (`fold`, every few tens of thousands of
    blobs), in a second sorted table of 48 bytes a blob, so that what a long run holds does
    not grow at ~190 bytes a blob, and the loaded table is never copied for them."""

    def __init__(self, objects: Iterable[IndexObject] = ()):
        self.packs: list[PackInfo] = []
        self._ordinal: dict[bytes, int] = {}
        self.conflicts: list[str] = []     # packs two objects disagree about
        self.disputed: set[bytes] = set()  # their ids
        objects = list(objects)
        remaps = [[self._add_pack(p) for p in obj.packs] for obj in objects]
        self._loaded = _Table(*_merge(objects, remaps))
        self._run = _Table(b"", (array("I"), array("I"), array("I"), array("I")))  # folded
        self._added: dict[bytes, bytes] = {}   # this run's, not yet folded: id -> _ADDED
        self._doomed: frozenset[bytes] = frozenset()
        self._doomed_ordinals: frozenset[int] = frozenset()

    @property
    def ids(self) -> bytes | bytearray:
        """The loaded table's ids (in order, ID bytes each; this run's are not in it)."""
        return self._loaded.ids

    @property
    def columns(self) -> tuple[array, array, array, array]:
        return self._loaded.columns

    def _add_pack(self, info: PackInfo) -> int:
        ordinal = self._ordinal.get(info.id)
        if ordinal is None:
            ordinal = self._ordinal[info.id] = len(self.packs)
            self.packs.append(info)
        elif self.packs[ordinal] != info:
            self.disputed.add(info.id)
            known = self.packs[ordinal]
            self.conflicts.append(f"index objects disagree about pack {info.hex}: length "
                                  f"{known.length} or {info.length}, kind {known.kind} or "
                                  f"{info.kind}")
        return ordinal

    def __len__(self) -> int:
        return len(self._loaded) + len(self._run) \
            + sum(len(v) for v in self._added.values()) // _ADDED.size

    def add(self, pack: PackInfo, entries: Iterable[Entry]) -> None:
        """A pack this run wrote: its blobs are found from now on."""
        ordinal = self._add_pack(pack)
        added = self._added
        for blob_id, offset, stored, plain in entries:
            added[blob_id] = added.get(blob_id, b"") + _ADDED.pack(ordinal, offset, stored,
                                                                   plain)

    def fold(self) -> None:
        """Move what `add` holds into this run's sorted table (the store calls it once the
        packs are indexed): found as before, at 48 bytes a blob."""
        if not self._added:
            return
        added, self._added = self._added, {}
        ids = bytearray()
        columns = (array("I"), array("I"), array("I"), array("I"))
        for blob_id in sorted(added):
            for location in _ADDED.iter_unpack(added.pop(blob_id)):
                ids += blob_id
                for column, value in zip(columns, location):
                    column.append(value)
        new = IndexObject([], ids, columns)
        same = list(range(len(self.packs)))
        run = IndexObject([], self._run.ids, self._run.columns)
        self._run = _Table(*_merge([run, new], [same, same]) if len(self._run) else
                           (new.ids, new.columns))

    def added(self) -> list[tuple[PackInfo, list[Entry]]]:
        """The packs this run wrote (`add`): what an index loaded again is given back."""
        by_pack: dict[int, list[Entry]] = {}
        for blob_id, (ordinal, offset, stored, plain) in self._mine():
            by_pack.setdefault(ordinal, []).append((blob_id, offset, stored, plain))
        return [(self.packs[ordinal], entries) for ordinal, entries in by_pack.items()]

    def _mine(self) -> Iterator[tuple[bytes, tuple[int, int, int, int]]]:
        yield from self._run.rows()
        for blob_id, locations in self._added.items():
            for loc in _ADDED.iter_unpack(locations):
                yield blob_id, loc

    def written_here(self, blob_id: bytes) -> bool:
        """Whether this run wrote the blob into a pack (`add`)."""
        return blob_id in self._added or self._run.find(blob_id) >= 0

    @property
    def doomed(self) -> frozenset[bytes]:
        """Packs a prune plan dooms (volbackup.repo.pruneplan): a writer does not count on
        their blobs (`has`), a reader tries them last (`locations`)."""
        return self._doomed

    @doomed.setter
    def doomed(self, packs: frozenset[bytes]) -> None:
        self._doomed = frozenset(packs)
        self._doomed_ordinals = frozenset(self._ordinal[p] for p in packs if p in self._ordinal)

    def has(self, blob_id: bytes) -> bool:
        """Whether a writer may name the blob: a copy outside the doomed packs. The loaded
        copies are asked first: a re-backup finds most of its blobs there."""
        if not self._doomed_ordinals:
            if self._loaded.find(blob_id) >= 0:
                return True
        else:
            ordinals = self._loaded.columns[0]
            if any(ordinals[i] not in self._doomed_ordinals
                   for i in self._loaded.copies(blob_id)):
                return True
        return self.written_here(blob_id)   # this run's packs are never doomed

    def locations(self, blob_id: bytes) -> list[Location]:
        """Where the blob is stored: the copies this run wrote first, then the loaded
        ones; copies in doomed packs last."""
        found = self.all_locations(blob_id)
        if self.doomed:
            found.sort(key=lambda loc: loc.pack.id in self.doomed)
        return found

    def all_locations(self, blob_id: bytes) -> list[Location]:
        found = [self._location(*loc)
                 for loc in _ADDED.iter_unpack(self._added.get(blob_id, b""))]
        found += [self._location(*self._run.row(i)) for i in self._run.copies(blob_id)]
        found += [self._location(*self._loaded.row(i)) for i in self._loaded.copies(blob_id)]
        return found

    def _location(self, ordinal: int, offset: int, stored: int, plain: int) -> Location:
        return Location(self.packs[ordinal], offset, stored, plain)

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Every (blob id, location), loaded ones in id order, then this run's."""
        for blob_id, loc in chain(self._loaded.rows(), self._mine()):
            yield blob_id, self._location(*loc)


def _merge(objects: list[IndexObject], remaps: list[list[int]]
           ) -> tuple[bytes | bytearray, tuple[array, array, array, array]]:
    """One sorted id column and its location columns (pack ordinals remapped) from many
    objects, written into columns allocated once. The objects are merged a part of the id
    space at a time (ids of one first byte): sorting a permutation keyed by the ids keeps
    every loop in C, and its transient memory (about 100 bytes a blob: a list of the ids
    and the permutation) is that of one part, not of the whole index. Equal ids keep the
    objects' order."""
    if not objects:
        return b"", (array("I"), array("I"), array("I"), array("I"))
    sources = [(obj.ids, (_remapped(obj.columns[0], remap), *obj.columns[1:]))
               for obj, remap in zip(objects, remaps)]
    if len(sources) == 1:
        return sources[0]
    total = sum(len(ids) // ID for ids, _ in sources)
    merged = bytearray(total * ID)
    columns = tuple(array("I", [0]) * total for _ in range(4))
    parts = [_first_byte_starts(ids) for ids, _ in sources]
    at = 0
    for part in range(256):
        spans = [(ids, cols, starts[part], starts[part + 1])
                 for (ids, cols), starts in zip(sources, parts) if starts[part] < starts[part + 1]]
        if not spans:
            continue
        ids = [span[i:i + ID] for span, _, first, end in spans
               for i in range(first * ID, end * ID, ID)]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        merged[at * ID:(at + len(ids)) * ID] = b"".join(map(ids.__getitem__, order))
        del ids
        for c in range(4):
            whole = array("I")
            for _, cols, first, end in spans:
                whole.extend(cols[c][first:end])
            columns[c][at:at + len(order)] = array("I", map(whole.__getitem__, order))
        at += len(order)
    return merged, (columns[0], columns[1], columns[2], columns[3])


def _remapped(ordinals: array, remap: list[int]) -> array:
    if remap == list(range(len(remap))):
        return ordinals
    return array("I", map(remap.__getitem__, ordinals))


def _first_byte_starts(ids: bytes) -> list[int]:
    """Where the ids of each first byte start, and the end: 257 positions (the ids are
    in order by their first two bytes, which decode checks)."""
    return list(map(bisect_left, repeat(ids[0::ID]), range(257)))


def _prefixes(ids: bytes) -> array:
    """The first two bytes of each id, as unsigned 16-bit numbers."""
    n = len(ids) // ID
    prefix = bytearray(2 * n)
    prefix[0::2], prefix[1::2] = ids[0::ID], ids[1::ID]
    keys = array("H", bytes(prefix))
    if sys.byteorder == "little":
        keys.byteswap()
    return keys


def _buckets(ids: bytes | bytearray) -> array:
    """Where each bucket of ids (their first two bytes) starts: 65,537 positions, each the
    first id of its bucket or after. Up to COUNTED_MOST ids, from their count per bucket
    (a Python loop over the ids: 3 ms at 15,000, where 65,537 bisections take 20 ms, paid
    by every backup at start); past it, by bisection in the sorted prefixes (C loops, no
    table of counts: 32 ms at a million ids, counting 73)."""
    keys = _prefixes(ids)
    if len(keys) > COUNTED_MOST:
        return array("I", map(bisect_left, repeat(keys), range(_BUCKETS + 1)))
    counts = array("I", bytes(4 * (_BUCKETS + 1)))
    for key in keys:
        counts[key + 1] += 1
    return array("I", accumulate(counts))

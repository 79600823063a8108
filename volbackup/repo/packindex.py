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

In memory (`BlobIndex`): every loaded object merged into one sorted id column and one
location column (48 bytes per blob, plus a 256 KiB bucket table), looked up by
`bytes.find` inside the id's bucket; blobs added by this run sit in a dict beside it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import struct
import sys
from array import array
from bisect import bisect_left
from dataclasses import dataclass
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
MAX_BLOBS = 1 << 21          # per index object: a writer starts another before
MAX_PACKS = 1 << 20
MAX_PACK_BYTES = (1 << 32) - 1
MAX_BYTES = _HEAD.size + MAX_PACKS * _PACK.size + MAX_BLOBS * (ID + 16) + MAC_BYTES
WRITE_BLOBS = 1 << 19        # blobs per index object a writer makes (24 MiB)
_BUCKETS = 1 << 16


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
    locs: array         # "I": ordinal, offset, stored, plain per blob

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
    _check_entries(ids, locs, packs, where)
    return IndexObject(packs, ids, locs)


def _check_entries(ids: bytes, locs: array, packs: list[PackInfo], where: str) -> None:
    """Ids ascending; every location inside its pack and within the bounds of a blob."""
    previous = b""
    for i in range(len(ids) // ID):
        blob_id = ids[i * ID:(i + 1) * ID]
        if blob_id < previous:
            raise IntegrityError(f"{where}: its ids are not in order")
        previous = blob_id
    lengths = [p.length - TAIL_BYTES for p in packs]
    for ordinal, offset, stored, plain in zip(locs[0::4], locs[1::4], locs[2::4], locs[3::4]):
        if ordinal >= len(packs) or not 0 < stored <= MAX_STORED \
                or not 0 < plain <= MAX_CHUNK or offset + stored > lengths[ordinal]:
            raise IntegrityError(f"{where} has a location outside its pack or out of bounds")


class BlobIndex:
    """Every loaded index object merged: blob id -> its locations (more than one when a
    blob was stored twice; a reader takes the first that checks out)."""

    def __init__(self, objects: Iterable[IndexObject] = ()):
        self.packs: list[PackInfo] = []
        self._ordinal: dict[bytes, int] = {}
        self.conflicts: list[str] = []     # packs two objects disagree about
        objects = list(objects)
        remaps = [array("I", (self._add_pack(p) for p in obj.packs)) for obj in objects]
        self.ids, self.locs = _merge(objects, remaps)
        self._starts = _buckets(self.ids)
        self._added: dict[bytes, list[tuple[int, int, int, int]]] = {}

    def _add_pack(self, info: PackInfo) -> int:
        ordinal = self._ordinal.get(info.id)
        if ordinal is None:
            ordinal = self._ordinal[info.id] = len(self.packs)
            self.packs.append(info)
        elif self.packs[ordinal] != info:
            self.conflicts.append(f"index objects disagree about pack {info.hex}: length "
                                  f"{self.packs[ordinal].length} or {info.length}")
        return ordinal

    def __len__(self) -> int:
        return len(self.ids) // ID + sum(len(v) for v in self._added.values())

    def add(self, pack: PackInfo, entries: Iterable[Entry]) -> None:
        """A pack this run wrote: its blobs are found from now on."""
        ordinal = self._add_pack(pack)
        for blob_id, offset, stored, plain in entries:
            self._added.setdefault(blob_id, []).append((ordinal, offset, stored, plain))

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._added or self._find(blob_id) >= 0

    def locations(self, blob_id: bytes) -> list[Location]:
        """Where the blob is stored: the copies this run wrote first, then the loaded ones."""
        found = [self._location(*loc) for loc in self._added.get(blob_id, ())]
        i = self._find(blob_id)
        while i >= 0 and i < len(self.ids) // ID and self.ids[i * ID:(i + 1) * ID] == blob_id:
            found.append(self._location(*self.locs[4 * i:4 * i + 4]))
            i += 1
        return found

    def _location(self, ordinal: int, offset: int, stored: int, plain: int) -> Location:
        return Location(self.packs[ordinal], offset, stored, plain)

    def _find(self, blob_id: bytes) -> int:
        """The position of the first copy of `blob_id` in the loaded columns, or -1."""
        if len(blob_id) != ID:
            return -1
        bucket = blob_id[0] << 8 | blob_id[1]
        pos, end = self._starts[bucket] * ID, self._starts[bucket + 1] * ID
        while (pos := self.ids.find(blob_id, pos, end)) >= 0:
            if pos % ID == 0:
                return pos // ID
            pos += 1
        return -1

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Every (blob id, location), loaded ones in id order, then this run's."""
        for i in range(len(self.ids) // ID):
            yield self.ids[i * ID:(i + 1) * ID], self._location(*self.locs[4 * i:4 * i + 4])
        for blob_id, locs in self._added.items():
            for loc in locs:
                yield blob_id, self._location(*loc)


def _merge(objects: list[IndexObject], remaps: list[array]) -> tuple[bytes, array]:
    """One sorted id column and its locations (pack ordinals remapped) from many objects;
    memory: the result plus one entry per object in flight."""
    if len(objects) == 1 and list(remaps[0]) == list(range(len(remaps[0]))):
        return objects[0].ids, objects[0].locs

    def rows(k: int, obj: IndexObject) -> Iterator[tuple[bytes, int, int]]:
        for i in range(obj.blobs):
            yield obj.ids[i * ID:(i + 1) * ID], k, i

    ids, locs = bytearray(), array("I")
    for blob_id, k, i in heapq.merge(*(rows(k, obj) for k, obj in enumerate(objects))):
        ids += blob_id
        src = objects[k].locs
        locs.append(remaps[k][src[4 * i]])
        locs.extend(src[4 * i + 1:4 * i + 4])
    return bytes(ids), locs


def _buckets(ids: bytes) -> array:
    """Where each bucket of ids (their first two bytes) starts: 65,537 positions."""
    n = len(ids) // ID
    prefix = bytearray(2 * n)
    prefix[0::2], prefix[1::2] = ids[0::ID], ids[1::ID]
    keys = array("H", bytes(prefix))
    if sys.byteorder == "little":
        keys.byteswap()
    return array("I", (bisect_left(keys, b) for b in range(_BUCKETS + 1)))

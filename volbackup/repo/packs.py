"""Pack objects: many blobs in one object, with a trailer that lists them.

    pack    = record_1 || ... || record_n || trailer || tail
    record  = zstd frame                                   (plain repository; tree packs)
            | nonce (12) || AES-256-GCM(data key, frame, aad = blob id)   (encrypted data packs)
    trailer = u8 pack kind || u16 slot count || u32 record count
              || slots:   u16 LE length || sealed data key           (encrypted data packs)
              || records: blob id (32) || u8 blob kind || u16 slot || u32 stored length
                          || u32 plain length                         (in pack order)
              || HMAC-SHA256(authentication key, "volbackup pack trailer" || all of the
                 above)                                               (encrypted)
    tail    = u32 LE trailer length || "VBPACK" || u8 version || u8 flags (1: MAC present)

A pack is built in a spill file (or memory) and written in one piece under the sha256 of its bytes
(`packs/<2 hex>/<64 hex>`): never partially visible, never rewritten under its name. The
trailer makes a pack self-describing (a lost index is rebuilt from trailers); record
offsets are the running sum of the stored lengths. A pack is untrusted input: every
field of a trailer is checked against bounds of our own before it sizes anything, and in
an encrypted repository its MAC before anything else (docs/format.md, docs/design.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

from volbackup.errors import IntegrityError
from volbackup.repo.backends import Backend
from volbackup.repo.blobstore import CATALOG, DATA, TREE
from volbackup.repo.config import MAX_CHUNK

PREFIX = "packs/"
_KEY = re.compile(r"packs/([0-9a-f]{2})/(\1[0-9a-f]{62})")
MAGIC = b"VBPACK"
VERSION = 1
FLAG_MAC = 1
DATA_PACK, TREE_PACK = 0, 1
KIND_CODES = {DATA: 0, CATALOG: 1, TREE: 2}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}
NO_SLOT = 0xFFFF
MAX_SLOTS = 4096
MAX_SEALED_KEY = 16 << 10        # an age file of a 32-byte key to a few recipients
MAX_RECORDS = 1 << 16            # a writer closes a pack before more
MAX_STORED = MAX_CHUNK + (MAX_CHUNK >> 7) + (1 << 16)   # a frame that did not compress, sealed
MAC_BYTES = 32

_HEAD = struct.Struct("<BHI")
_RECORD = struct.Struct("<32sBHII")
_SLOT_LEN = struct.Struct("<H")
_TAIL = struct.Struct("<I6sBB")
TAIL_BYTES = _TAIL.size
# A trailer holds at most MAX_RECORDS records and MAX_SLOT_BYTES of sealed keys: what a
# reader accepts, whatever a tail says.
MAX_SLOT_BYTES = 8 << 20
MAX_TRAILER = _HEAD.size + MAX_RECORDS * _RECORD.size + MAX_SLOT_BYTES + MAC_BYTES
TRAILER_LABEL = b"volbackup pack trailer"


def pack_key(pack_id: str) -> str:
    return f"{PREFIX}{pack_id[:2]}/{pack_id}"


def pack_id_of(key: str) -> str | None:
    """The pack id a key under packs/ names, or None for anything else."""
    match = _KEY.fullmatch(key)
    return match[2] if match else None


@dataclass(frozen=True)
class Record:
    """Where one blob lies in a pack, as its trailer says."""

    id: bytes           # 32 bytes
    kind: str           # data, catalog or tree
    slot: int           # its sealed data key in the pack's slots; NO_SLOT: not sealed
    offset: int
    stored: int         # bytes in the pack
    plain: int          # bytes of plaintext


@dataclass(frozen=True)
class Trailer:
    kind: int                   # DATA_PACK or TREE_PACK
    slots: tuple[bytes, ...]    # sealed data keys
    records: tuple[Record, ...]

    @property
    def data_bytes(self) -> int:
        """Bytes of records: where the trailer starts."""
        return sum(r.stored for r in self.records)


class PackBuilder:
    """One pack being filled, its records written to `body` as they come (a spill file, so
    a 16 MiB pack and the one being uploaded do not live in memory, as restic's packer
    does; memory when none is given). `seal(frame, blob_id)` (encrypted data packs) is
    given the pack's data key by the store; records already sealed (repacking, copy) keep
    the sealed key they came with, in a slot of their own."""

    def __init__(self, kind: int, mac: Callable[[bytes, bytes], bytes],
                 body: BinaryIO | None = None):
        self.kind = kind
        self._mac = mac
        self._body: BinaryIO = io.BytesIO() if body is None else body
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._records: list[tuple[bytes, int, int, int, int]] = []
        self._slots: list[bytes] = []
        self._slot_of: dict[bytes, int] = {}
        self._slot_bytes = 0

    def __len__(self) -> int:
        return self._size

    @property
    def records(self) -> int:
        return len(self._records)

    def slot(self, sealed_key: bytes) -> int:
        """The slot of a sealed data key, added if new."""
        if sealed_key not in self._slot_of:
            if not self._room_for_slot(sealed_key):
                raise ValueError("too many or too large sealed keys for one pack")
            self._slot_of[sealed_key] = len(self._slots)
            self._slots.append(sealed_key)
            self._slot_bytes += 2 + len(sealed_key)
        return self._slot_of[sealed_key]

    def has_room(self, sealed_key: bytes | None) -> bool:
        """Can one more record (under `sealed_key`) go in?"""
        return len(self._records) < MAX_RECORDS and (
            sealed_key is None or sealed_key in self._slot_of
            or self._room_for_slot(sealed_key))

    def _room_for_slot(self, sealed_key: bytes) -> bool:
        return len(self._slots) < MAX_SLOTS and 0 < len(sealed_key) <= MAX_SEALED_KEY \
            and self._slot_bytes + 2 + len(sealed_key) <= MAX_SLOT_BYTES

    def add(self, blob_id: bytes, kind: str, stored: bytes, plain: int, slot: int) -> int:
        """Append a record (its stored bytes); its offset."""
        if not (0 < len(stored) <= MAX_STORED and 0 < plain <= MAX_CHUNK):
            raise ValueError("record out of bounds")
        offset = self._size
        self._body.write(stored)
        self._sha256.update(stored)
        self._size += len(stored)
        self._records.append((blob_id, KIND_CODES[kind], slot, len(stored), plain))
        return offset

    def finish(self) -> tuple[str, bytes]:
        """(pack id, the pack's bytes)."""
        pack_id, size, body = self.finish_body()
        return pack_id, body.read(size)

    def finish_body(self) -> tuple[str, int, BinaryIO]:
        """(pack id, its size, the body given, with trailer and tail appended and rewound
        to the start): what an uploader streams from."""
        trailer = bytearray(_HEAD.pack(self.kind, len(self._slots), len(self._records)))
        for sealed in self._slots:
            trailer += _SLOT_LEN.pack(len(sealed)) + sealed
        for record in self._records:
            trailer += _RECORD.pack(*record)
        mac = self._mac(TRAILER_LABEL, bytes(trailer))
        trailer += mac
        flags = FLAG_MAC if mac else 0
        trailer += _TAIL.pack(len(trailer), MAGIC, VERSION, flags)
        self._body.write(trailer)
        self._sha256.update(trailer)
        self._size += len(trailer)
        self._body.flush()
        self._body.seek(0)
        return self._sha256.hexdigest(), self._size, self._body


def parse_tail(tail: bytes, size: int, where: str) -> tuple[int, int]:
    """(trailer length, flags) from a pack's last TAIL_BYTES, checked against its size."""
    if size < TAIL_BYTES + _HEAD.size or len(tail) != TAIL_BYTES:
        raise IntegrityError(f"{where} is too short to be a pack")
    length, magic, version, flags = _TAIL.unpack(tail)
    if magic != MAGIC:
        raise IntegrityError(f"{where} is not a pack (no pack tail)")
    if version != VERSION:
        raise IntegrityError(f"{where} has pack version {version}; this volbackup reads "
                             f"{VERSION} (upgrade volbackup?)")
    if flags & ~FLAG_MAC or not _HEAD.size <= length <= min(MAX_TRAILER, size - TAIL_BYTES):
        raise IntegrityError(f"{where} has an invalid pack tail")
    return length, flags


def parse_trailer(raw: bytes, size: int, flags: int,
                  mac: Callable[[bytes, bytes], bytes], where: str) -> Trailer:
    """A pack's trailer (the `raw` bytes its tail points to), checked: its MAC first in an
    encrypted repository (flags must say so), then every count, length and kind, and that
    the records fill the pack exactly up to the trailer."""
    want_mac = mac(TRAILER_LABEL, b"")  # empty: a plain repository
    if bool(flags & FLAG_MAC) != bool(want_mac):
        raise IntegrityError(f"{where} is {'not ' if want_mac else ''}authenticated, and "
                             f"this repository's packs {'are' if want_mac else 'are not'}")
    if want_mac:
        body, tag = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(raw) < MAC_BYTES or not hmac.compare_digest(mac(TRAILER_LABEL, body), tag):
            raise IntegrityError(f"{where} is not authentic: its trailer's MAC does not "
                                 f"match the repository key (forged, or altered)")
        raw = body
    bad = IntegrityError(f"{where} has an invalid trailer")
    if len(raw) < _HEAD.size:
        raise bad
    kind, slot_count, record_count = _HEAD.unpack_from(raw)
    if kind not in (DATA_PACK, TREE_PACK) or slot_count > MAX_SLOTS \
            or record_count > MAX_RECORDS or record_count == 0:
        raise bad
    at, slots = _HEAD.size, []
    for _ in range(slot_count):
        if at + 2 > len(raw):
            raise bad
        (length,) = _SLOT_LEN.unpack_from(raw, at)
        if not 0 < length <= MAX_SEALED_KEY or at + 2 + length > len(raw):
            raise bad
        slots.append(raw[at + 2:at + 2 + length])
        at += 2 + length
    if len(raw) - at != record_count * _RECORD.size:
        raise bad
    records, offset = [], 0
    for blob_id, code, slot, stored, plain in _RECORD.iter_unpack(raw[at:]):
        name = KIND_NAMES.get(code)
        sealed = slot != NO_SLOT
        if name is None or not 0 < stored <= MAX_STORED or not 0 < plain <= MAX_CHUNK \
                or (sealed and slot >= slot_count) or (kind == TREE_PACK) != (name == TREE) \
                or (kind == TREE_PACK and sealed) or (sealed != bool(want_mac) and name != TREE):
            raise IntegrityError(f"{where} has an invalid record for blob {blob_id.hex()}")
        records.append(Record(blob_id, name, slot, offset, stored, plain))
        offset += stored
    if offset + len(raw) + (MAC_BYTES if want_mac else 0) + TAIL_BYTES != size:
        raise IntegrityError(f"{where}: its records do not fill it up to its trailer "
                             f"(truncated, or bytes added)")
    return Trailer(kind, tuple(slots), tuple(records))


TAIL_READ = 64 << 10   # one ranged read at the end holds a trailer of ~1,500 records


def read_trailer(backend: Backend, pack_id: str, size: int,
                 mac: Callable[[bytes, bytes], bytes]) -> Trailer:
    """The trailer of the pack `pack_id` of `size` bytes (its size as the index or a
    listing says), in one ranged read, two for a long trailer; checked (parse_trailer).
    BlobNotFound when the pack is not there."""
    where = f"pack {pack_id}"
    if size < TAIL_BYTES + _HEAD.size:
        raise IntegrityError(f"{where} is too short to be a pack")
    key = pack_key(pack_id)
    first = min(size, TAIL_READ)
    end = backend.read_range(key, size - first, first)
    length, flags = parse_tail(end[-TAIL_BYTES:], size, where)
    if length + TAIL_BYTES <= first:
        raw = end[first - TAIL_BYTES - length:first - TAIL_BYTES]
    else:
        rest = length + TAIL_BYTES - first
        raw = backend.read_range(key, size - TAIL_BYTES - length, rest) \
            + end[:first - TAIL_BYTES]
    return parse_trailer(raw, size, flags, mac, where)

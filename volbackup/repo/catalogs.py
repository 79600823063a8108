"""Where a snapshot's catalogue (volbackup.stream.catalog) is stored, and reading it back.

Chunked repository: the catalogue's bytes are cut into pieces at line ends and stored as
chunks (encrypted and named as the data's are), listed in `<stamp>.catalog` (chunk-list
lines); the manifest's `catalog` field holds that list's sha256, so the MAC of an
encrypted manifest covers it. Archive layout: `<stamp>.catalog.zst`, one zstd stream,
its sha256 in the manifest. Written before the manifest, like the data.

Reading checks the stored form against the manifest (list, then each piece by its name,
or the blob's sha256) and every line (volbackup.stream.catalog.parse).
"""

from __future__ import annotations

import hashlib
import io
from typing import Iterator

import zstandard

from volbackup.errors import BlobMissing, IntegrityError, RepositoryError
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.blobstore import CATALOG, BlobStore
from volbackup.repo.chunked import fetch_ahead, listed
from volbackup.stream import catalog
from volbackup.stream.catalog import CatalogEntry
from volbackup.stream.archive import OUTPUT_CHUNK
from volbackup.stream.chunks import READ_CHUNK, HashingReader

LIST_SUFFIX = ".catalog"            # chunked: the list of the catalogue's pieces
ARCHIVE_SUFFIX = ".catalog.zst"     # archive layout: the catalogue, compressed
PIECE = 1 << 20                     # a piece ends at the first line end past this
_FIELD = {"version": int, "entries": int, "bytes": int, "sha256": str, "plain_sha256": str}


class ChunkedCatalogWriter:
    """Collects catalogue lines, storing each full piece as a blob as it fills."""

    def __init__(self, store: BlobStore, level: int):
        self._store, self._level = store, level
        self._buf = bytearray()
        self._list = io.BytesIO()
        self._plain = hashlib.sha256()
        self.entries = self.bytes = self.chunks = self.stored_bytes = 0

    def add(self, line: bytes) -> None:
        self._buf += line
        self.entries += 1
        if len(self._buf) >= PIECE:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        data, self._buf = bytes(self._buf), bytearray()
        saved = self._store.save(data, self._level, kind=CATALOG)
        self.stored_bytes += saved.stored
        self._plain.update(data)
        self.bytes += len(data)
        self.chunks += 1
        self._list.write(f"{saved.id} {len(data)}\n".encode())

    def finish(self, backend: Backend, key: str) -> dict:
        """Store the last piece and the list; the manifest's `catalog` field."""
        self._flush()
        self._store.flush()     # every piece (and the data's chunks) durable before a list
        listing = self._list.getvalue()
        backend.write_bytes(key, listing)
        return {"version": catalog.CATALOG_VERSION, "entries": self.entries,
                "bytes": self.bytes, "chunks": self.chunks,
                "sha256": hashlib.sha256(listing).hexdigest(),
                "plain_sha256": self._plain.hexdigest()}


class ArchiveCatalogWriter:
    """Compresses catalogue lines into an open blob writer."""

    def __init__(self, out, level: int):
        self._out = out
        self._sha256 = hashlib.sha256()
        self._plain = hashlib.sha256()
        self._z = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        self.entries = self.bytes = self.stored_bytes = 0

    def add(self, line: bytes) -> None:
        self.entries += 1
        self.bytes += len(line)
        self._plain.update(line)
        self._write(self._z.compress(line))

    def _write(self, data: bytes) -> None:
        if data:
            self._sha256.update(data)
            self.stored_bytes += len(data)
            self._out.write(data)

    def finish(self) -> dict:
        self._write(self._z.flush())
        return {"version": catalog.CATALOG_VERSION, "entries": self.entries,
                "bytes": self.bytes, "sha256": self._sha256.hexdigest(),
                "plain_sha256": self._plain.hexdigest()}


def check_field(value: object) -> bool:
    """Whether a manifest's `catalog` field has the form this writer gives it."""
    if not isinstance(value, dict):
        return False
    for name, kind in _FIELD.items():
        item = value.get(name)
        if isinstance(item, bool) or not isinstance(item, kind) or (
                isinstance(item, int) and not 0 <= item <= catalog.MAX_INT):
            return False
    if not all(catalog.HEX64.fullmatch(value[name]) for name in ("sha256", "plain_sha256")):
        return False
    chunks = value.get("chunks")
    return chunks is None or (isinstance(chunks, int) and not isinstance(chunks, bool)
                              and chunks <= value["bytes"])  # no piece is empty


def in_pieces(field: dict) -> bool:
    """Is this catalogue (a manifest's `catalog` field) stored in pieces in the blob store,
    named in a list (a chunked snapshot's), rather than as one blob? Its own form says:
    it counts its pieces."""
    return "chunks" in field


AHEAD = 4  # catalogue pieces (1 MiB each) fetched ahead of the reader


def read_pieces(backend: Backend, store: BlobStore, key: str, field: dict,
                what: str) -> Iterator[bytes]:
    """The catalogue's bytes, checked against the manifest's `catalog` field."""
    plain = hashlib.sha256()
    if field.get("version") != catalog.CATALOG_VERSION:
        raise RepositoryError(f"{what} has catalogue version {field.get('version')!r}; this "
                              f"volbackup reads {catalog.CATALOG_VERSION} (upgrade volbackup)")
    try:
        if in_pieces(field):
            yield from _chunked_pieces(backend, store, key, field, plain)
        else:
            with backend.open_read(key) as reader:
                yield from _archive_pieces(reader, field, plain)
    except BlobNotFound:
        raise BlobMissing(f"catalogue {key} of {what} is missing") from None
    if plain.hexdigest() != field["plain_sha256"]:
        raise IntegrityError(f"catalogue {key} does not match the manifest")


def _chunked_pieces(backend: Backend, store: BlobStore, key: str, field: dict,
                    plain) -> Iterator[bytes]:
    """The pieces, the list read as a stream (checked through once before any piece is
    fetched) and the pieces fetched a few ahead: memory stays flat whatever the counts."""
    expected = (field["sha256"], field["chunks"], field["bytes"], f"catalogue list {key}")
    for _ in listed(lambda: backend.open_read(key), *expected):
        pass
    for data, _ in fetch_ahead(store, listed(lambda: backend.open_read(key), *expected),
                               AHEAD):
        plain.update(data)
        yield data


def _archive_pieces(reader, field: dict, plain) -> Iterator[bytes]:
    """The plain catalogue of a `.catalog.zst`, decompressed OUTPUT_CHUNK at a time and
    never past what the manifest says it holds: a small blob that expands to gigabytes
    (a zstd bomb) is refused once it passes that, with memory flat."""
    source = HashingReader(reader)
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(
                source, read_size=READ_CHUNK, read_across_frames=False,
                closefd=False) as decompressed:
            while data := decompressed.read(min(OUTPUT_CHUNK, field["bytes"] - total + 1)):
                total += len(data)
                if total > field["bytes"]:
                    raise IntegrityError("catalogue is longer than the manifest says")
                plain.update(data)
                yield data
    except zstandard.ZstdError as e:
        raise IntegrityError(f"catalogue is corrupt: zstd says {e}") from None
    source.drain()
    if source.sha256.hexdigest() != field["sha256"] or total != field["bytes"]:
        raise IntegrityError("catalogue does not match the manifest")


def entries(pieces: Iterator[bytes], stream_bytes: int) -> Iterator[CatalogEntry]:
    return catalog.parse(catalog.split_lines(pieces), stream_bytes)

"""The chunk objects of a chunked repository: `chunks/<2 hex>/<id hex>`, one zstd frame each.

A chunk is named by the sha256 of its plaintext (an HMAC in an encrypted repository), so
it is written once however many snapshots, volumes or hosts hold it, and every read checks
the bytes against the name. Chunks are only ever added, except by prune's sweep under the
exclusive lock. This module reads and writes single objects; whether one needs writing is
decided above it, by the blob store (volbackup.repo.blobstore.LooseChunkStore).
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

import zstandard

from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.repo.backends import Backend, BadEntry, BlobNotFound
from volbackup.repo.config import MAX_CHUNK
from volbackup.repo.crypto import PlainChunks, SealedChunks

PREFIX = "chunks/"
LISTERS = 8
_KEY = re.compile(r"chunks/([0-9a-f]{2})/(\1[0-9a-f]{62})")
HEX64 = re.compile(r"[0-9a-f]{64}")
# A chunk that does not compress is stored as a raw zstd block: a little larger than itself;
# age adds 16 bytes per 64 KiB and a header per recipient (up to a few KiB for RSA keys).
MAX_STORED = MAX_CHUNK + (MAX_CHUNK >> 7) + (1 << 16) + (MAX_CHUNK >> 12) + (1 << 20)


def chunk_key(chunk_id: str) -> str:
    return f"{PREFIX}{chunk_id[:2]}/{chunk_id}"


@dataclass(frozen=True)
class StoredChunk:
    id: str
    size: int                   # stored (compressed) bytes
    modified: datetime | None   # UTC, when the backend says


class ChunkObjects:
    """One object per chunk, sealed and named by `cipher`, which is fixed here: a store
    never changes how it names or seals what it holds."""

    def __init__(self, backend: Backend, cipher: PlainChunks | SealedChunks | None = None):
        self.backend = backend
        self.cipher = cipher or PlainChunks()

    def chunk_id(self, plaintext: bytes) -> str:
        """The name of a chunk: sha256, or an HMAC in an encrypted repository."""
        return self.cipher.chunk_id(plaintext)

    def listing(self) -> Iterator[StoredChunk | str]:
        """Every chunk stored, and an error message for each entry that is no chunk
        (a stray file, a symlink, an unreadable directory) under chunks/."""
        for info in self.backend.list(PREFIX):
            match = _KEY.fullmatch(info.key)
            if info.error or not match:
                yield info.error or f"{info.key} in repository {self.backend.describe()} " \
                                    f"is not a chunk (left alone)"
                continue
            yield StoredChunk(match[2], info.size, info.modified)

    def ids(self) -> set[bytes]:
        """The ids (binary) of every chunk stored: what a backup need not write again.
        Listed one fan-out directory per request stream, LISTERS at once: S3 lists 1,000
        keys a request, so a million chunks take 1,000 requests, not 1,000 in a row."""
        def listed(fanout: int) -> list[bytes]:
            return [bytes.fromhex(match[2]) for info in self.backend.list(f"{PREFIX}{fanout:02x}/")
                    if not info.error and (match := _KEY.fullmatch(info.key))]

        found: set[bytes] = set()
        with ThreadPoolExecutor(LISTERS, thread_name_prefix="volbackup-list") as pool:
            for part in pool.map(listed, range(256)):
                found.update(part)
        return found

    def put(self, chunk_id: str, data: bytes, compressor: zstandard.ZstdCompressor) -> int:
        """Store one chunk; returns its stored size."""
        stored = self.cipher.seal(compressor.compress(data))
        self.backend.write_bytes(chunk_key(chunk_id), stored)
        return len(stored)

    def get(self, chunk_id: str, length: int) -> tuple[bytes, int]:
        """A chunk's plaintext and stored size, checked: (decrypted, if the repository is
        encrypted) one complete zstd frame, `length` bytes, and the digest its name says.
        Raises IntegrityError naming the chunk otherwise (KeyProblem: not our identity)."""
        stored, plain = self._checked(chunk_id, length)
        return plain, len(stored)

    def get_stored(self, chunk_id: str, length: int) -> bytes:
        """A chunk's stored bytes, checked as `get` checks them: what `copy` hands to a
        repository whose chunks are stored the same way (volbackup.repo.chunkcopy)."""
        return self._checked(chunk_id, length)[0]

    def holds(self, chunk_id: str, length: int) -> bool:
        """Is the stored chunk under this name what the name says (read back and checked
        as `get` checks it)? False for one missing, damaged or planted. What `copy`
        checks of a chunk its target has already, before a snapshot relies on it."""
        try:
            self._checked(chunk_id, length)
        except IntegrityError:
            return False
        return True

    def put_stored(self, chunk_id: str, stored: bytes) -> int:
        """Store a chunk's stored bytes as they are (checked by `get_stored`)."""
        self.backend.write_bytes(chunk_key(chunk_id), stored)
        return len(stored)

    def _checked(self, chunk_id: str, length: int) -> tuple[bytes, bytes]:
        key = chunk_key(chunk_id)
        try:
            stored = self.backend.read_bytes(key, limit=MAX_STORED)
        except BlobNotFound:
            raise ChunkMissing(f"chunk {chunk_id} is missing") from None
        except BadEntry as e:
            raise IntegrityError(f"chunk {chunk_id} is not a chunk: {e}") from None
        frame = self.cipher.open(stored, chunk_id)
        return stored, open_frame(frame, chunk_id, length, self.cipher.chunk_id)

    def delete(self, chunk_id: str) -> None:
        self.backend.delete(chunk_key(chunk_id))


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's zstd decompressor (one is not shared by threads). Made once, not per
    blob: making one costs a small blob's decompression (a context, and a CPUID that a
    virtual machine traps); `decompress` starts each frame afresh."""
    made = getattr(_local, "decompressor", None)
    if made is None:
        made = _local.decompressor = zstandard.ZstdDecompressor()
    return made


def open_frame(frame: bytes | memoryview, chunk_id: str, length: int,
               name_of: Callable[[bytes], str]) -> bytes:
    """A stored blob's plaintext from its zstd frame, checked: one complete frame whose
    header says `length` bytes, and whose content `name_of` names `chunk_id`."""
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != length:
            raise IntegrityError(f"chunk {chunk_id} holds {params.content_size} bytes, "
                                 f"the chunk list says {length}")
        # The header's size is checked above, so this allocates at most MAX_CHUNK; a
        # frame that is cut short, or followed by anything, is refused.
        plain = _decompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"chunk {chunk_id} is corrupt: zstd says {e}") from None
    if len(plain) != length or name_of(plain) != chunk_id:
        raise IntegrityError(f"chunk {chunk_id} does not match its name (corrupt or "
                             f"replaced)")
    return plain

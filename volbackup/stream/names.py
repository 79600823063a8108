"""An exact set of names in bounded memory, for checks over a whole tar stream (a name seen
twice, a member under an earlier symlink) whatever the number of members.

Names are kept as 16-byte keyed BLAKE2b digests (the key is random per set, so nobody can
prepare names that collide): up to `memory` of them in a Python set (about 90 bytes
each), beyond that in a SQLite table in a private temporary file, which SQLite deletes
when the set is closed (or the process ends), read through a page cache of at most
CACHE_KIB. A Bloom filter of BLOOM_BITS (1 MiB) over the spilled digests spares most
lookups on disk (with a million names on disk, about 1 in 40 new names is looked up).
Exact up to a digest collision (2^-128 per pair of names).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3

MEMORY_NAMES = 32_768   # digests held in memory before they go to disk (about 3 MiB)
CACHE_KIB = 2048        # SQLite's page cache for the spilled ones
BLOOM_BITS = 23         # log2 of the Bloom filter's bits (1 MiB)
_BLOOM_MASK = (1 << BLOOM_BITS) - 1
_BLOOM_PROBES = 4       # bits per digest: 4 x 23 of its 128 bits


class NameSet:
    """Add names, ask whether one was added; memory bounded by `memory` digests."""

    def __init__(self, memory: int | None = None):
        self._key = os.urandom(16)
        self._memory: set[bytes] = set()
        self._limit = memory or MEMORY_NAMES
        self._db: sqlite3.Connection | None = None
        self._bloom: bytearray | None = None
        self.spilled = 0  # digests moved to disk

    def __bool__(self) -> bool:
        return bool(self._memory) or self.spilled > 0

    def __len__(self) -> int:
        return len(self._memory) + self.spilled

    def _digest(self, name: str) -> bytes:
        return hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16,
                               key=self._key).digest()

    def add(self, name: str) -> bool:
        """Add `name`; False if it was there already."""
        digest = self._digest(name)
        if digest in self._memory or (self.spilled and self._on_disk(digest)):
            return False
        self._memory.add(digest)
        if len(self._memory) >= self._limit:
            self._spill()
        return True

    def __contains__(self, name: str) -> bool:
        digest = self._digest(name)
        return digest in self._memory or (self.spilled > 0 and self._on_disk(digest))

    def _on_disk(self, digest: bytes) -> bool:
        h = int.from_bytes(digest, "little")
        bloom = self._bloom
        for _ in range(_BLOOM_PROBES):
            if not bloom[(h & _BLOOM_MASK) >> 3] & (1 << (h & 7)):
                return False
            h >>= BLOOM_BITS
        return self._db.execute("SELECT 1 FROM names WHERE d = ?", (digest,)).fetchone() \
            is not None

    def _spill(self) -> None:
        if self._db is None:
            # "": a private database in a temporary file, deleted when it is closed
            self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE names (d BLOB PRIMARY KEY) WITHOUT ROWID")
            self._bloom = bytearray(1 << (BLOOM_BITS - 3))
        bloom = self._bloom
        for digest in self._memory:
            h = int.from_bytes(digest, "little")
            for _ in range(_BLOOM_PROBES):
                bloom[(h & _BLOOM_MASK) >> 3] |= 1 << (h & 7)
                h >>= BLOOM_BITS
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO names VALUES (?)", ((d,) for d in sorted(self._memory)))
        self._db.execute("COMMIT")
        self.spilled += len(self._memory)
        self._memory.clear()

    def close(self) -> None:
        """Remove the temporary file now (else when the object goes)."""
        if self._db is not None:
            self._db.close()
            self._db = self._bloom = None
        self._memory.clear()
        self.spilled = 0

    def __del__(self) -> None:
        self.close()

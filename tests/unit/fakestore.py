"""A small BlobStore of our own for unit tests: blobs kept as they are (no compression, no
cipher), in a dict or as files in a directory (so that a test can measure the memory of
what uses the store without counting what the store holds). `load` checks a blob against
its name and length as the real stores do."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Callable

from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.repo.blobstore import DATA, KINDS, BlobStore, Saved


class FakeStore(BlobStore):
    encrypted = False

    def __init__(self, directory: Path | None = None):
        self._directory = directory
        self.blobs: dict[str, bytes] = {}
        self.kinds: dict[str, str] = {}
        self.saved: list[str] = []      # ids in the order they were saved
        self.loads = Counter()

    def blob_id(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def save(self, data: bytes, level: int, verify_existing: bool = False,
             kind: str = DATA) -> Saved:
        assert kind in KINDS
        blob_id = self.blob_id(data)
        self.saved.append(blob_id)
        if blob_id in self.kinds:
            return Saved(blob_id, len(data))
        self.put(blob_id, data)
        self.kinds[blob_id] = kind
        return Saved(blob_id, len(data), len(data))

    def put(self, blob_id: str, data: bytes) -> None:
        """Store `data` under any name (a test planting what no writer would)."""
        if self._directory is None:
            self.blobs[blob_id] = data
        else:
            (self._directory / blob_id).write_bytes(data)
        self.kinds.setdefault(blob_id, DATA)

    def load(self, blob_id: str, length: int) -> tuple[bytes, int]:
        self.loads[blob_id] += 1
        try:
            data = self.blobs[blob_id] if self._directory is None \
                else (self._directory / blob_id).read_bytes()
        except (KeyError, FileNotFoundError):
            raise ChunkMissing(f"blob {blob_id} is missing") from None
        if len(data) != length:
            raise IntegrityError(f"blob {blob_id} holds {len(data)} bytes, not {length}")
        if self.blob_id(data) != blob_id:
            raise IntegrityError(f"blob {blob_id} does not match its name")
        return data, len(data)

    def has(self, blob_id: str, length: int) -> bool:
        try:
            self.load(blob_id, length)
        except IntegrityError:
            return False
        return True

    def load_stored(self, blob_id: str, length: int) -> bytes:
        return self.load(blob_id, length)[0]

    def save_stored(self, blob_id: str, length: int, fetch: Callable[[], bytes]) -> Saved:
        raise NotImplementedError

    def stores_like(self, other: BlobStore) -> bool:
        return False

    def forget(self) -> None:
        pass

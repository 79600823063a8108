"""A wrapper that counts what is read from a backend: requests, objects read whole, bytes.

For measurements and tests of partial reads (docs/performance.md, "Partial reads"): how
many chunk objects a `dump` or a partial restore fetches is the point of a catalogue, and
it does not depend on how fast the machine is. With packs a blob is a ranged read of a
pack, so requests (what S3 bills and waits for) and objects read whole are counted apart.
Every other verb passes through.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import BinaryIO, Iterator


class CountingBackend:
    """Wraps `inner`; counts reads by the key's first component (`chunks`, `snapshots`,
    `config` ...): `requests` every read (open_read, read_bytes, read_range), `objects` the
    objects read whole (open_read, read_bytes), `bytes` the bytes of all of them.
    `reset()` starts again."""

    def __init__(self, inner):
        self.inner = inner
        self.requests: Counter[str] = Counter()
        self.objects: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.requests.clear()
        self.objects.clear()
        self.bytes.clear()

    def read_bytes(self, key: str, *args, **kwargs) -> bytes:
        data = self.inner.read_bytes(key, *args, **kwargs)
        self.requests[_kind(key)] += 1
        self.objects[_kind(key)] += 1
        self.bytes[_kind(key)] += len(data)
        return data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        data = self.inner.read_range(key, offset, length)
        self.requests[_kind(key)] += 1
        self.bytes[_kind(key)] += len(data)
        return data

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with self.inner.open_read(key) as reader:
            self.requests[_kind(key)] += 1
            self.objects[_kind(key)] += 1
            yield _CountingReader(reader, self.bytes, _kind(key))


class _CountingReader:
    def __init__(self, reader, counts: Counter, kind: str):
        self._reader, self._counts, self._kind = reader, counts, kind

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def read(self, *args) -> bytes:
        data = self._reader.read(*args)
        self._counts[self._kind] += len(data)
        return data

    def read1(self, *args) -> bytes:
        data = self._reader.read1(*args)
        self._counts[self._kind] += len(data)
        return data

    def readinto(self, buffer) -> int:
        n = self._reader.readinto(buffer)
        self._counts[self._kind] += n or 0
        return n


def _kind(key: str) -> str:
    return key.split("/", 1)[0]

"""Reading a file-like object as bounded chunks: how every stream here stays flat in memory."""

from __future__ import annotations

from typing import BinaryIO, Iterator

READ_CHUNK = 1 << 20


def read_chunks(stream: BinaryIO, size: int = READ_CHUNK) -> Iterator[bytes]:
    """Iterate over a readable binary stream in chunks of up to `size` bytes."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk

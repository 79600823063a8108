"""Reading a file-like object as bounded chunks: how every stream here stays flat in memory."""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterable, Iterator

READ_CHUNK = 1 << 20


def read_chunks(stream: BinaryIO, size: int = READ_CHUNK) -> Iterator[bytes]:
    """Iterate over a readable binary stream in chunks of up to `size` bytes."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


class HashingReader:
    """A reader that hashes (sha256) every byte read through it; `drain()` reads the rest,
    so that bytes a decompressor left after its frame are hashed too."""

    def __init__(self, reader: BinaryIO):
        self._reader = reader
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


def split_lines(pieces: Iterable[bytes], max_line: int) -> Iterator[bytes]:
    """Lines (each with its newline) of a stream given as byte pieces; a line longer than
    `max_line`, or a last line without a newline, is yielded as it is, for the caller to
    refuse (chunk lists and catalogues are untrusted input: memory stays bounded)."""
    rest = b""
    for piece in pieces:
        rest += piece
        if b"\n" not in piece and len(rest) <= max_line:
            continue
        lines = rest.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
        if len(rest) > max_line:
            yield rest
            return
    if rest:
        yield rest

"""Content-defined chunking of a tar stream (FastCDC 2020, pyfastcdc's compiled chunker).

The same bytes cut with the same parameters give the same chunks wherever they sit in
the stream: an edit moves only the cut points near it, so the rest deduplicates.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from pyfastcdc.cy import FastCDC  # the Cython build; never the pure-Python fallback


class _IterReader:
    """A readinto() reader over an iterator of byte pieces (what pyfastcdc reads from)."""

    def __init__(self, pieces: Iterable[bytes]):
        self._pieces = iter(pieces)
        self._view = memoryview(b"")

    def readinto(self, buffer: memoryview) -> int:
        while not self._view:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._view = memoryview(piece)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def cut(pieces: Iterable[bytes], avg_size: int, min_size: int, max_size: int,
        normalized_chunking: int = 1, seed: int = 0) -> Iterator[bytes]:
    """The stream as content-defined chunks (each a new bytes object, at most max_size)."""
    chunker = FastCDC(avg_size, min_size=min_size, max_size=max_size,
                      normalized_chunking=normalized_chunking, seed=seed)
    for chunk in chunker.cut_stream(_IterReader(pieces)):
        yield bytes(chunk.data)

"""The stream pipeline between a volume's tar stream and a stored archive.

pack:   tar chunks -> tar structure check -> zstd (multi-threaded, frame checksum)
        -> sha256 and byte count -> the repository's writer.
unpack: stored chunks -> sha256 and byte count -> zstd (frame checksum, truncation)
        -> tar structure check -> tar chunks for the engine.

Both are plain iterators and writers over bounded chunks: memory does not depend on
the size of the volume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import zstandard

from volbackup.errors import IntegrityError
from volbackup.stream.chunks import READ_CHUNK
from volbackup.stream.reuse import HostStat, HostsInOrder, Reused
from volbackup.stream.tarstream import BLOCK, Entry, TarWalker
from volbackup.stream.zstdframe import FrameWalker

OUTPUT_CHUNK = 1 << 20
JOB_SIZE = 4 << 20
END_MARKER = 2 * BLOCK  # two zero blocks end a tar archive
MAX_TAIL = 1 << 20  # tar bytes allowed after the end marker (padding); more is corruption
Progress = Callable[[int], None]


def no_progress(_n: int) -> None:
    pass


class HashingWriter:
    """A write-only file object that hashes and counts what it passes on."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        self._inner.write(data)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()


def compression_params(level: int) -> zstandard.ZstdCompressionParameters:
    """One zstd frame with a content checksum, compressed on every core.

    The multi-threaded compressor's buffers, and so peak RSS, grow with the job size: at
    level 3 on 2 cores about 50 / 64 / 77 / 129 MiB for 2 / 3 / 4 / 8 MiB jobs (8 MiB is
    zstd's default). 4 MiB jobs are as fast as 8 MiB ones, and 2-3 MiB jobs 5-15 % slower
    (docs/performance.md).
    """
    return zstandard.ZstdCompressionParameters.from_level(
        level, threads=-1, job_size=JOB_SIZE, write_checksum=True)


@dataclass
class Packed:
    bytes: int          # uncompressed tar bytes
    stored_bytes: int   # compressed bytes written
    sha256: str         # of the stored (compressed) bytes
    entries: int        # tar members, the root included
    root: Entry | None  # the first member (the volume root)


def pack(tar_chunks: Iterable[bytes], out: BinaryIO, level: int = 3,
         progress: Progress = no_progress,
         on_walker: Callable[[TarWalker], None] = lambda walker: None) -> Packed:
    """Compress a tar stream into `out`; raise IntegrityError if the tar is incomplete.
    `on_walker` is shown the walker that checks the stream (the catalogue listens)."""
    # Names are not checked for repeats here: what is packed is a volume's stream, or a
    # stream whose names were checked (an unpacker's, import's), each name once.
    walker = TarWalker(unique=False)
    on_walker(walker)
    sink = HashingWriter(out)
    kept = 0
    compressor = zstandard.ZstdCompressor(compression_params=compression_params(level))
    with compressor.stream_writer(sink, closefd=False) as zout:
        for chunk in kept_tar(tar_chunks, walker):
            zout.write(chunk)
            kept += len(chunk)
            progress(len(chunk))
    return Packed(kept, sink.bytes, sink.sha256.hexdigest(), walker.entries, walker.first)


def kept_tar(tar_chunks: Iterable[bytes], walker: TarWalker) -> Iterator[bytes]:
    """The tar stream checked by `walker`, ending right after its end-of-archive marker;
    raises IntegrityError (at the end) if the tar is incomplete.

    The padding a tar writer adds to fill its last record is dropped. GNU tar with 128 KiB
    records (volbackup.docker.direct) pads by up to 127 KiB, and a stock `zstd -dc | tar -x`
    would end with zstd killed by SIGPIPE, tar having stopped reading at the marker.
    """
    for chunk in tar_chunks:
        if isinstance(chunk, Reused):       # the files cache: no bytes pass
            walker.pass_members(chunk.members)
            yield chunk
            continue
        if isinstance(chunk, HostStat):
            walker.note_host(chunk)
            continue
        if isinstance(chunk, HostsInOrder):
            walker.host_for = chunk.host_for
            continue
        offset = walker.bytes
        walker.feed(chunk)
        if walker.ended:
            chunk = chunk[:max(0, walker.end_marker_at + END_MARKER - offset)]
        if chunk:
            yield chunk
    walker.finish()


class _CheckedSource:
    """A file-like reader over stored chunks that hashes, counts and frame-checks them."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = b""
        self.bytes = 0
        self.sha256 = hashlib.sha256()
        self.frame = FrameWalker()

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
            self.sha256.update(self._pending)
            self.bytes += len(self._pending)
            self.frame.feed(self._pending)
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def drain(self) -> None:
        """Consume what the decompressor left, so trailing bytes are hashed and seen."""
        while self.read(READ_CHUNK):
            pass


class Unpacker:
    """Decompresses and checks a stored archive while it streams.

    `chunks()` yields the tar bytes but holds back the last decompressed piece, and
    everything from the tar's end-of-archive marker on, until the sha256, the zstd frame
    and the tar structure have all checked out: a consumer never sees a complete-looking
    stream from a bad archive.
    """

    def __init__(self, stored: Iterable[bytes], expected_sha256: str | None = None,
                 expected_stored_bytes: int | None = None, progress: Progress = no_progress,
                 expected_bytes: int | None = None):
        """`expected_bytes`: the tar length the manifest says; decompressing stops with
        IntegrityError a little past it (room for old archives' record padding), so a
        small archive that expands to terabytes is refused, not read to its end."""
        self._stored = stored
        self._most = None if expected_bytes is None else expected_bytes + MAX_TAIL
        self._expected_sha256 = expected_sha256
        self._expected_stored_bytes = expected_stored_bytes
        self._progress = progress
        self.walker = TarWalker()
        self.stored_bytes = 0
        self.sha256 = ""

    @property
    def root(self) -> Entry | None:
        return self.walker.first

    def chunks(self) -> Iterator[bytes]:
        source = _CheckedSource(self._stored)

        def decompressed() -> Iterator[bytes]:
            reader = zstandard.ZstdDecompressor().stream_reader(
                source, read_size=READ_CHUNK, read_across_frames=False)
            total = 0
            try:
                while out := reader.read(OUTPUT_CHUNK):  # bounded: a tiny input may expand
                    total += len(out)
                    if self._most is not None and total > self._most:
                        raise IntegrityError(f"archive holds more than the "
                                             f"{self._most - MAX_TAIL} tar bytes the "
                                             f"manifest says")
                    yield out
                source.drain()
            except zstandard.ZstdError as e:
                raise IntegrityError(f"archive is corrupt: zstd says {e}") from None
            self.stored_bytes, self.sha256 = source.bytes, source.sha256.hexdigest()

        yield from release_checked(decompressed(), self.walker,
                                   lambda: self._check_complete(source.frame), self._progress)

    def _check_complete(self, frame: FrameWalker) -> None:
        if self._expected_stored_bytes is not None and self.stored_bytes != self._expected_stored_bytes:
            raise IntegrityError(
                f"archive is {self.stored_bytes} bytes, the manifest says "
                f"{self._expected_stored_bytes}: truncated or replaced")
        if self._expected_sha256 is not None and self.sha256 != self._expected_sha256:
            raise IntegrityError(
                f"archive sha256 is {self.sha256}, the manifest says {self._expected_sha256}")
        frame.finish()
        self.walker.finish()

    def drain(self) -> None:
        """Read and check the whole archive, discarding the tar bytes."""
        for _ in self.chunks():
            pass


def release_checked(tar_pieces: Iterable[bytes], walker: TarWalker, check: Callable[[], None],
                    progress: Progress = no_progress) -> Iterator[bytes]:
    """Pass a tar stream on as `walker` checks it, holding back the last piece and
    everything from the end-of-archive marker on until the stream ended and `check()`
    (the caller's checks of the whole: digests, sizes) returned without raising."""
    held: list[bytes] = []  # checked, not yet released
    released = 0
    for out in tar_pieces:
        walker.feed(out)
        held.append(out)
        safe = walker.bytes - len(out)
        if walker.end_marker_at is not None:
            safe = min(safe, walker.end_marker_at)
            if walker.bytes - walker.end_marker_at > MAX_TAIL:
                raise IntegrityError("archive has data after the end of its tar stream")
        for piece in _release(held, safe - released):
            released += len(piece)
            yield piece
            progress(len(piece))
    check()
    for piece in held:
        yield piece
        progress(len(piece))


def _release(held: list[bytes], count: int) -> Iterator[bytes]:
    """Take `count` bytes off the front of `held` (a list of pieces), piece by piece."""
    while count > 0 and held:
        piece = held[0]
        if len(piece) <= count:
            held.pop(0)
        else:
            piece, held[0] = piece[:count], piece[count:]
        count -= len(piece)
        yield piece


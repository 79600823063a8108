"""The zstd frame walker accepts every complete frame and nothing else."""

from __future__ import annotations

import os

import pytest
import zstandard

from volbackup.errors import IntegrityError
from volbackup.stream.zstdframe import FrameWalker

SAMPLES = {
    "empty": b"",
    "text": b"a line of text\n" * 50_000,
    "random": os.urandom(300_000),                    # raw blocks
    "zeros": bytes(3_000_000),                        # RLE blocks
    "mixed": os.urandom(100_000) + bytes(500_000) + b"xyz" * 100_000,
}


def frames():
    for name, data in SAMPLES.items():
        for level, threads, checksum, size in [(1, 0, True, False), (3, -1, True, False),
                                               (19, 0, False, True), (3, 2, True, True)]:
            cctx = zstandard.ZstdCompressor(level=level, threads=threads,
                                            write_checksum=checksum,
                                            write_content_size=size)
            if threads:
                sink = _Sink()
                with cctx.stream_writer(sink, closefd=False) as w:
                    w.write(data)
                yield f"{name}-L{level}-T{threads}", sink.data
            else:
                yield f"{name}-L{level}-C{checksum}-S{size}", cctx.compress(data)


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, b):
        self.data += bytes(b)
        return len(b)


ALL = list(frames())


def walk(data: bytes, step: int) -> FrameWalker:
    walker = FrameWalker()
    for i in range(0, len(data), step):
        walker.feed(data[i:i + step])
    return walker


@pytest.mark.parametrize("name,frame", ALL, ids=[n for n, _ in ALL])
@pytest.mark.parametrize("step", [1, 3, 4096, 1 << 20])
def test_complete_frames_are_accepted(name, frame, step):
    if step == 1 and len(frame) > 20_000:
        step = 997  # byte at a time only for small frames (slow); an odd size for the rest
    walk(frame, step).finish()


@pytest.mark.parametrize("name,frame", ALL, ids=[n for n, _ in ALL])
def test_every_truncation_is_caught(name, frame):
    cuts = sorted({1, 4, 5, len(frame) // 2, len(frame) - 5, len(frame) - 4, len(frame) - 1}
                  | set(range(0, min(len(frame), 40))))
    for cut in cuts:
        if cut >= len(frame):
            continue
        with pytest.raises(IntegrityError, match="truncated"):
            walk(frame[:cut], 4096).finish()


@pytest.mark.parametrize("junk", [b"\x00", b"junk", b"\x28\xb5\x2f\xfd"])
def test_trailing_bytes_are_refused(junk):
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"data" * 1000)
    with pytest.raises(IntegrityError, match="after the end"):
        walk(frame + junk, 4096)


def test_bad_magic_and_reserved_bits():
    with pytest.raises(IntegrityError, match="magic"):
        walk(b"\x1f\x8b\x08\x00" + bytes(20), 4096)
    frame = bytearray(zstandard.ZstdCompressor().compress(b"x" * 100))
    frame[4] |= 0x08  # reserved bit of the frame header descriptor
    with pytest.raises(IntegrityError, match="header"):
        walk(bytes(frame), 4096)

"""pack() and Unpacker: round trips, the stored format, and every way a stored archive can be bad."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess

import pytest
import zstandard

from tests.unit.tars import (
    chunked,
    corpus_members,
    crafted,
    end_of_members,
    make_tar,
    members_of,
)
from volbackup.errors import IntegrityError
from volbackup.stream.archive import Unpacker, pack
from volbackup.stream.chunks import READ_CHUNK, read_chunks

TAR = make_tar(corpus_members())
SMALL_TAR = make_tar(corpus_members(big=False))


def as_stored(tar: bytes) -> bytes:
    """What pack keeps of a tar stream: up to the end-of-archive marker, no record padding."""
    return tar[:end_of_members(tar) + 1024]


STORED_TAR = as_stored(TAR)


def do_pack(tar: bytes, how: int | str = 65536, **kwargs):
    out = io.BytesIO()
    packed = pack(iter(chunked(tar, how)), out, **kwargs)
    return packed, out.getvalue()


@pytest.fixture(scope="module")
def stored():
    """The corpus tar packed once, and its sha256, for the damage tests."""
    packed, data = do_pack(TAR)
    return data, packed.sha256


def consume(unpacker: Unpacker) -> tuple[bytes, Exception | None]:
    """Everything the consumer received, and the error that ended the stream (if any)."""
    got = bytearray()
    try:
        for piece in unpacker.chunks():
            got += piece
    except IntegrityError as e:
        return bytes(got), e
    return bytes(got), None


# -- good archives


@pytest.mark.parametrize("tar,tar_how,stored_how", [
    (SMALL_TAR, 1, 1), (SMALL_TAR, 511, 513), (TAR, 511, 4096), (TAR, 513, "random"),
    (TAR, "random", 512), (TAR, READ_CHUNK, READ_CHUNK),
], ids=["small-1-1", "small-511-513", "511-4096", "513-random", "random-512", "1MiB-1MiB"])
def test_round_trip(tar, tar_how, stored_how):
    packed, data = do_pack(tar, tar_how)
    assert packed.sha256 == hashlib.sha256(data).hexdigest()
    assert packed.stored_bytes == len(data)
    assert packed.bytes == len(as_stored(tar)) < len(tar)
    assert packed.entries == len(members_of(tar))
    assert packed.root.is_root and packed.root.uid == 3_000_000

    unpacker = Unpacker(chunked(data, stored_how), packed.sha256, packed.stored_bytes)
    got, error = consume(unpacker)
    assert error is None
    assert got == as_stored(tar)
    assert (unpacker.sha256, unpacker.stored_bytes) == (packed.sha256, len(data))
    assert unpacker.root == packed.root


def test_stored_bytes_are_one_zstd_frame_with_checksum(stored):
    data, _ = stored
    assert zstandard.get_frame_parameters(data).has_checksum
    decomp = zstandard.ZstdDecompressor().decompressobj()
    assert decomp.decompress(data) == STORED_TAR
    assert decomp.eof and decomp.unused_data == b""
    if shutil.which("zstd"):   # the stock tool reads it too
        result = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True)
        assert result.stdout == STORED_TAR


def test_progress_adds_up_to_the_tar_size():
    pack_calls, unpack_calls = [], []
    packed, data = do_pack(TAR, "random", progress=pack_calls.append)
    Unpacker(read_chunks(io.BytesIO(data), 4096), packed.sha256,
             progress=unpack_calls.append).drain()
    assert sum(pack_calls) == sum(unpack_calls) == len(STORED_TAR)
    assert min(pack_calls) > 0 and min(unpack_calls) > 0


def test_level_is_honoured():
    rnd = random.Random(3)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 9))) for _ in range(400)]
    text = b" ".join(rnd.choice(words) for _ in range(120_000))
    tar = make_tar(corpus_members(big=False) + [(corpus_members()[-1][0], text)])
    fast, fast_data = do_pack(tar, level=1)
    small, small_data = do_pack(tar, level=19)
    assert len(small_data) < len(fast_data) * 0.95
    for packed, data in ((fast, fast_data), (small, small_data)):
        got, error = consume(Unpacker([data], packed.sha256, packed.stored_bytes))
        assert error is None and got == as_stored(tar)


def test_read_chunks_sizes():
    assert [len(c) for c in read_chunks(io.BytesIO(bytes(10)), 4)] == [4, 4, 2]
    assert list(read_chunks(io.BytesIO(b""))) == []


# -- bad tar streams given to pack


@pytest.mark.parametrize("cut", ["empty", "inside-big-data", "at-the-end-marker", "one-zero-block"])
def test_pack_refuses_a_truncated_tar(cut):
    end = end_of_members(TAR)
    length = {"empty": 0, "inside-big-data": end - 5000, "at-the-end-marker": end,
              "one-zero-block": end + 512}[cut]
    with pytest.raises(IntegrityError, match="truncated"):
        do_pack(TAR[:length], "random")


@pytest.mark.parametrize("how", [1, 1000, "random", 1 << 20])
def test_pack_drops_the_padding_of_the_last_record(how):
    """GNU tar with 128 KiB records pads the end; the stored archive ends at the marker
    (as the engine's Go tar writes it), so `zstd -dc | tar -x` ends without SIGPIPE."""
    padded = SMALL_TAR[:end_of_members(SMALL_TAR)] + bytes(128 * 1024)
    calls = []
    packed, data = do_pack(padded, how, progress=calls.append)
    stored = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert stored == as_stored(SMALL_TAR) == padded[:end_of_members(SMALL_TAR) + 1024]
    assert packed.bytes == sum(calls) == len(stored)
    assert packed.entries == len(members_of(SMALL_TAR))


def test_pack_refuses_a_corrupt_header():
    broken = bytearray(SMALL_TAR)
    broken[members_of(SMALL_TAR)[1].offset_data - 512 + 3] ^= 0xFF
    with pytest.raises(IntegrityError, match="corrupt tar header"):
        do_pack(bytes(broken))


# -- bad stored archives


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _cut_to(n: int):
    return lambda d: d[:n]


def _cut_off(n: int):
    return lambda d: d[:-n]


DAMAGES = {
    "flip-middle": lambda d: _flip(d, len(d) // 2),
    "flip-near-end": lambda d: _flip(d, len(d) - 6),
    **{f"cut-to-{n}": _cut_to(n) for n in (0, 1, 10)},
    **{f"cut-{n}-off": _cut_off(n) for n in (1, 4, 5, 100)},
    "cut-in-half": lambda d: d[:len(d) // 2],
    "trailing-zero-byte": lambda d: d + b"\x00",
    "trailing-junk": lambda d: d + b"junk",
    "second-frame": lambda d: d + d,
}


@pytest.mark.parametrize("manifest_known", [True, False], ids=["with-manifest", "zstd-tar-only"])
@pytest.mark.parametrize("how", [4096, "random", READ_CHUNK])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_archive_is_refused_before_the_consumer_has_it_all(stored, damage, how,
                                                                    manifest_known):
    data, sha = stored
    bad = DAMAGES[damage](data)
    expected = (sha, len(data)) if manifest_known else (None, None)
    got, error = consume(Unpacker(chunked(bad, how), *expected))
    assert isinstance(error, IntegrityError)
    assert len(got) < len(STORED_TAR)
    if not damage.startswith("flip"):  # a flipped byte may come out as garbage before the check
        assert TAR.startswith(got)


@pytest.mark.parametrize("split", [False, True], ids=["same-chunk", "own-chunk"])
def test_trailing_data_after_the_frame(stored, split):
    data, _ = stored
    pieces = [data, b"junk"] if split else [data + b"junk"]
    got, error = consume(Unpacker(pieces))
    assert "after the end of its zstd frame" in str(error)
    assert len(got) < len(STORED_TAR)


@pytest.mark.parametrize("wrong,message", [("sha256", "archive sha256 is"),
                                           ("size", "bytes, the manifest says")])
def test_manifest_mismatch_is_refused(stored, wrong, message):
    data, sha = stored
    expected = ("0" * 64, len(data)) if wrong == "sha256" else (sha, len(data) + 1)
    got, error = consume(Unpacker(chunked(data, 65536), *expected))
    assert isinstance(error, IntegrityError) and message in str(error)
    assert len(got) < len(STORED_TAR) and STORED_TAR.startswith(got)
    with pytest.raises(IntegrityError):
        Unpacker(chunked(data, 65536), *expected).drain()


def test_good_zstd_of_a_truncated_tar_is_refused():
    """The frame and sha256 check out, but the tar inside lacks its end."""
    inner = SMALL_TAR[:end_of_members(SMALL_TAR)]
    data = zstandard.ZstdCompressor(write_checksum=True).compress(inner)
    got, error = consume(Unpacker(chunked(data, 7), hashlib.sha256(data).hexdigest(), len(data)))
    assert "truncated" in str(error)
    assert len(got) < len(inner)


def test_failed_unpack_reports_less_progress_than_the_tar(stored):
    data, _ = stored
    calls = []
    got, error = consume(Unpacker(chunked(data[:-4], 4096), progress=calls.append))
    assert error is not None
    assert sum(calls) == len(got) < len(STORED_TAR)
def test_consumer_never_sees_the_end_marker_of_a_bad_archive():
    end = end_of_members(SMALL_TAR) + 1024
    assert len(SMALL_TAR) > end                      # tarfile pads to 10 KiB records
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False)
    writer.write(SMALL_TAR[:end])
    writer.flush(zstandard.FLUSH_BLOCK)              # the padding gets a zstd block of its own
    split = out.tell()
    writer.write(SMALL_TAR[end:])
    writer.close()
    data = out.getvalue()
    got, error = consume(Unpacker([data[:split], data[split:]], "0" * 64, len(data)))
    assert isinstance(error, IntegrityError)
    assert len(got) < end


def test_more_than_a_mebibyte_after_the_end_marker_is_corruption():
    """Padding after the end marker is allowed (pack drops it, but archives by other
    writers may have it), but not without bound (memory stays flat)."""
    tar = make_tar(corpus_members()) + bytes(2 << 20)
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    sha256 = hashlib.sha256(stored).hexdigest()
    got, error = consume(Unpacker([stored], sha256, len(stored)))
    assert isinstance(error, IntegrityError) and "after the end of its tar stream" in str(error)
    assert len(got) < len(tar)


# -- members that would land outside the volume


@pytest.mark.parametrize("case", ["dotdot", "absolute", "under-symlink", "hardlink-dotdot"])
def test_pack_refuses_a_member_outside_the_volume(case):
    """A backup can never store one (a real volume cannot hold one either)."""
    tar, member = crafted()[case]
    with pytest.raises(IntegrityError, match=f"tar member '{member}' "):
        do_pack(tar, "random")


@pytest.mark.parametrize("how", [1, 4096, READ_CHUNK])
@pytest.mark.parametrize("case", ["dotdot", "under-symlink", "hardlink-under-symlink"])
def test_consumer_never_sees_a_member_outside_the_volume(case, how):
    """The refusal comes before the member's header is passed on, whatever the chunking:
    the engine or GNU tar never gets to extract it. A valid sha256: the tar is the problem."""
    tar, member = crafted(filler=random.Random(5).randbytes(3 * READ_CHUNK + 7))[case]
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    got, error = consume(Unpacker(chunked(stored, how), hashlib.sha256(stored).hexdigest(),
                                  len(stored)))
    assert isinstance(error, IntegrityError) and f"tar member '{member}' " in str(error)
    bad = next(m for m in members_of(tar) if m.name.rstrip("/") == member)
    assert READ_CHUNK < len(got) <= bad.offset   # nothing of its header (nor of a PAX header before it)

"""Cutting a tar stream at every member (stream/chunker.py, cut_each_member): where the
cuts fall, that the pieces are the stream, what a change or an insertion disturbs, and
that a huge member is never held in memory."""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import tracemalloc

import pytest

from tests.unit.chunkrepos import backup, chunk_list, restored
from tests.unit.tars import CHUNKINGS, chunked, end_of_members, make_tar, members_of
from volbackup.errors import IntegrityError
from volbackup.repo.config import CHUNKER_EACH, MIN_PACK, PACKED, RepoConfig
from volbackup.repo.repository import Repository
from volbackup.stream.archive import END_MARKER, kept_tar
from volbackup.stream.chunker import (EACH_GROUP_MAX, EACH_GROUP_MOD, SMALL, cut_each_member,
                                      member_name_hash, seed_name_key)
from volbackup.stream.tarstream import TarWalker

KEY = b"test key"
# FastCDC sizes small enough that a member of a few hundred KiB is cut inside
AVG, MIN, MAX = 16 << 10, 4 << 10, 64 << 10


def _file(name: str, data: bytes = b"", type_=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = type_, 0o644, 1700000000
    return info, data


def _tar(members) -> bytes:
    tar = make_tar([_file("./", type_=tarfile.DIRTYPE)] + members)
    return tar[:end_of_members(tar) + END_MARKER]  # as kept_tar passes it on


def _blobs(tar: bytes, piece=4096, key=KEY, avg=AVG, min_=MIN, max_=MAX,
           seed=7) -> list[bytes]:
    walker = TarWalker(unique=False)
    return list(cut_each_member(kept_tar(chunked(tar, piece), walker), walker, avg, min_,
                                max_, 1, seed, name_key=key))


def _ends(blobs: list[bytes]) -> list[int]:
    out, at = [], 0
    for b in blobs:
        at += len(b)
        out.append(at)
    return out


def _names(count: int, ends_group: bool, prefix: str = "./f") -> list[str]:
    """`count` names whose hash (KEY) is 0 mod 8 (`ends_group`), or is not."""
    out, i = [], 0
    while len(out) < count:
        name = f"{prefix}{i}"
        if (member_name_hash(name, KEY) % EACH_GROUP_MOD == 0) == ends_group:
            out.append(name)
        i += 1
    return out


def _spans(tar: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset of its first header, end of its padded data)."""
    return {m.name: (m.offset, m.offset_data + -(-m.size // 512) * 512)
            for m in members_of(tar)}


def _new(old: list[bytes], new: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) in the new stream of each blob the old cut lacks."""
    have = {hashlib.sha256(b).digest() for b in old}
    out, at = [], 0
    for b in new:
        if hashlib.sha256(b).digest() not in have:
            out.append((at, at + len(b)))
        at += len(b)
    return out


def test_cuts_fall_where_members_start_and_end_and_where_names_end_groups():
    quiet = _names(3, ends_group=False)
    loud = _names(1, ends_group=True)[0]
    tar = _tar([_file(quiet[0], b"a" * 100), _file("./big", random.Random(1).randbytes(10_000)),
                _file(quiet[1], b"b" * 100), _file(loud, b"c" * 100),
                _file(quiet[2], b"d" * 3072)])  # 512 + 3072: the largest small member
    spans = _spans(tar)
    assert spans[quiet[2]][1] - spans[quiet[2]][0] == SMALL - 512
    big_start, big_end = spans["./big"]
    # FastCDC's minimum above the big file's size: no cut inside it
    assert _ends(_blobs(tar, min_=16 << 10)) == [big_start, big_end, spans[loud][0], len(tar)]


def test_a_member_of_exactly_4_kib_is_not_small():
    names = _names(2, ends_group=False)
    tar = _tar([_file(names[0], b"x" * 3585), _file(names[1], b"y")])  # 512 + 4096
    start, end = _spans(tar)[names[0]]
    assert end - start == SMALL + 512
    assert _ends(_blobs(tar)) == [start, end, len(tar)]


def test_the_name_hash_is_keyed():
    names = _names(40, ends_group=False)
    other = [n for n in names if member_name_hash(n, b"another key") % EACH_GROUP_MOD == 0]
    assert other, "some names end groups under another key"
    tar = _tar([_file(n, b"z" * 200) for n in names])
    assert len(_blobs(tar)) == 1
    assert len(_blobs(tar, key=b"another key")) == 1 + len(other)


def test_a_group_ends_before_it_would_pass_64_kib():
    names = _names(60, ends_group=False)
    tar = _tar([_file(n, random.randbytes(3000)) for n in names])  # 3584 bytes each
    blobs = _blobs(tar)
    assert len(blobs) > 1
    assert all(len(b) <= EACH_GROUP_MAX for b in blobs[:-1])
    assert len(blobs[-1]) <= EACH_GROUP_MAX + END_MARKER
    # each group is as full as the rule makes it: the next member would not fit
    assert all(len(b) > EACH_GROUP_MAX - 3584 for b in blobs[:-1])


def _corpus(rnd: random.Random, count: int = 120, changed: str | None = None,
            insert: tuple[int, str, bytes] | None = None) -> bytes:
    """Directories, tiny, middling and large files; one byte of `changed` flipped, and
    `insert` (index, name, data) added."""
    members = []
    for i in range(count):
        kind = i % 6
        name = f"./d{i // 10}/file{i:03}"
        if kind == 0:
            members.append(_file(name.rsplit("/", 1)[0] + f"/sub{i}/", type_=tarfile.DIRTYPE))
            continue
        size = (rnd.randrange(300_000) if kind == 1 else rnd.randrange(5000, 40_000)
                if kind == 2 else rnd.randrange(1, 3000))
        data = bytearray(rnd.randbytes(size))
        if name == changed:
            data[len(data) // 2] ^= 0xFF
        members.append(_file(name, bytes(data)))
    if insert:
        members.insert(insert[0], _file(insert[1], insert[2]))
    return _tar(members)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_the_blobs_are_the_stream_whatever_the_pieces(how):
    tar = _corpus(random.Random(5), count=14)  # small: one byte at a time is slow
    blobs = _blobs(tar, piece=4096)
    assert len(blobs) > 10
    assert b"".join(blobs) == tar
    walker = TarWalker(unique=False)
    again = list(cut_each_member(kept_tar(chunked(tar, how, seed=3), walker), walker,
                                 AVG, MIN, MAX, 1, 7, name_key=KEY))
    assert again == blobs


def test_a_large_member_is_cut_inside_and_its_blobs_are_its_own():
    data = random.Random(9).randbytes(400_000)
    tar = _tar([_file("./a", b"1"), _file("./big", data), _file("./b", b"2")])
    start, end = _spans(tar)["./big"]
    ends = _ends(_blobs(tar))
    inside = [e for e in ends if start < e < end]
    assert start in ends and end in ends
    assert len(inside) >= 3
    assert max(b - a for a, b in zip([start] + inside, inside + [end])) <= MAX


def test_a_changed_large_file_changes_only_its_own_blobs():
    old = _corpus(random.Random(1))
    name = next(m.name for m in members_of(old) if m.size > 200_000)
    new = _corpus(random.Random(1), changed=name)
    start, end = _spans(new)[name]
    fresh = _new(_blobs(old), _blobs(new))
    assert fresh and all(start <= a and b <= end for a, b in fresh)
    assert len(fresh) <= 2  # the blob holding the byte (and perhaps the next, FastCDC)


def test_a_file_touched_rewrites_its_headers_and_not_its_data():
    """A file changed in place gets a new mtime: the headers of a member with 64 KiB of
    data or more are a blob of their own, so the new mtime costs ~512 bytes, not the
    first FastCDC chunk of the data (here all of it: 300 KB under a 1 MiB minimum)."""
    data = random.Random(3).randbytes(300_000)
    old = _tar([_file("./a", b"1"), _file("./big", data), _file("./b", b"2")])
    touched = _file("./big", data)
    touched[0].mtime += 60
    new = _tar([_file("./a", b"1"), touched, _file("./b", b"2")])
    start, _ = _spans(new)["./big"]
    fresh = _new(_blobs(old, min_=1 << 20, avg=2 << 20, max_=4 << 20),
                 _blobs(new, min_=1 << 20, avg=2 << 20, max_=4 << 20))
    assert fresh == [(start, start + 512)]
    small = _file("./small", data[:60_000])         # under 64 KiB: headers and data together
    spans = _spans(_tar([small]))["./small"]
    assert _ends(_blobs(_tar([small]), min_=1 << 20, avg=2 << 20, max_=4 << 20)).count(
        spans[0] + 512) == 0


def test_a_changed_tiny_file_changes_only_its_group():
    old = _corpus(random.Random(2))
    name = next(m.name for m in members_of(old) if 100 < m.size < 3000)
    new = _corpus(random.Random(2), changed=name)
    start, end = _spans(new)[name]
    fresh = _new(_blobs(old), _blobs(new))
    assert len(fresh) == 1
    (a, b), = fresh
    assert a <= start and end <= b and b - a <= EACH_GROUP_MAX + END_MARKER


@pytest.mark.parametrize("size", [10, 2000, 50_000])
@pytest.mark.parametrize("index", [4, 50])  # between tiny files; between large ones
def test_an_inserted_file_disturbs_only_its_own_group(size, index):
    old = _corpus(random.Random(3))
    new = _corpus(random.Random(3), insert=(index, "./d0/added", random.Random(4).randbytes(size)))
    assert len(members_of(new)) == len(members_of(old)) + 1
    start, end = _spans(new)["./d0/added"]
    old_blobs, new_blobs = _blobs(old), _blobs(new)
    fresh = _new(old_blobs, new_blobs)
    lost = _new(new_blobs, old_blobs)  # blobs of the old stream the new one no longer has
    assert len(lost) <= 1
    if size >= SMALL:  # its own blobs, and the two halves of a group it split
        outside = [(a, b) for a, b in fresh if not (start <= a and b <= end)]
        assert all(b == start or a == end for a, b in outside)
        assert len(outside) == 2 * len(lost)
    else:               # the group it joined (split in two if its name ends a group)
        assert 1 <= len(fresh) <= 2
        assert fresh[0][0] <= start and end <= fresh[-1][1]
        assert fresh[-1][1] - fresh[0][0] <= EACH_GROUP_MAX + SMALL


def test_an_incomplete_tar_raises_after_the_walker_sees_its_end():
    tar = _tar([_file("./big", random.randbytes(100_000))])
    walker = TarWalker(unique=False)
    with pytest.raises(IntegrityError):
        list(cut_each_member(kept_tar(chunked(tar[:50_000], 4096), walker), walker,
                             AVG, MIN, MAX, 1, 7, name_key=KEY))


def test_a_huge_member_is_never_held_in_memory():
    """A 96 MiB member of zeros, made on the fly: memory stays within the window."""
    size, piece = 96 << 20, bytes(1 << 20)
    info = tarfile.TarInfo("./zeros")
    info.size, info.mtime = size, 1700000000

    def stream():
        yield _tar([])[:512]  # the root's header
        yield info.tobuf(tarfile.PAX_FORMAT)
        for _ in range(size // len(piece)):
            yield piece
        yield bytes(END_MARKER)

    walker = TarWalker(unique=False)
    avg, min_, max_ = 256 << 10, 64 << 10, 1 << 20
    count = total = 0
    tracemalloc.start()
    try:
        for blob in cut_each_member(kept_tar(stream(), walker), walker, avg, min_, max_,
                                    1, 7, name_key=KEY):
            count, total = count + 1, total + len(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 512 + 512 + size + END_MARKER
    assert count >= size // max_
    assert peak < 12 << 20, f"peak {peak >> 20} MiB"


def test_a_repository_with_the_each_member_chunker_stores_and_restores(tmp_path):
    """Through chunked.pack into a LooseChunkStore on a LocalBackend."""
    config = RepoConfig.new(avg_size=4096, algorithm=CHUNKER_EACH)
    assert RepoConfig.from_json(config.to_json(), "config").chunker.algorithm == CHUNKER_EACH
    repo = Repository.init(str(tmp_path / "repo"), config=config)
    tar = _corpus(random.Random(6), count=60)
    manifest = backup(repo, tar)
    assert restored(repo, manifest) == tar
    seed = repo.config.chunker.seed
    listed = [length for _, length in chunk_list(repo, manifest)]
    assert listed == [len(b) for b in _blobs(tar, key=seed_name_key(seed), avg=4096,
                                             min_=1024, max_=16384, seed=seed)]


def test_a_packed_repository_with_the_each_member_chunker_stores_and_restores(tmp_path):
    config = RepoConfig.new(avg_size=4096, algorithm=CHUNKER_EACH, layout=PACKED,
                            pack_size=MIN_PACK)
    repo = Repository.init(str(tmp_path / "repo"), config=config)
    tar = _corpus(random.Random(7), count=60)
    manifest = backup(repo, tar)
    reopened = Repository.open(str(tmp_path / "repo"))
    assert restored(reopened, reopened.reveal(manifest)) == tar
    seed = config.chunker.seed
    assert [n for _, n in chunk_list(reopened, manifest)] == [
        len(b) for b in _blobs(tar, key=seed_name_key(seed), avg=4096, min_=1024, max_=16384,
                               seed=seed)]


def test_a_packed_repository_made_at_512k_keeps_cutting_at_512k(tmp_path):
    """The default chunk size of packed repositories went from 512 KiB to 256 KiB; one
    made before (its config says 131072/524288/2097152, as `init` then wrote it) cuts its
    large files where it always did, so that its next backup stores nothing again, and a
    new repository cuts at the new sizes."""
    older = json.loads(RepoConfig.new(layout=PACKED).to_json())
    older["chunker"].update(min_size=128 << 10, avg_size=512 << 10, max_size=2 << 20)
    config = RepoConfig.from_json(json.dumps(older).encode(), "config")
    repo = Repository.init(str(tmp_path / "older"), config=config)
    tar = _tar([_file("./a", b"1"), _file("./big", random.Random(8).randbytes(6 << 20))])
    manifest = backup(repo, tar)
    seed = config.chunker.seed
    lengths = [n for _, n in chunk_list(repo, manifest)]
    at_512k = [len(b) for b in _blobs(tar, key=seed_name_key(seed), avg=512 << 10,
                                      min_=128 << 10, max_=2 << 20, seed=seed)]
    at_256k = [len(b) for b in _blobs(tar, key=seed_name_key(seed), avg=256 << 10,
                                      min_=64 << 10, max_=1 << 20, seed=seed)]
    assert lengths == at_512k != at_256k
    assert manifest.stored_bytes > 0 and backup(repo, tar).stored_bytes == 0
    new = RepoConfig.new(layout=PACKED).chunker
    assert (new.min_size, new.avg_size, new.max_size) == (64 << 10, 256 << 10, 1 << 20)

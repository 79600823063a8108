"""volbackup.stream.foreign: foreign tars (any compression) made into a snapshot's tar."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
import tracemalloc

import pytest
import zstandard

from tests.unit.tars import BIG_FILE_BYTES, LONGER_NAME, NON_UTF8_NAME, ROOT_XATTR, corpus_members, make_tar
from volbackup.errors import InputRefused
from volbackup.stream.foreign import Normalised, detect, normalised
from volbackup.stream.tarstream import TarWalker

COMPRESS = {
    "tar": lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
}


def run(data: bytes, strip: int = 0) -> tuple[list[tarfile.TarInfo], dict, Normalised, bytes]:
    seen = Normalised()
    out = b"".join(normalised(io.BytesIO(data), strip, seen, now=lambda: 1_700_000_000))
    walker = TarWalker()
    walker.feed(out)
    walker.finish()  # a whole tar, every member inside the volume
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:", errors="surrogateescape") as tar:
        members = tar.getmembers()
        contents = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}
    return members, contents, seen, out


def named(tar_members, prefix: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The corpus with every name (and hard link target) under `prefix`."""
    out = []
    for info, data in corpus_members():
        info.name = prefix + info.name[2:]
        if info.type == tarfile.LNKTYPE:
            info.linkname = prefix + info.linkname[2:]
        out.append((info, data))
    return out


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_every_format_comes_through_member_for_member(kind):
    source = corpus_members()
    members, contents, seen, _ = run(COMPRESS[kind](make_tar(source)))
    assert seen.format == kind and seen.members == len(source) and not seen.root_added
    assert [m.name for m in members] == [tarfile.TarInfo(i.name).name.rstrip("/") or "."
                                         for i, _ in source]
    by_name = {m.name: m for m in members}
    for info, data in source:
        got = by_name[info.name.rstrip("/") or "."]
        assert (got.type, got.mode, got.uid, got.gid, got.mtime, got.linkname) == \
            (info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname)
        if info.isreg():
            assert contents[got.name] == data
    assert by_name["."].pax_headers[ROOT_XATTR[0]] == ROOT_XATTR[1]   # xattrs survive
    assert len(contents["./big.bin"]) == BIG_FILE_BYTES
    assert LONGER_NAME in contents and NON_UTF8_NAME in contents


def test_names_are_put_under_the_root_and_a_missing_root_is_made():
    source = [(i, d) for i, d in named(corpus_members(), "") if i.name]  # `a`, no `./`
    members, contents, seen, _ = run(make_tar(source))
    assert seen.root_added
    root = members[0]
    assert (root.name, root.type, root.mode, root.mtime) == (".", tarfile.DIRTYPE, 0o755,
                                                            1_700_000_000)
    assert all(m.name.startswith("./") for m in members[1:])
    assert contents["./hello.txt"] == b"hello, volume\n"
    hard = next(m for m in members if m.name == "./dir/hard")
    assert hard.linkname == "./hello.txt"


def test_strip_components_as_offen_lays_it_out():
    parent = tarfile.TarInfo("backup")
    parent.type = tarfile.DIRTYPE
    source = [(parent, b"")] + named(corpus_members(), "backup/app_data/")
    members, contents, seen, _ = run(make_tar(source), strip=2)
    assert not seen.root_added and seen.members == len(source)
    assert members[0].name == "." and members[0].mode == 0o1750   # backup/app_data/ is the root
    assert members[0].pax_headers[ROOT_XATTR[0]] == ROOT_XATTR[1]
    assert "./hello.txt" in contents and not any("backup" in m.name for m in members)
    assert next(m for m in members if m.name == "./dir/hard").linkname == "./hello.txt"


def test_a_stale_pax_path_does_not_win_over_the_stripped_name():
    info = tarfile.TarInfo("top/" + "x" * 120)   # long: written with a PAX path record
    info.size = 3
    members, contents, _, _ = run(make_tar([(info, b"abc")]), strip=1)
    assert list(contents) == ["./" + "x" * 120]


def test_concatenated_streams_are_read_whole():
    tar = make_tar(corpus_members(big=False))
    half = len(tar) // 2
    for kind in ("gzip", "bzip2", "xz", "zstd"):
        joined = COMPRESS[kind](tar[:half]) + COMPRESS[kind](tar[half:])
        _, contents, _, _ = run(joined)
        assert contents["./hello.txt"] == b"hello, volume\n", kind


def test_output_is_bounded_for_a_compression_bomb():
    """64 MiB of zeros in a few kB of zstd or gzip: the pieces stay small (an unbounded
    decompress would hand over the whole member at once)."""
    header = tarfile.TarInfo("./zeros")
    header.size = 64 << 20
    tar = _root().tobuf(tarfile.PAX_FORMAT) + header.tobuf(tarfile.PAX_FORMAT) \
        + bytes(header.size) + bytes(1024)
    for kind in ("zstd", "gzip"):
        data = COMPRESS[kind](tar)
        assert len(data) < 1 << 20
        biggest = max(len(p) for p in normalised(io.BytesIO(data)))
        assert biggest <= 1 << 20, kind


def _root() -> tarfile.TarInfo:
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    return root


def _member(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    data = b"hi" if type_ == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


_TAR = make_tar(corpus_members(big=False))
JUNK = {
    "empty": (b"", "the input is empty"),
    "random": (os.urandom(4096), "not a tar archive, nor one compressed"),
    "truncated gzip": (gzip.compress(_TAR)[:-100], "gzip input is truncated"),
    "corrupt gzip": (gzip.compress(_TAR)[:40] + bytes(100) + gzip.compress(_TAR)[140:],
                     "gzip input is corrupt"),
    "truncated zstd": (COMPRESS["zstd"](_TAR)[:-10], "zstd input is truncated"),
    "truncated xz": (lzma.compress(_TAR)[:-30], "xz input is"),
    "truncated bzip2": (bz2.compress(_TAR)[:-30], "bzip2 input is"),
    "zstd of text": (COMPRESS["zstd"](b"hello, not a tar\n" * 100), "corrupt tar header"),
    "tar cut at a member": (_TAR[:1536], "no end-of-archive marker"),
    "tar cut in data": (_TAR[:len(_TAR) // 2 + 7], "truncated"),
    "absolute": (make_tar([_member("/etc/passwd")]), "has an absolute name"),
    "dotdot": (make_tar([_member("./a/../../x")]), "has '..' in its name"),
    "hard link out": (make_tar([_member("./x", tarfile.LNKTYPE, "../etc/shadow")]),
                      "is a hard link to"),
    "through a symlink": (make_tar([_member("./l", tarfile.SYMTYPE, "/"), _member("./l/x")]),
                          "lies under the symlink member"),
    "no members": (bytes(10240), "it holds no members"),
}


@pytest.mark.parametrize("case", sorted(JUNK))
def test_junk_is_refused_with_one_line(case):
    data, message = JUNK[case]
    with pytest.raises(InputRefused) as caught:
        for _ in normalised(io.BytesIO(data)):
            pass
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 16


def test_strip_that_leaves_nothing_is_refused():
    with pytest.raises(InputRefused, match="--strip-components 3 leaves nothing of its 14 members"):
        run(make_tar(corpus_members(big=False)), strip=3)


def test_hard_link_whose_target_is_stripped_away_is_refused():
    source = [_member("a/b/file"), _member("a/b/link", tarfile.LNKTYPE, "a")]
    with pytest.raises(InputRefused, match="which --strip-components 1 removes"):
        run(make_tar(source), strip=1)


def test_detect_by_magic_not_name():
    assert detect(gzip.compress(b"x")) == "gzip"
    assert detect(bz2.compress(b"x")) == "bzip2"
    assert detect(lzma.compress(b"x")) == "xz"
    assert detect(COMPRESS["zstd"](b"x")) == "zstd"
    assert detect(_TAR) == "tar"
    with pytest.raises(InputRefused):
        detect(b"PK\x03\x04" + bytes(600))  # a zip


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_sparse_files_of_gnu_tar_are_written_in_full(fmt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.img", "wb") as f:
        f.truncate(8 << 20)
        f.seek(5_000_000)
        f.write(b"data in a hole\n")
    tar = subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(src), "-cf", "-", "."],
                         capture_output=True, check=True).stdout
    members, contents, _, _ = run(tar)
    img = next(m for m in members if m.name == "./sparse.img")
    assert img.type == tarfile.REGTYPE and not img.pax_headers.keys() & {"GNU.sparse.name"}
    assert contents["./sparse.img"] == (src / "sparse.img").read_bytes()


def test_two_trees_that_strip_would_merge_are_refused():
    """offen's archive of two volumes: backup/a/... and backup/b/..."""
    source = [_dir("backup/"), _dir("backup/a/"), _member("backup/a/x"), _dir("backup/b/"),
              _member("backup/b/y")]
    with pytest.raises(InputRefused, match="makes both 'backup/a' and 'backup/b' the volume"):
        run(make_tar(source), strip=2)
    _, contents, _, _ = run(make_tar(source[:3]), strip=2)   # one of them alone is fine
    assert list(contents) == ["./x"]


def test_the_same_root_twice_is_one_root():
    source = [_dir("./"), _member("./x"), _dir("./")]
    members, _, _, _ = run(make_tar(source))
    assert [m.name for m in members] == [".", "./x"]


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, b""


def test_a_name_twice_is_refused():
    """A symlink, then a file of the same name: restore would refuse the snapshot."""
    source = [_dir("./"), _member("./s", tarfile.SYMTYPE, "/etc"), _member("./s"),
              _member("./t")]
    with pytest.raises(InputRefused, match=r"tar member '\./s' has the name of an earlier"):
        run(make_tar(source))
    source = [_dir("./"), _dir("./d/"), _member("./d/x"), _dir("d")]   # `d/` and `d`: one name
    with pytest.raises(InputRefused, match="tar member 'd' has the name of an earlier") as e:
        run(make_tar(source))
    assert e.value.exit_code == 16


def test_strip_components_making_two_names_one_is_refused():
    source = [_dir("top/"), _dir("top/a/"), _member("top/a/x"), _member("top/b/a/x")]
    with pytest.raises(InputRefused, match=r"'top/b/x' has the name of an earlier member "
                                           r"\(after --strip-components 2: 'x'\)"):
        run(make_tar(source[:3] + [_member("top/b/x")]), strip=2)
    members, _, _, _ = run(make_tar(source), strip=1)   # a/x and b/a/x: two names
    assert [m.name for m in members] == [".", "./a", "./a/x", "./b/a/x"]


def _peak_import(data: bytes) -> int:
    """tracemalloc's peak while `data` is normalised (the output thrown away)."""
    reader = io.BytesIO(data)
    tracemalloc.start()
    try:
        for _ in normalised(reader):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_memory_does_not_grow_with_the_members(monkeypatch):
    """Issue 23: tarfile kept every member read (about 500 bytes each). With the name
    check's memory bound made small, 10x the members may cost no more than a little."""
    from volbackup.stream import names
    monkeypatch.setattr(names, "MEMORY_NAMES", 256)

    big = tarfile.TarInfo("./big")  # so that both fill the read buffers
    big.size = 3 << 20

    def tiny_files(count: int) -> bytes:
        return make_tar([_dir("./"), (big, bytes(big.size))]
                        + [_member(f"./d{i % 10}/f{i}") for i in range(count)],
                        tarfile.GNU_FORMAT)

    small, large = tiny_files(500), tiny_files(5_000)
    grown = _peak_import(large) - _peak_import(small)
    assert grown < 256 << 10, f"{grown} bytes more for 4,500 more members"

"""Catalogue version 2 (volbackup.repo.catalogtree): lines without absolute offsets, cut
into pieces by a keyed hash of each line, under a tree; read back into the entries
version 1 gives, and refused when crafted."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import subprocess
import tarfile

import pytest

from tests.unit.fakestore import FakeStore
from tests.unit.tars import chunked, end_of_members, make_tar
from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo import catalogtree
from volbackup.repo.blobstore import CATALOG, TREE
from volbackup.repo.catalogtree import (CatalogTreeWriter, ends_piece, entries, parse_line,
                                        plain_cut_key, to_line)
from volbackup.repo.trees import TreeWriter
from volbackup.stream import catalog
from volbackup.stream.archive import END_MARKER, kept_tar
from volbackup.stream.catalog import CatalogEntry
from volbackup.stream.tarstream import TarWalker

KEY = plain_cut_key("0123456789abcdef0123456789abcdef")


def _member(name, data=b"", type_=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type_, link, 0o644, 1700000000
    return info, data


@functools.lru_cache(maxsize=4)
def _volume(files: int = 40, seed: int = 1, changed: int | None = None,
            inserted: int | None = None) -> bytes:
    rnd = random.Random(seed)
    members = [_member("./", type_=tarfile.DIRTYPE), _member("./d/", type_=tarfile.DIRTYPE)]
    for i in range(files):
        data = bytearray(rnd.randbytes(rnd.randrange(0, 2000)))
        if i == changed and data:
            data[0] ^= 1
        members.append(_member(f"./d/f{i:05}", bytes(data)))
        if i == inserted:
            members.append(_member(f"./d/f{i:05}-new", b"new\n"))
    members += [_member("./d/link", type_=tarfile.SYMTYPE, link="f00001"),
                _member("./d/hard", type_=tarfile.LNKTYPE, link="./d/f00001"),
                _member("./" + "long/" * 30 + "name", b"deep\n")]
    tar = make_tar(members)
    return tar[:end_of_members(tar) + END_MARKER]


def _write(store, tar: bytes, key: bytes = KEY) -> dict:
    walker = TarWalker(unique=False)
    writer = CatalogTreeWriter(store, 3, key)
    writer.record(walker)
    for _ in kept_tar(chunked(tar, 4096), walker):
        pass
    field = writer.finish(walker.end_marker_at)
    json.dumps(field)  # what a manifest holds
    return field


def _version1(tar: bytes) -> list[CatalogEntry]:
    return list(catalog.walk(chunked(tar, 4096)))


@pytest.mark.parametrize("files", [0, 40, 3000])
def test_entries_read_back_as_version_1_gives_them(files):
    store = FakeStore()
    tar = _volume(files)
    field = _write(store, tar)
    got = list(entries(store, field, len(tar), KEY, "snapshot x"))
    assert got == _version1(tar)
    assert field["entries"] == len(got) and field["version"] == 3
    assert {store.kinds[i] for i in store.blobs} == {CATALOG, TREE}
    if files == 3000:
        assert field["blobs"] > 5  # cut by the lines' hashes, ~256 lines a piece
    lines = b"".join(store.blobs[i] for i in store.blobs if store.kinds[i] == CATALOG)
    assert b'"at"' not in lines and b'"hdr":512' in lines


def test_the_empty_catalogue():
    store = FakeStore()
    writer = CatalogTreeWriter(store, 3, KEY)
    field = writer.finish(0)
    assert field == {"version": 3, "entries": 0, "root": "", "length": 0, "height": 0,
                     "blobs": 0, "bytes": 0}
    assert list(entries(store, field, 1024, KEY, "x")) == []
    assert not store.blobs


def test_an_unchanged_volume_stores_nothing_new():
    store = FakeStore()
    tar = _volume(3000)
    first = _write(store, tar)
    held = set(store.blobs)
    assert _write(store, tar) == first
    assert set(store.blobs) == held


@pytest.mark.parametrize("how", ["changed", "inserted"])
def test_a_changed_or_inserted_file_rewrites_one_piece_and_the_tree_above(how):
    old_store, new_store = FakeStore(), FakeStore()
    old = _write(old_store, _volume(3000))
    new = _write(new_store, _volume(3000, **{how: 1500}))
    catalog_pieces = [i for i in set(new_store.blobs) - set(old_store.blobs)
                      if new_store.kinds[i] == CATALOG]
    tree_pieces = [i for i in set(new_store.blobs) - set(old_store.blobs)
                   if new_store.kinds[i] == TREE]
    assert 1 <= len(catalog_pieces) <= 2  # 2: the inserted line ends a piece
    assert 1 <= len(tree_pieces) <= new["height"]  # one a level
    assert old["blobs"] > 5 and new["root"] != old["root"]


def test_an_entry_whose_data_takes_other_than_its_padded_size_says_its_span():
    """As a sparse member's data does; what the next entry's offset shows."""
    store = FakeStore()
    writer = CatalogTreeWriter(store, 3, KEY)
    first = CatalogEntry("sparse", "file", 100, 0o644, 0, 0, 1, "", 0, 512, "a" * 64)
    second = CatalogEntry("next", "file", 0, 0o644, 0, 0, 1, "", 4096, 4608, "b" * 64)
    writer.add(first)
    writer.add(second)
    field = writer.finish(4608)
    stored = next(d for d in store.blobs.values() if b"sparse" in d)
    assert b'"span":3584' in stored and stored.count(b'"span"') == 1
    assert list(entries(store, field, 8192, KEY, "x")) == [first, second]


# ---- crafted ----

def _crafted(store, lines: list[bytes], cuts: list[int] | None = None) -> dict:
    """A catalogue of `lines`, cut after the line indexes in `cuts` (the rule's, if None)."""
    pieces, buf = [], b""
    for i, line in enumerate(lines):
        buf += line
        if (cuts is None and ends_piece(line, KEY)) or (cuts is not None and i in cuts):
            pieces.append(buf)
            buf = b""
    if buf:
        pieces.append(buf)
    tree = TreeWriter(store, 3)
    for piece in pieces:
        tree.add(store.save(piece, 3, kind=CATALOG).id, len(piece))
    return {"version": 2, "entries": len(lines), **tree.finish().to_fields()}


def _line(i: int, **changes) -> bytes:
    out = {"path": f"f{i}", "type": "file", "size": 10, "mode": 420, "uid": 0, "gid": 0,
           "mtime": 1, "link": "", "hdr": 512, "sha256": "c" * 64}
    out.update(changes)
    out = {k: v for k, v in out.items() if v is not None}
    return (json.dumps(out, separators=(",", ":")) + "\n").encode()


def _read(store, field, stream_bytes=1 << 20):
    return list(entries(store, field, stream_bytes, KEY, "snapshot x"))


def test_crafted_lines_read_when_well_formed():
    store = FakeStore()
    lines = [_line(i) for i in range(600)]
    field = _crafted(store, lines)
    got = _read(store, field)
    assert [e.at for e in got[:3]] == [0, 1024, 2048] and field["blobs"] > 1


@pytest.mark.parametrize("changes, match", [
    ({"hdr": 100}, "invalid hdr or span"), ({"hdr": 0}, "invalid hdr or span"),
    ({"hdr": "512"}, "invalid hdr"), ({"span": 512}, "invalid hdr or span"),
    ({"span": 700}, "invalid hdr or span"), ({"span": -512}, "invalid hdr or span"),
    ({"at": 0}, "invalid line"), ({"path": "../x"}, "not a valid entry"),
    ({"type": "dir"}, "not a valid entry"), ({"mode": 1 << 20}, "invalid mode"),
    ({"size": 1 << 40}, "not a valid entry"), ({"sha256": None, "size": None}, "invalid size")])
def test_a_crafted_line_is_refused(changes, match):
    store = FakeStore()
    field = _crafted(store, [_line(0), _line(1, **changes), _line(2)])
    with pytest.raises(IntegrityError, match=match):
        _read(store, field)


def test_a_piece_cut_where_the_rule_does_not_cut():
    store = FakeStore()
    lines = [line for line in map(_line, range(100)) if not ends_piece(line, KEY)][:20]
    assert len(_read(store, _crafted(store, lines))) == 20  # one piece: fine
    with pytest.raises(IntegrityError, match="not cut where the cut rule cuts"):
        _read(store, _crafted(store, lines, cuts=[9]))


def test_a_piece_that_goes_on_past_a_cut():
    store = FakeStore()
    lines = [_line(i) for i in range(2000)]
    cut = next(i for i, line in enumerate(lines) if ends_piece(line, KEY))
    with pytest.raises(IntegrityError, match="not cut where the cut rule cuts"):
        _read(store, _crafted(store, lines, cuts=[]))
    assert cut < 1999


def test_a_piece_that_does_not_end_with_a_whole_line():
    store = FakeStore()
    piece = _line(0) + _line(1)[:-1]
    tree = TreeWriter(store, 3)
    tree.add(store.save(piece, 3, kind=CATALOG).id, len(piece))
    field = {"version": 2, "entries": 2, **tree.finish().to_fields()}
    with pytest.raises(IntegrityError, match="whole line"):
        _read(store, field)


@pytest.mark.parametrize("entries_said", [2, 4])
def test_a_count_that_is_not_the_manifests(entries_said):
    store = FakeStore()
    field = dict(_crafted(store, [_line(i) for i in range(3)]), entries=entries_said)
    with pytest.raises(IntegrityError, match="entries"):
        _read(store, field)


def test_an_entry_beyond_the_stream_is_refused():
    store = FakeStore()
    field = _crafted(store, [_line(i) for i in range(3)])
    assert len(_read(store, field, stream_bytes=3072)) == 3
    with pytest.raises(IntegrityError, match="not a valid entry"):
        _read(store, field, stream_bytes=3071)


@pytest.mark.parametrize("field", [
    None, {"version": 1}, {"version": 2, "entries": -1, "root": "", "length": 0, "height": 0,
                           "blobs": 0, "bytes": 0},
    {"version": 2, "entries": True, "root": "", "length": 0, "height": 0, "blobs": 0,
     "bytes": 0},
    {"version": 2, "entries": 0, "root": "", "length": 0, "height": 0, "blobs": 0}])
def test_a_manifest_field_of_the_wrong_form(field):
    with pytest.raises(RepositoryError):
        _read(FakeStore(), field)


def test_more_pieces_than_entries_is_refused():
    store = FakeStore()
    field = _crafted(store, [_line(i) for i in range(600)])
    with pytest.raises(RepositoryError):
        _read(store, dict(field, entries=1))


def test_the_cut_key_decides_the_cuts():
    lines = [_line(i) for i in range(3000)]
    one = [i for i, line in enumerate(lines) if ends_piece(line, KEY)]
    other = [i for i, line in enumerate(lines) if ends_piece(line, plain_cut_key("f" * 32))]
    assert one and other and one != other


def test_a_line_round_trips():
    entry = CatalogEntry("a/b", "file", 700, 0o600, 1, 2, 3.5, "", 1024, 2048, "d" * 64)
    line = to_line(entry, 1024)
    assert b"span" not in line
    assert parse_line(line, 1024, 1 << 20) == (entry, 3072)
    moved = to_line(entry, 4096)
    assert parse_line(moved, 1024, 1 << 20) == (entry, 2048 + 4096)
    assert parse_line(to_line(dataclasses.replace(entry, at=0, data=512), 1024), 0,
                      1 << 20)[1] == 1536


def test_pieces_end_at_4_mib_whatever_the_hashes(monkeypatch):
    monkeypatch.setattr(catalogtree, "PIECE_BYTES", 2000)
    store = FakeStore()
    lines = [_line(i) for i in range(100)]
    field = _crafted(store, lines, cuts=None)
    with pytest.raises(IntegrityError, match="not cut where"):
        _read(store, field)  # the hash cuts alone: too long a piece for the rule
    store = FakeStore()
    walker_field = CatalogTreeWriter(store, 3, KEY)
    for i in range(100):
        walker_field.add(CatalogEntry(f"f{i}", "file", 10, 0o644, 0, 0, 1, "", i * 1024,
                                      i * 1024 + 512, "c" * 64))
    field = walker_field.finish(100 * 1024)
    assert all(len(store.blobs[i]) < 2000 + 200 for i in store.blobs if store.kinds[i] == CATALOG)
    assert len(_read(store, field)) == 100


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_gnu_tar_sparse_members_read_back_as_version_1_gives_them(tmp_path, fmt):
    """GNU tar's sparse members (both formats): the walker's size is the bytes the member
    takes in the stream, so no line needs a span."""
    volume = tmp_path / "v"
    volume.mkdir()
    with open(volume / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5_000_000)
        f.write(b"hello")
    (volume / "after").write_bytes(b"after\n")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(archive), "-C",
                    str(volume), "."], check=True)
    walker = TarWalker(unique=False)
    store = FakeStore()
    writer = CatalogTreeWriter(store, 3, KEY)
    writer.record(walker)
    tar = b"".join(kept_tar(chunked(archive.read_bytes(), 4096), walker))
    field = writer.finish(walker.end_marker_at)
    got = list(entries(store, field, len(tar), KEY, "x"))
    assert got == _version1(tar)
    assert {e.path for e in got} == {".", "sparse", "after"}
    assert not any(b'"span"' in piece for piece in store.blobs.values())


# ---- the fast reading of to_line's form ----

_NAMES = ["a", "dir/file.txt", "é/ü", 'q"uote', "back\\slash", "tab\tx", "\x7fdel", "sp ace",
          "\udcff\udc80raw", "x/y/z" * 50, "\ud800lone"]


def _random_lines(count: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    lines = []
    for _ in range(count):
        entry = CatalogEntry(
            rnd.choice(_NAMES), rnd.choice(["file", "dir", "symlink", "hardlink", "fifo"]),
            rnd.randrange(0, 10 ** rnd.randrange(1, 22)), rnd.randrange(0, 1 << 13),
            rnd.randrange(0, 1 << 64), rnd.randrange(0, 1 << 32),
            rnd.choice([rnd.randrange(-(1 << 40), 1 << 40), rnd.uniform(-1e10, 1e10), 1e16,
                        1e300, 0.1, -0.0, 0, 5e-324]),
            rnd.choice(["", "t", "é\\", "../x"]), 0, 512 * rnd.randrange(1, 4),
            rnd.choice([None, "ab" * 32]),
            rnd.choice([None, (rnd.randrange(1 << 65), rnd.randrange(1 << 63), 5)]))
        lines.append(catalogtree.to_line(entry, rnd.choice([None, 0, 1024, 1 << 70])))
    return lines


def test_lines_in_to_lines_form_read_as_json_reads_them():
    lines = _random_lines(3000, 7)
    odd = [b'{"path":"a","type":"file","size":007}\n',
           b'{"path":"a","type":"file","size":1,"mode":1,"uid":0,"gid":0,"mtime":1,"link":"",'
           b'"hdr":512,"st":[1,2]}\n',
           b'{"path":"a","type":"file","size":123456789012345678901234,"mode":1,"uid":0,'
           b'"gid":0,"mtime":1,"link":"","hdr":512}\n',
           b'{"path":"a","type":"file","size":1,"mode":1,"uid":0,"gid":0,"mtime":1,"link":"",'
           b'"hdr":512} \n',
           b'{"path":"a\x01","type":"file","size":1,"mode":1,"uid":0,"gid":0,"mtime":1,'
           b'"link":"","hdr":512}\n']
    fast = 0
    for line in lines + odd:
        got = catalogtree._canonical_fields(line)
        if got is None:
            continue
        fast += 1
        want = catalogtree._json_fields(line)
        assert got == want and [type(v) for v in got.values()] == \
            [type(v) for v in want.values()], line
    assert fast > 2000         # to_line's form (numbers of over 20 digits go to json.loads)
    assert catalogtree._canonical_fields(_file_line()) is not None
    assert catalogtree._canonical_fields(odd[0]) is None    # not JSON: json.loads refuses it
    # and parse_line gives what it gave through json.loads, or refuses alike
    for line in lines[:500]:
        try:
            want = catalogtree.parse_line(line, 0, 1 << 80)
        except IntegrityError as e:
            want = type(e)
        try:
            with_json = _parse_by_json(line)
        except IntegrityError as e:
            with_json = type(e)
        assert want == with_json, line


def _parse_by_json(line: bytes):
    real = catalogtree._canonical_fields
    catalogtree._canonical_fields = lambda line: None
    try:
        return catalogtree.parse_line(line, 0, 1 << 80)
    finally:
        catalogtree._canonical_fields = real


def _file_line(**changes) -> bytes:
    out = {"path": "d/f", "type": "file", "size": 10, "mode": 420, "uid": 5, "gid": 6,
           "mtime": 1.5, "link": "", "hdr": 512, "sha256": "c" * 64, "st": [7, 8, 9]}
    out.update(changes)
    return (json.dumps({k: v for k, v in out.items() if v is not None},
                       separators=(",", ":")) + "\n").encode()


def test_a_parent_line_gives_what_the_files_cache_matches_on():
    got = catalogtree.parent_line(_file_line(), 1024, 1 << 20)
    assert (got.key, got.at, got.hdr, got.end, got.size, got.mode, got.uid, got.gid,
            got.mtime, got.st) == ((b"d", b"f"), 1024, 512, 2048, 10, 420, 5, 6, 1.5, (7, 8, 9))
    # the same line in another form (spaces: not to_line's) reads the same
    spaced = json.dumps(json.loads(_file_line())).encode() + b"\n"
    assert catalogtree.parent_line(spaced, 1024, 1 << 20)[1:] == got[1:]
    # escaped names are matched as the walk's bytes
    assert catalogtree.parent_line(_file_line(path="é/\udcff"), 0, 1 << 20).key == \
        (b"\xc3\xa9", b"\xff")
    assert catalogtree.parent_line(_file_line(path="\ud800"), 0, 1 << 20).key is None
    # what cannot be taken: a directory, a file without st or digest, a link
    for line in (_file_line(type="dir", size=0, sha256=None, st=None),
                 _file_line(st=None), _file_line(sha256=None), _file_line(link="x")):
        parsed = catalogtree.parent_line(line, 0, 1 << 20)
        assert parsed.key is None and parsed.end == 512 + (512 if b'"size":10' in line else 0)


@pytest.mark.parametrize("changes, match", [
    ({"hdr": 100}, "invalid hdr or span"), ({"hdr": 0}, "invalid hdr or span"),
    ({"hdr": 1 << 63}, "invalid hdr or span"), ({"span": 512}, "invalid hdr or span"),
    ({"span": 700}, "invalid hdr or span"), ({"size": 1 << 40}, "not a valid entry"),
    ({"type": "dir"}, "not a valid entry"), ({"mtime": 1e300}, "invalid mtime"),
    ({"hdr": "512"}, "invalid hdr"), ({"st": [1, 2]}, "invalid st")])
def test_a_crafted_parent_line_is_refused(changes, match):
    with pytest.raises(IntegrityError, match=match):
        catalogtree.parent_line(_file_line(**changes), 0, 1 << 20)

"""The streaming tar walker, parse_pax and metadata_tar, checked against Python's tarfile."""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import pytest

from tests.unit.tars import (
    CHUNKINGS,
    LONG_NAME,
    LONGER_NAME,
    NON_UTF8_NAME,
    ROOT_XATTR,
    chunked,
    corpus_members,
    crafted,
    end_of_members,
    gnu_long_crafted,
    make_tar,
    members_of,
)
from volbackup.errors import IntegrityError
from volbackup.stream.tarstream import Entry, TarWalker, _again, _byte_sum, _Header, parse_pax

TAR = make_tar(corpus_members())
SMALL_TAR = make_tar(corpus_members(big=False))


def walk(data: bytes, how: int | str = 512, finish: bool = True, **options) -> TarWalker:
    walker = TarWalker(**options)
    for piece in chunked(data, how):
        walker.feed(piece)
    if finish:
        walker.finish()
    return walker


def header_offset(tar: bytes, name: str) -> int:
    """Offset of the ustar header block of member `name` (after any extended headers)."""
    member = next(m for m in members_of(tar) if m.name == name)
    return member.offset_data - 512


# -- complete tars


@pytest.mark.parametrize("how", CHUNKINGS)
def test_counts_match_tarfile_in_any_chunking(how):
    walker = walk(TAR, how)
    assert walker.ended
    assert walker.entries == len(members_of(TAR)) == len(corpus_members())
    assert walker.bytes == len(TAR)


@pytest.mark.parametrize("how", [1, 513, "random"])
def test_first_entry_is_the_volume_root(how):
    root = walk(TAR, how).first
    assert root.is_root
    assert root.name == "."
    assert root.type == tarfile.DIRTYPE
    assert (root.mode, root.uid, root.gid, root.mtime) == (0o1750, 3_000_000, 3_000_001,
                                                           1_600_000_000.5)
    assert root.pax[ROOT_XATTR[0]] == ROOT_XATTR[1]


def test_keep_first_false_keeps_nothing():
    walker = TarWalker(keep_first=False)
    walker.feed(SMALL_TAR)
    walker.finish()
    assert walker.first is None
    assert walker.entries == len(corpus_members(big=False))


def test_first_entry_that_is_not_a_directory_is_not_root():
    tar = make_tar(corpus_members(big=False)[1:])
    first = walk(tar).first
    assert first.name == "./hello.txt"
    assert not first.is_root


@pytest.mark.parametrize("name,type_,root", [
    ("./", tarfile.DIRTYPE, True), (".", tarfile.DIRTYPE, True), ("", tarfile.DIRTYPE, True),
    ("./x", tarfile.DIRTYPE, False), ("data", tarfile.DIRTYPE, False),
    ("..", tarfile.DIRTYPE, False), (".", tarfile.REGTYPE, False), ("./", tarfile.SYMTYPE, False),
])
def test_is_root(name, type_, root):
    assert Entry(name, type_, 0o755, 0, 0, 0.0, 0).is_root is root


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("index", range(len(corpus_members())),
                         ids=[m.name for m, _ in corpus_members()])
def test_each_kind_of_member_reads_as_tarfile_reads_it(fmt, index):
    tar = make_tar([corpus_members()[index]], fmt)
    expected = members_of(tar)[0]
    got = walk(tar, "random").first
    assert (got.name, got.type, got.mode, got.uid, got.gid, got.mtime, got.size, got.linkname) == (
        expected.name, expected.type, expected.mode, expected.uid, expected.gid, expected.mtime,
        expected.size, expected.linkname)


def _odd_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    """Headers the corpus lacks: devices, a ustar prefix, numbers only base-256 can hold."""
    def info(name, type_=tarfile.REGTYPE, **fields):
        i = tarfile.TarInfo(name)
        i.type = type_
        for key, value in fields.items():
            setattr(i, key, value)
        return i
    return [(info("./chr", tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
            (info("./blk", tarfile.BLKTYPE, devmajor=8, devminor=1), b""),
            (info("./" + "p" * 120 + "/short"), b"x"),
            (info("./huge-ids", uid=1 << 40, gid=(1 << 33) + 5), b""),
            (info("./old", mtime=-1_000_000), b""),
            (info("./dir/", tarfile.DIRTYPE), b"")]


def _fits_ustar(member: tarfile.TarInfo) -> bool:
    try:
        member.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict")
    except ValueError:
        return False
    return not member.pax_headers


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_header_fields_match_tarfile_frombuf(fmt):
    members = corpus_members(big=False) + _odd_members()
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold the long, non-ASCII and huge ones
        members = [(m, d) for m, d in members if _fits_ustar(m)]
    tar = make_tar(members, fmt)
    headers = 0
    for offset in range(0, len(tar), 512):
        block = tar[offset:offset + 512]
        try:
            expected = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            with pytest.raises(IntegrityError):
                if block != bytes(512):
                    _Header.parse(block, 0)
                else:
                    raise IntegrityError("a zero block is never parsed")
            continue
        got = _Header.parse(block, 0)
        headers += 1
        device = (expected.devmajor, expected.devminor) if expected.ischr() or expected.isblk() \
            else None
        assert (got.name, got.type, got.mode, got.uid, got.gid, got.size, got.mtime,
                got.linkname, got.device) == (
            expected.name, expected.type, expected.mode, expected.uid, expected.gid,
            expected.size, expected.mtime, expected.linkname, device)
    assert headers >= len(members)


def test_v7_directory_and_signed_checksum_read_as_tarfile_reads_them():
    block = bytearray(tarfile.TarInfo("v7dir/").tobuf(tarfile.USTAR_FORMAT))
    block[156:157] = tarfile.AREGTYPE
    block[0:100] = "v7dir/\xe9".encode("latin-1").ljust(100, b"\0")  # a byte >= 0x80
    signed = 256 + sum(b - 256 if b > 127 else b for i, b in enumerate(block) if not 148 <= i < 156)
    block[148:156] = b"%06o\0 " % signed
    expected = tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
    got = _Header.parse(bytes(block), 0)
    assert (got.name, got.type) == (expected.name, expected.type)


@pytest.mark.parametrize("field, value", [("mode", b"07a4\0"), ("size", b"9" * 11),
                                           ("checksum", b"xyz")])
def test_bad_numbers_in_a_header_are_integrity_errors(field, value):
    start = {"mode": 100, "size": 124, "checksum": 148}[field]
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[start:start + len(value)] = value
    with pytest.raises(tarfile.HeaderError):
        tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
    with pytest.raises(IntegrityError, match="corrupt tar header after 3 entries"):
        _Header.parse(bytes(block), 3)


def test_long_and_non_utf8_names_come_through_whole():
    for name in (LONG_NAME, LONGER_NAME, NON_UTF8_NAME):
        for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
            member = next(m for m in corpus_members(big=False) if m[0].name == name)
            assert walk(make_tar([member], fmt), 1).first.name == name
    assert len(LONGER_NAME.encode()) > 250 and len(LONG_NAME) > 100


def test_global_pax_header_is_not_an_entry():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tar:
        for info, data in corpus_members(big=False):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    walker = walk(buf.getvalue(), 511)
    assert walker.entries == len(corpus_members(big=False))
    assert walker.first.is_root


@pytest.mark.parametrize("extra", [b"", bytes(512), bytes(512 * 20), bytes(7)])
def test_zero_padding_after_the_end_marker_is_fine(extra):
    end = end_of_members(SMALL_TAR) + 1024     # just the marker, as Go's tar writes it
    walker = walk(SMALL_TAR[:end] + extra, 513)
    assert walker.ended
    assert walker.bytes == end + len(extra)


# -- incomplete and corrupt tars


def _cuts() -> dict[str, int]:
    hello = header_offset(SMALL_TAR, "./hello.txt")
    end = end_of_members(SMALL_TAR)
    return {
        "empty": 0,
        "inside-pax-header-data": 512 + 10,
        "inside-a-header": hello + 100,
        "inside-data": header_offset(SMALL_TAR, "./exactly-one-block") + 512 + 100,
        "inside-data-padding": hello + 512 + 100,
        "at-a-member-boundary": hello,
        "at-the-end-marker": end,
        "after-one-zero-block": end + 512,
        "inside-the-second-zero-block": end + 1000,
    }


@pytest.mark.parametrize("how", [1, 511, 512, "random"])
@pytest.mark.parametrize("cut", list(_cuts()))
def test_truncated_tar_fails_on_finish(cut, how):
    walker = walk(SMALL_TAR[:_cuts()[cut]], how, finish=False)   # feeding does not raise
    assert not walker.ended
    with pytest.raises(IntegrityError, match="truncated"):
        walker.finish()


def _damage(tar: bytes, offset: int, value: bytes = b"\xff") -> bytes:
    return tar[:offset] + value + tar[offset + len(value):]


@pytest.mark.parametrize("how", [1, 513, "random"])
@pytest.mark.parametrize("where", ["name", "checksum-field", "first-pax-header"])
def test_corrupt_header_checksum_raises_on_feed(where, how):
    hello = header_offset(SMALL_TAR, "./hello.txt")
    offset = {"name": hello + 3, "checksum-field": hello + 150, "first-pax-header": 5}[where]
    with pytest.raises(IntegrityError, match="corrupt tar header"):
        walk(_damage(SMALL_TAR, offset), how, finish=False)


def test_zero_block_in_the_middle_raises_on_feed():
    hello = header_offset(SMALL_TAR, "./hello.txt")
    broken = SMALL_TAR[:hello] + bytes(512) + SMALL_TAR[hello:]
    with pytest.raises(IntegrityError, match="zero block in the middle"):
        walk(broken, "random", finish=False)


def test_corrupt_pax_record_in_stream_raises_on_feed():
    assert SMALL_TAR[512:513].isdigit()             # the root's PAX data starts with a length
    with pytest.raises(IntegrityError, match="corrupt PAX header"):
        walk(_damage(SMALL_TAR, 512, b"x"), 7, finish=False)
@pytest.mark.parametrize("key", ["size", "uid", "mtime"])
def test_non_numeric_pax_value_is_an_integrity_error(key):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./a")
        info.size, info.pax_headers = 3, {key: "abc"}
        tar.addfile(info, io.BytesIO(b"xyz"))
    with pytest.raises(IntegrityError):
        walk(buf.getvalue())


# -- parse_pax


def rec(key: str, value: bytes) -> bytes:
    """One correctly sized PAX record."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def test_parse_pax_records():
    data = (rec("path", b"./a=b") + rec("SCHILY.xattr.user.x", b"line1\nline2")
            + rec("comment", b"") + rec("linkpath", b"\xe9\xff") + rec("k\u00e9y", b"ok"))
    assert parse_pax(data + bytes(100)) == {
        "path": "./a=b", "SCHILY.xattr.user.x": "line1\nline2", "comment": "",
        "linkpath": b"\xe9\xff".decode("utf-8", "surrogateescape"), "k\u00e9y": "ok"}
    assert parse_pax(b"") == {}
    near_100 = rec("a", b"x" * 95)                 # the length's own digits push it past 100
    assert near_100.startswith(b"102 ") and len(near_100) == 102
    assert parse_pax(near_100) == {"a": "x" * 95}


@pytest.mark.parametrize("data", [
    b"x path=a\n", b"99 path=a\n", b"6 abc\n", b"0 a=b\n", b"-5 a=b\n", b"12", b" 5 a=b\n",
    b"5 a=bc\n", b"7 a=b\n" + b"garbage",
], ids=["non-numeric", "past-the-end", "no-equals", "zero", "negative", "no-space",
        "leading-space", "too-short", "garbage-after"])
def test_parse_pax_rejects_corrupt_records(data):
    with pytest.raises(IntegrityError, match="corrupt PAX header"):
        parse_pax(data)
def test_parse_pax_rejects_record_without_final_newline():
    with pytest.raises(IntegrityError):
        parse_pax(b"6 a=bc")


# -- the volume root, given again (metadata_tar; _again builds each of its headers)


def _again_tar(entry: Entry, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_again(entry, name))
    return buf.getvalue()


def test_metadata_tar_reapplies_the_root_metadata():
    data = walk(TAR, "random").metadata_tar("data")
    [member] = members_of(data)
    assert member.name == "data" and member.isdir()
    assert (member.mode, member.uid, member.gid, member.mtime) == (0o1750, 3_000_000, 3_000_001,
                                                                   1_600_000_000.5)
    assert member.pax_headers[ROOT_XATTR[0]] == ROOT_XATTR[1]
    walker = walk(data, 1)                        # and it is a complete tar by our own check
    assert walker.entries == 1 and walker.first.name == "data"


def test_again_strips_type_bits_and_drops_non_xattr_pax():
    root = Entry("./", tarfile.DIRTYPE, 0o42755, 7, 8, 1234.0, 0,
                 pax={"path": "./elsewhere", "uid": "99", "comment": "no",
                      "SCHILY.xattr.user.a": "1", "SCHILY.acl.access": "user::rwx"})
    [member] = members_of(_again_tar(root, "mnt/" + "m" * 200))
    assert member.name == "mnt/" + "m" * 200
    assert (member.mode, member.uid, member.gid, member.mtime) == (0o2755, 7, 8, 1234)
    assert member.pax_headers["SCHILY.xattr.user.a"] == "1"
    assert member.pax_headers["SCHILY.acl.access"] == "user::rwx"
    assert "comment" not in member.pax_headers


def test_again_keeps_binary_xattr_bytes():
    raw = b"\x01\x00\xff\xfe"
    value = raw.decode("utf-8", "surrogateescape")
    root = Entry(".", tarfile.DIRTYPE, 0o755, 0, 0, 0.0, 0,
                 pax={"SCHILY.xattr.security.capability": value})
    data = _again_tar(root, "data")
    assert b"SCHILY.xattr.security.capability=" + raw + b"\n" in data
    assert walk(data).first.pax["SCHILY.xattr.security.capability"] == value


# -- members that would land outside the extraction directory


@pytest.mark.parametrize("how", [1, 513, "random"])
@pytest.mark.parametrize("case", list(crafted()))
def test_crafted_members_are_refused_and_named(case, how):
    tar, member = crafted()[case]
    with pytest.raises(IntegrityError) as raised:
        walk(tar, how, finish=False)
    assert f"tar member '{member}' " in str(raised.value)
    assert "refused" in str(raised.value)


def test_a_dotdot_in_a_gnu_long_name_is_refused():
    with pytest.raises(IntegrityError, match=r"has '\.\.' in its name"):
        walk(gnu_long_crafted())


def test_what_a_real_volume_holds_is_not_refused():
    """Symlink targets may be absolute or hold `..`; names may merely look alike."""
    def info(name, type_=tarfile.REGTYPE, linkname=""):
        i = tarfile.TarInfo(name)
        i.type, i.linkname = type_, linkname
        return i
    members = [(info("./", tarfile.DIRTYPE), b""),
               (info("./abs", tarfile.SYMTYPE, "/"), b""),
               (info("./up", tarfile.SYMTYPE, "../../.."), b""),
               (info("./absx/file"), b"x"), (info("./ab"), b"x"),       # siblings of `abs`
               (info("./..hidden"), b"x"), (info("./a..b/c...d"), b"x"),
               (info("./new\nline/..x"), b"x"),
               (info("./hard-to-link", tarfile.LNKTYPE, "./abs"), b""),  # a link to a symlink
               (info("./hard", tarfile.LNKTYPE, "./a..b/c...d"), b"")]
    walker = walk(make_tar(members), "random")
    assert walker.entries == len(members)


def test_the_refused_name_is_escaped_in_the_message():
    name = "./../new\nline-" + NON_UTF8_NAME[2:] + "-'q'"
    tar = make_tar([(tarfile.TarInfo(name), b"")])
    with pytest.raises(IntegrityError) as raised:
        walk(tar)
    message = str(raised.value)
    assert "\n" not in message
    assert r"'./../new\nline-latin1-\xe9\xff.bin-\'q\'' has '..' in its name" in message


def test_only_symlinks_are_remembered():
    """The memory the check needs grows with the symlinks in an archive, not its files."""
    files = [(tarfile.TarInfo(f"./d{i // 100}/f{i}"), b"") for i in range(3000)]
    links = [(_symlink(f"./l{i}", "/"), b"") for i in range(10)]
    walker = walk(make_tar(files + links))
    assert len(walker._symlinks) == 10


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


# -- metadata_tar: what the engine's extractor is given again after the stream


def _member(name, type_=tarfile.REGTYPE, mode=0o644, linkname="", mtime=1_600_000_000,
            pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = type_, mode, linkname, mtime
    info.uid, info.gid = 7, 50
    info.pax_headers = dict(pax or {})
    return info


SETUID_LINKS = [
    (_member("./", tarfile.DIRTYPE, 0o750), b""),
    (_member("./bin/", tarfile.DIRTYPE, 0o2755, pax={"mtime": "1600000001.123456789",
                                                    "SCHILY.xattr.user.a": "1"}), b""),
    (_member("./bin/sub/", tarfile.DIRTYPE), b""),
    (_member("./bin/sub/deep", tarfile.DIRTYPE), b""),
    (_member("./bin/tool", mode=0o4755), b"#!/bin/sh\n"),
    (_member("./bin/tool-2", tarfile.LNKTYPE, 0o4755, "./bin/tool"), b""),   # after bin/sub/deep
    (_member("./other/", tarfile.DIRTYPE), b""),
    (_member("./top", tarfile.LNKTYPE, 0o6755, "./bin/tool"), b""),
    (_member("./plain", tarfile.LNKTYPE, 0o755, "./bin/tool"), b""),         # no setid bits
]


def test_metadata_tar_gives_the_root_and_setid_hard_links_again():
    tar = walk(make_tar(SETUID_LINKS), "random").metadata_tar("data")
    members = {m.name: m for m in members_of(tar)}
    assert list(members) == ["data", "data/bin", "data/bin/tool-2", "data/top"]
    root, bin_, link, top = members.values()
    assert root.isdir() and (root.mode, root.uid, root.gid) == (0o750, 7, 50)
    assert bin_.isdir() and (bin_.mode, bin_.uid, bin_.gid) == (0o2755, 7, 50)
    assert bin_.pax_headers["mtime"] == "1600000001.123456789"   # every digit
    assert bin_.pax_headers["SCHILY.xattr.user.a"] == "1"
    assert link.islnk() and link.linkname == "data/bin/tool" and link.mode == 0o4755
    assert top.islnk() and top.linkname == "data/bin/tool" and top.mode == 0o6755
    assert walk(tar).entries == 4      # a complete tar, by our own check too


def test_metadata_tar_is_only_the_root_without_setid_hard_links():
    tar = walk(SMALL_TAR).metadata_tar("data")
    assert [m.name for m in members_of(tar)] == ["data"]
    assert walk(make_tar(corpus_members(big=False)[1:])).metadata_tar("data") is None


def test_a_link_whose_directory_came_out_of_order_is_still_made_again():
    members = [(_member("./", tarfile.DIRTYPE), b""), (_member("./d/", tarfile.DIRTYPE), b""),
               (_member("./d/f", mode=0o4755), b"x"), (_member("./e/", tarfile.DIRTYPE), b""),
               (_member("./d/g", tarfile.LNKTYPE, 0o4755, "./d/f"), b"")]  # ./d/ is gone by then
    tar = walk(make_tar(members)).metadata_tar("data")
    assert [m.name for m in members_of(tar)] == ["data", "data/d/g"]


def test_a_hard_link_made_a_symlink_later_is_refused():
    """A name is in a real archive once; re-making a link that was replaced by a symlink
    would write through it."""
    members = SETUID_LINKS + [(_member("./bin", tarfile.SYMTYPE, linkname="/etc"), b"")]
    with pytest.raises(IntegrityError, match="'./bin' has the name of an earlier member"):
        walk(make_tar(members))
    walker = walk(make_tar(members), unique=False)  # and when names are not checked:
    with pytest.raises(IntegrityError, match="became a symlink later"):
        walker.metadata_tar("data")


def test_setid_hard_links_are_remembered_up_to_a_bound(monkeypatch):
    from volbackup.errors import VolbackupError
    from volbackup.stream import tarstream

    monkeypatch.setattr(tarstream, "MAX_RELINKS", 1)
    walker = walk(make_tar(SETUID_LINKS))
    assert len(walker.relinks) == 1 and walker.relinks_dropped == 1
    with pytest.raises(VolbackupError, match="more than 1 hard links"):
        walker.metadata_tar("data")


def test_only_the_directories_above_the_current_entry_are_kept():
    members = [(_member("./", tarfile.DIRTYPE), b"")] + [
        (_member(f"./d{i}/", tarfile.DIRTYPE), b"") for i in range(500)]
    walker = walk(make_tar(members + [(_member("./d499/x/", tarfile.DIRTYPE), b""),
                                      (_member("./d7/x/", tarfile.DIRTYPE), b"")]))
    assert [key for key, _ in walker._dirs] == ["", "d7/x"]


def test_a_hard_link_to_a_file_with_capabilities_is_made_again_with_them():
    """GNU tar puts the xattr on the file only; the engine's writer on the link too."""
    cap = "SCHILY.xattr.security.capability"
    members = [(_member("./", tarfile.DIRTYPE), b""),
               (_member("./tool", mode=0o755, pax={cap: "\x01\x00\x00\x02"}), b"x"),
               (_member("./tool-2", tarfile.LNKTYPE, 0o755, "./tool"), b""),
               (_member("./tool-3", tarfile.LNKTYPE, 0o755, "./tool", pax={cap: "c"}), b""),
               (_member("./plain", mode=0o755), b"y"),
               (_member("./plain-2", tarfile.LNKTYPE, 0o755, "./plain"), b"")]
    tar = walk(make_tar(members)).metadata_tar("data")
    links = {m.name: m for m in members_of(tar) if m.islnk()}
    assert list(links) == ["data/tool-2", "data/tool-3"]
    assert links["data/tool-2"].pax_headers[cap] == "\x01\x00\x00\x02"
    assert links["data/tool-3"].pax_headers[cap] == "c"


@pytest.mark.parametrize("headers", [1, 20], ids=["one-huge", "many-before-one-entry"])
def test_extended_headers_are_bounded(headers, monkeypatch):
    """PAX data is held until its entry: a crafted archive cannot make that unbounded."""
    from volbackup.stream import tarstream

    monkeypatch.setattr(tarstream, "MAX_EXTENDED", 100_000)
    value = "v" * (150_000 // headers)
    buf = io.BytesIO()
    for i in range(headers):  # each member's PAX header, its ustar header cut off after it
        info = tarfile.TarInfo("./f")
        info.pax_headers = {f"comment{i}": value}
        data = info.tobuf(tarfile.PAX_FORMAT)
        buf.write(data[:-512])
    buf.write(tarfile.TarInfo("./f").tobuf(tarfile.USTAR_FORMAT))
    with pytest.raises(IntegrityError, match="extended headers of .* before entry 1"):
        walk(buf.getvalue() + bytes(1024), 4096)


def test_extended_headers_below_the_bound_are_fine():
    info = tarfile.TarInfo("./f")
    info.pax_headers = {"SCHILY.xattr.user.big": "x" * 65536}
    assert walk(make_tar([(info, b"")])).first.pax["SCHILY.xattr.user.big"] == "x" * 65536


# -- a name that comes twice (issue 23): a volume holds each once, and the two paths of
# restore would not agree on which one wins


def test_a_hard_link_after_its_file_and_the_root_once_are_fine():
    members = [(_member("./", tarfile.DIRTYPE), b""), (_member("./f"), b"x"),
               (_member("./g", tarfile.LNKTYPE, linkname="./f"), b""),
               (_member("./d/", tarfile.DIRTYPE), b""), (_member("./d/f"), b"y")]
    assert walk(make_tar(members)).entries == 5


def test_a_repeated_name_is_found_past_the_memory_bound(monkeypatch):
    from volbackup.stream import names
    monkeypatch.setattr(names, "MEMORY_NAMES", 64)
    files = [(_member("./", tarfile.DIRTYPE), b"")] + [
        (_member(f"./d{i % 7}/f{i}"), b"") for i in range(600)]
    walker = walk(make_tar(files))
    assert walker._names.spilled > 500
    with pytest.raises(IntegrityError, match=r"tar member 'd3/f10/' has the name of an earlier"):
        walk(make_tar(files + [(_member("d3/f10/"), b"")]))  # `./d3/f10` again


def test_walker_memory_does_not_grow_with_members_or_symlinks(monkeypatch):
    """Issue 23: state per member only where bounded. 10x the files and symlinks may cost
    no more than a little (the name sets are bounded to 256 names here)."""
    from volbackup.stream import names
    monkeypatch.setattr(names, "MEMORY_NAMES", 256)

    def tar(count: int) -> bytes:
        return make_tar([(_member("./", tarfile.DIRTYPE), b"")] + [
            (_member(f"./d{i % 10}/entry-{i:06d}", *(
                (tarfile.SYMTYPE, 0o777, "../target") if i % 2 else ())), b"")
            for i in range(count)], tarfile.GNU_FORMAT)

    def peak(data: bytes) -> int:
        pieces = chunked(data, 65536)
        tracemalloc.start()
        try:
            walker = TarWalker()
            for piece in pieces:
                walker.feed(piece)
            walker.finish()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = tar(1_000), tar(10_000)
    grown = peak(large) - peak(small)
    assert grown < 64 << 10, f"{grown} bytes more for 9,000 more members"


def test_the_header_byte_sum_is_the_sum_of_the_bytes():
    """_byte_sum (two Adler-32s) against sum() at the extremes and on random blocks."""
    import random
    rng = random.Random(5)
    blocks = [bytes(512), b"\xff" * 512, b"\xff" * 256 + bytes(256), bytes(256) + b"\xff" * 256]
    blocks += [rng.randbytes(512) for _ in range(200)]
    assert [_byte_sum(b) for b in blocks] == [sum(b) for b in blocks]

"""The files cache's parts (docs/design.md, "The files cache"): the splice of reused
members into tar's stream, the walker and cutter passing them on, the parent's reusable
files, the catalogue's `st`, and the plan made from a real directory."""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile

import pytest

from tests.unit.tars import _info, chunked, make_tar
from volbackup.errors import IntegrityError
from volbackup.ops import filescache
from tests.unit.fakestore import FakeStore
from volbackup.repo.catalogtree import (CatalogTreeWriter, entries, parent_line, parse_line,
                                        plain_cut_key, to_line)
from volbackup.repo.parentfiles import ParentRun, parent_runs
from volbackup.stream.archive import END_MARKER, kept_tar
from volbackup.stream.catalog import CatalogEntry
from volbackup.stream.chunker import cut_each_member
from volbackup.stream.reuse import HostStat, Reused, ReusedMember
from volbackup.stream.splice import Read, splice
from volbackup.stream.tarstream import Entry, TarWalker

MTIME = 1_600_000_000
KEY = plain_cut_key("0123456789abcdef0123456789abcdef")


def _end(tar: bytes) -> int:
    walker = TarWalker()
    walker.feed(tar)
    return walker.end_marker_at


def _reused(member, blobs: dict) -> Reused:
    data = make_tar([member])
    body = data[:_end(data)]
    blob_id = hashlib.sha256(body).hexdigest()
    blobs[blob_id] = body
    info, content = member
    entry = CatalogEntry(path=info.name[2:], type="file", size=len(content), mode=info.mode,
                         uid=0, gid=0, mtime=MTIME, link="", at=0,
                         data=len(body) - -(-len(content) // 512) * 512,
                         sha256=hashlib.sha256(content).hexdigest(), st=(1, 2, 3))
    line = to_line(entry, len(body) - entry.data)
    return Reused((ReusedMember(info.name, MTIME, len(body), entry.data, line),),
                  ((blob_id, len(body)),))


def _joined(items, blobs: dict) -> bytes:
    out = bytearray()
    for item in items:
        if isinstance(item, Reused):
            out += b"".join(blobs[i] for i, _ in item.blobs)
        elif isinstance(item, bytes):
            out += item
    return bytes(out)


@pytest.mark.parametrize("pieces", [1, 700, 10240, "random"])
def test_splice_puts_reused_members_where_the_plan_has_them(pieces):
    root = (_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b"")
    a, x, b, y, z = ((_info(n, mtime=MTIME), bytes([i]) * size) for i, (n, size) in
                     enumerate([("./a", 5000), ("./x", 7000), ("./b", 100), ("./y", 9000),
                                ("./z", 4096)]))
    blobs: dict = {}
    host = HostStat(1, MTIME * 10**9, MTIME * 10**9, 100, 0o644, 0, 0)
    plan = [Read(".", None), Read("./a", None), _reused(x, blobs), Read("./b", host),
            _reused(y, blobs), _reused(z, blobs)]
    tar = make_tar([root, a, b])
    out = list(splice(chunked(tar, pieces), plan))
    whole = make_tar([root, a, x, b, y, z])
    assert _joined(out, blobs)[:_end(whole) + END_MARKER] == whole[:_end(whole) + END_MARKER]
    kinds = [type(i).__name__ for i in out if not isinstance(i, bytes)]
    assert kinds == ["Reused", "HostStat", "Reused", "Reused"]


def test_splice_refuses_a_stream_that_is_not_the_plan():
    root = (_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b"")
    a = (_info("./a", mtime=MTIME), b"x")
    tar = make_tar([root, a])
    with pytest.raises(IntegrityError, match="was planned"):
        list(splice([tar], [Read(".", None), Read("./b", None)]))
    with pytest.raises(IntegrityError, match="did not archive"):
        list(splice([tar], [Read(".", None), Read("./a", None), Read("./c", None)]))
    with pytest.raises(IntegrityError, match="not planned"):
        list(splice([tar], [Read(".", None)]))


def test_a_plan_that_takes_nothing_is_walked_once_with_each_members_stat():
    root = (_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b"")
    a = (_info("./a", mtime=MTIME), b"a" * 100)
    b = (_info("./b", mtime=MTIME), b"b" * 100)
    tar = make_tar([root, a, b])
    host = HostStat(1, MTIME * 10**9, MTIME * 10**9, 100, 0o644, 0, 0)
    other = HostStat(2, MTIME * 10**9, MTIME * 10**9, 99, 0o644, 0, 0)   # not tar's size
    out = splice(chunked(tar, 700), [Read(".", None), Read("./a", host), Read("./b", other)],
                 reused=False)
    walker = TarWalker()
    seen = []
    walker.on_member = lambda start, data_at, entry: seen.append((entry.name, entry.host))
    assert b"".join(kept_tar(out, walker)) == tar[:_end(tar) + END_MARKER]  # tar's bytes
    assert seen == [(".", None), ("./a", host), ("./b", None)]        # b's stat disagreed


@pytest.mark.parametrize("plan, match", [
    ([Read(".", None), Read("./b", None)], "was planned"),
    ([Read(".", None), Read("./a", None), Read("./c", None)], "did not archive"),
    ([Read(".", None)], "not planned")])
def test_a_plan_that_takes_nothing_refuses_a_stream_that_is_not_it(plan, match):
    tar = make_tar([(_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b""),
                    (_info("./a", mtime=MTIME), b"x")])
    with pytest.raises(IntegrityError, match=match):
        list(kept_tar(splice([tar], plan, reused=False), TarWalker()))


def test_the_walker_the_cutter_and_the_catalogue_pass_a_reused_member_on():
    root = (_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b"")
    small = (_info("./s", mtime=MTIME), b"s" * 10)
    x = (_info("./x", mtime=MTIME), os.urandom(70_000))
    blobs: dict = {}
    reused = _reused(x, blobs)
    tar = make_tar([root, small])
    walker = TarWalker(unique=False)
    store = FakeStore()
    cat = CatalogTreeWriter(store, 3, KEY)
    cat.record(walker)
    pieces = list(cut_each_member(kept_tar(splice([tar], [
        Read(".", None), Read("./s", None), reused]), walker), walker, 1 << 20, 256 << 10,
        4 << 20, name_key=b"k" * 8))
    assert reused in pieces
    before = pieces[:pieces.index(reused)]
    assert b"".join(before) == tar[:_end(tar)]      # the open group ends where it starts
    assert walker.entries == 3 and walker.end_marker_at == _end(tar) + reused.length
    field = cat.finish(walker.end_marker_at)
    got = list(entries(store, field, walker.end_marker_at + END_MARKER, KEY, "x"))
    assert [e.path for e in got] == [".", "s", "x"]
    assert got[2].at == _end(tar) and got[2].st == (1, 2, 3)
    assert got[2].sha256 == hashlib.sha256(x[1]).hexdigest()


def test_a_run_of_reused_members_gets_each_its_own_line_and_offset():
    """A Reused of several members passes the walker and the catalogue a run at once:
    each member keeps its own line, where it starts in the new stream, and the walker
    counts them all and keeps the oldest and newest of their times."""
    root = (_info(".", tarfile.DIRTYPE, 0o755, mtime=MTIME), b"")
    members = [(_info(f"./r{i}", mtime=MTIME), os.urandom(600 + 300 * i)) for i in range(3)]
    blobs: dict = {}
    parts = [_reused(m, blobs) for m in members]
    times = [MTIME - 5, MTIME + 7, MTIME]
    run = Reused(tuple(p.members[0]._replace(mtime=t) for p, t in zip(parts, times)),
                 tuple(b for p in parts for b in p.blobs))
    after = (_info("./z", mtime=MTIME), b"z" * 10)
    head, tail = make_tar([root]), make_tar([after])
    walker = TarWalker(unique=False)
    store = FakeStore()
    cat = CatalogTreeWriter(store, 3, KEY)
    cat.record(walker)
    list(kept_tar(splice([head[:_end(head)] + tail], [
        Read(".", None), run, Read("./z", None)]), walker))
    assert walker.entries == 5
    assert walker.oldest == (MTIME - 5, "./r0") and walker.newest == (MTIME + 7, "./r1")
    field = cat.finish(walker.end_marker_at)
    got = list(entries(store, field, walker.end_marker_at + END_MARKER, KEY, "x"))
    assert [e.path for e in got] == [".", "r0", "r1", "r2", "z"]
    starts = [_end(head)]
    for m in run.members:
        starts.append(starts[-1] + m.length)
    assert [e.at for e in got[1:]] == starts
    assert [e.sha256 for e in got[1:4]] == [hashlib.sha256(c).hexdigest() for _, c in members]
    assert got[4].sha256 == hashlib.sha256(b"z" * 10).hexdigest()


def test_a_reused_member_inside_another_is_refused():
    walker = TarWalker()
    tar = make_tar([(_info("./a", mtime=MTIME), b"x" * 2000)])
    walker.feed(tar[:1024])
    with pytest.raises(IntegrityError, match="inside another member"):
        walker.pass_members([ReusedMember("./x", MTIME, 1024, 512, b"{}\n")])


def test_a_host_stat_is_kept_only_when_tars_header_agrees():
    tar = make_tar([(_info("./a", mtime=MTIME), b"x" * 100)])
    for host, kept in [(HostStat(7, MTIME * 10**9, 5, 100, 0o644, 0, 0), True),
                       (HostStat(7, (MTIME + 1) * 10**9, 5, 100, 0o644, 0, 0), False),
                       (HostStat(7, MTIME * 10**9, 5, 101, 0o644, 0, 0), False),
                       (HostStat(7, MTIME * 10**9, 5, 100, 0o600, 0, 0), False)]:
        walker, got = TarWalker(), []
        walker.on_member = lambda start, data_at, entry: got.append(entry)
        walker.note_host(host)
        walker.feed(tar)
        assert (got[0].host is host) is kept


def _entry(path: str, at: int, hdr: int, size: int, st=(1, 2, 3), type_="file"):
    return CatalogEntry(path=path, type=type_, size=size, mode=0o644, uid=0, gid=0,
                        mtime=MTIME, link="", at=at, data=at + hdr, sha256="ab" * 32, st=st)


def _lines(entries: list[CatalogEntry]) -> list:
    return [parent_line(to_line(e, None), e.at, 1 << 40) for e in entries]


def test_parent_runs_are_members_that_are_exactly_whole_blobs():
    entries = [_entry(".", 0, 512, 0, None, "dir"),
               _entry("a", 512, 1024, 4096),            # 512-5632: blobs 512-1536, 1536-5632
               _entry("b", 5632, 512, 512),             # 5632-6656 \ one group blob,
               _entry("b2", 6656, 512, 512),            # 6656-7680 / both reusable
               _entry("c", 7680, 512, 3584, None),      # no st: its group is read
               _entry("c2", 11776, 512, 512),           # (with c)
               _entry("d", 12800, 512, 1536)]           # 12800-14848, one blob
    leaves = [("r", 512), ("a1", 1024), ("a2", 4096), ("g", 2048), ("h", 5120), ("d", 2048)]
    got = list(parent_runs(_lines(entries), leaves, 14848))
    assert [([m.key for m in r.members], [m.end for m in r.members], r.blobs)
            for r in got] == [
        ([(b"a",)], [5632], (("a1", 1024), ("a2", 4096))),
        ([(b"b",), (b"b2",)], [6656, 7680], (("g", 2048),)),
        ([(b"d",)], [14848], (("d", 2048),))]


def test_a_data_tree_shorter_than_its_catalogue_ends_the_runs():
    entries = [_entry(".", 0, 512, 0, None, "dir"), _entry("a", 512, 512, 512),
               _entry("b", 1536, 512, 512)]
    leaves = [("r", 512), ("a", 1024)]          # nothing holds b
    got = list(parent_runs(_lines(entries), leaves, 2560))
    assert [[m.key for m in r.members] for r in got] == [[(b"a",)]]


def test_st_round_trips_in_a_catalogue_line_and_a_bad_one_is_refused():
    entry = _entry("a", 0, 512, 100, (123, MTIME * 10**9 + 5, MTIME * 10**9 + 7))
    line = to_line(entry, 512)
    got, _ = parse_line(line, 0, 10**6)
    assert got.st == entry.st and "st" not in got.as_dict()
    for bad in (b'[1,2]', b'[1,2,-3]', b'[1,2,true]', b'[1,2,"3"]', b'[1,2,18446744073709551616]'):
        with pytest.raises(IntegrityError, match="invalid st"):
            parse_line(line.replace(line[line.index(b'"st":') + 5:-2], bad), 0, 10**6)
    on_dir = to_line(_entry("d", 0, 512, 0, (1, 2, 3), "dir"), 0)
    with pytest.raises(IntegrityError, match="invalid st"):
        parse_line(on_dir, 0, 10**6)


class _Parent:
    """Reusable runs of a made-up parent, from the files' current stat; each name a run of
    its own, or a tuple of names a group."""

    def __init__(self, root: str, runs: list):
        self.runs = []
        for run in runs:
            names = run if isinstance(run, tuple) else (run,)
            entries, at = [], 0
            for name in names:
                st = os.lstat(os.path.join(root, name))
                entries.append(CatalogEntry(
                    path=name, type="file", size=st.st_size, mode=st.st_mode & 0o7777,
                    uid=st.st_uid, gid=st.st_gid, mtime=MTIME, link="", at=at, data=at + 512,
                    sha256="cd" * 32, st=(st.st_ino, st.st_mtime_ns, st.st_ctime_ns)))
                at += 512 + -(-st.st_size // 512) * 512
            self.runs.append(ParentRun(tuple(_lines(entries)), ((names[0], at),)))


def _plan(root, parent, indexed=lambda blob: True, matcher=None, settle=0.0):
    plan = filescache.make_plan(str(root), parent, indexed, matcher,
                                now=os.stat(root).st_ctime + 10, settle=settle)
    try:
        items = list(plan.read_back())
        names = plan.names.read().split(b"\0")[:-1]
        return items, names, plan.counts
    finally:
        plan.close()


def test_the_plan_reuses_only_what_it_may(tmp_path):
    from volbackup.stream.exclude import Matcher
    root = tmp_path / "v"
    (root / "sub").mkdir(parents=True)
    for name in ("same", "changed", "linked", "unindexed", "sub/same", "excluded", "new",
                 "g1", "g2", "h1", "h2"):
        (root / name).write_bytes(name.encode() * 1000)
    os.link(root / "linked", root / "sub" / "link")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    parent = _Parent(str(root), ["changed", ("g1", "g2"), ("h1", "h2"), "linked", "same",
                                 "sub/same", "unindexed"])
    (root / "changed").write_bytes(b"x" * 7000)          # other size (and ctime)
    os.chmod(root / "h2", 0o600)                          # one of a group changed
    items, names, counts = _plan(root, parent.runs, lambda blob: blob != "unindexed",
                                 Matcher(["excluded"]))
    reused = [[m.name for m in i.members] for i in items if isinstance(i, Reused)]
    assert reused == [["./g1", "./g2"], ["./same"], ["./sub/same"]]
    assert names == [b".", b"./changed", b"./h1", b"./h2", b"./linked", b"./new", b"./sub",
                     b"./sub/link", b"./unindexed"]
    assert [i.name for i in items if isinstance(i, Read)] == [n.decode() for n in names]
    assert (counts.files_reused, counts.files_read) == (4, 7)
    # none is trusted while its ctime is within `settle` of the backup's start
    items, _, counts = _plan(root, parent.runs, settle=3600)
    assert counts.files_reused == 0
    assert all(i.host is None for i in items if isinstance(i, Read))


def test_consecutive_runs_taken_are_planned_as_one_up_to_a_bound(tmp_path, monkeypatch):
    root = tmp_path / "v"
    root.mkdir()
    names = [f"f{i:02d}" for i in range(7)]
    for name in names:
        (root / name).write_bytes(name.encode() * 3000)
    parent = _Parent(str(root), names)
    monkeypatch.setattr(filescache, "TAKEN_MOST", 3)
    items, tar_names, counts = _plan(root, parent.runs)
    reused = [i for i in items if isinstance(i, Reused)]
    assert [[m.name for m in r.members] for r in reused] == [
        ["./f00", "./f01", "./f02"], ["./f03", "./f04", "./f05"], ["./f06"]]
    assert [r.blobs for r in reused] == [
        tuple((n, 512 + 9216) for n in names[i:i + 3]) for i in (0, 3, 6)]
    assert sum(r.length for r in reused) == 7 * (512 + 9216)   # 9,000 bytes each
    assert tar_names == [b"."] and counts.files_reused == 7

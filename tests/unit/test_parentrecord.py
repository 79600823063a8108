"""The parent record (volbackup.repo.parentrecord): what a backup host of an encrypted
repository keeps of its last snapshot of a volume, for the files cache. It must hold
exactly what the snapshot stored, appear only when published, and be refused whole when
damaged; a crafted one is checked line by line as a parent catalogue is."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.unit.chunkrepos import backup, chunk_list, chunked_repo, volume_tar
from volbackup.errors import IntegrityError
from volbackup.repo import catalogtree, parentrecord
from volbackup.repo.config import PACKED
from volbackup.stream.catalog import CatalogEntry
from volbackup.repo.parentrecord import RecordWriter, open_record, record_path


@pytest.fixture
def repo(tmp_path):
    return chunked_repo(tmp_path / "repo", seed=1, layout=PACKED)


def test_a_record_holds_exactly_the_lines_and_blobs_the_snapshot_stored(repo, tmp_path):
    path = record_path(str(tmp_path / "cache"), repo.config.id, "pgdata", "host-a")
    tar = volume_tar(size=3 << 20)
    record = RecordWriter(path, "pgdata")
    manifest = backup(repo, tar, record=record)
    assert not os.path.exists(path)     # nothing visible before it is published
    record.publish(manifest.snapshot)
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]
    got = open_record(path)
    assert got is not None and got.snapshot == manifest.snapshot
    manifest = repo.reveal(manifest)
    from_repo = catalogtree.parent_lines(repo.blobs, manifest.catalog, manifest.bytes,
                                         repo.layout.catalog_cut_key(), "test")
    assert [line.line for line in got.lines()] == [line.line for line in from_repo]
    assert list(got.leaves()) == chunk_list(repo, manifest) and len(list(got.leaves())) > 3
    assert list(got.runs()) == list(repo.reader.reusable_runs(manifest))


def _record(tmp_path, lines: list[bytes], leaves: list[tuple[str, int]], stream_bytes: int,
            members_end: int, name: str = "r") -> str:
    path = str(tmp_path / "cache" / name)
    writer = RecordWriter(path, "v")
    for line in lines:
        writer.line(line)
    for blob_id, length in leaves:
        writer.leaf(blob_id, length)
    writer.stream_ends(stream_bytes, members_end)
    writer.publish("v@20260101T000000Z-0000")
    return path


LINE = catalogtree.to_line(CatalogEntry("a", "file", 5, 0o644, 0, 0, 1, "", 0, 512, "0" * 64,
                                        (7, 10 ** 9, 10 ** 9)), None)


def test_a_record_round_trips_and_none_is_none(tmp_path):
    path = _record(tmp_path, [LINE], [("ab" * 32, 1024)], 2048, 1024)
    got = open_record(path)
    lines = list(got.lines())
    assert [(x.at, x.hdr, x.end, x.size, x.key) for x in lines] == [(0, 512, 1024, 5, (b"a",))]
    assert list(got.leaves()) == [("ab" * 32, 1024)]
    assert [run.blobs for run in got.runs()] == [(("ab" * 32, 1024),)]
    assert open_record(str(tmp_path / "cache" / "none")) is None


def _damaged(path: str, at: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[at] ^= 0x55
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["a line", "a leaf", "the header", "its length",
                                    "truncated", "empty", "not a record"])
def test_a_damaged_record_is_refused_whole(tmp_path, damage):
    path = _record(tmp_path, [LINE] * 3, [("cd" * 32, 3072)], 4096, 3072)
    size = os.path.getsize(path)
    (length,) = struct.unpack("<I", open(path, "rb").read()[-4:])
    header = json.loads(open(path, "rb").read()[-4 - length:-4])
    if damage == "a line":
        _damaged(path, 20)
    elif damage == "a leaf":
        _damaged(path, header["lines_end"] + 12)
    elif damage == "the header":
        _damaged(path, size - 4 - length + 5)
    elif damage == "its length":
        _damaged(path, size - 2)
    elif damage == "truncated":
        os.truncate(path, size - 10)
    elif damage == "empty":
        os.truncate(path, 0)
    else:
        open(path, "wb").write(b"#!/bin/sh\n" * 30)
    with pytest.raises(IntegrityError, match="parent record"):
        open_record(path)


def test_a_crafted_record_is_checked_line_by_line_as_a_parent_catalogue(tmp_path):
    """Digests that match do not make a record true: its lines go through parent_line,
    which refuses one whose member would end past the stream."""
    too_long = LINE.replace(b'"hdr":512', b'"hdr":1048576')
    got = open_record(_record(tmp_path, [too_long], [("ab" * 32, 1024)], 2048, 1024))
    with pytest.raises(IntegrityError, match="not a valid entry"):
        list(got.runs())


def test_a_record_replaced_after_it_was_checked_is_not_read(tmp_path):
    path = _record(tmp_path, [LINE], [("ab" * 32, 1024)], 2048, 1024)
    got = open_record(path)
    _record(tmp_path, [LINE], [("ef" * 32, 1024)], 2048, 1024)     # a newer backup's
    with pytest.raises(IntegrityError, match="changed since it was checked"):
        list(got.runs())


def test_a_record_removed_after_it_was_checked_is_damage_not_a_crash(tmp_path):
    """`rm -rf` of the cache directory during a backup (docs/security.md says it is safe):
    the files cache sees damage (it stops taking files and says why), never an OSError."""
    path = _record(tmp_path, [LINE], [("ab" * 32, 1024)], 2048, 1024)
    got = open_record(path)
    os.unlink(path)
    with pytest.raises(IntegrityError, match="removed since it was checked"):
        list(got.runs())


def test_a_discarded_record_leaves_nothing(tmp_path):
    path = str(tmp_path / "cache" / "r")
    writer = RecordWriter(path, "v")
    writer.line(LINE)
    writer.discard()
    assert os.listdir(tmp_path / "cache") == []
    with pytest.raises(ValueError, match="before the stream ended"):
        RecordWriter(path, "v").publish("v@20260101T000000Z-0000")


def test_a_writer_that_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    """The record's second file failing (a full disk, say) takes the first one with it."""
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(parentrecord.tempfile, "TemporaryFile", no_space)
    with pytest.raises(OSError, match="No space"):
        RecordWriter(str(tmp_path / "cache" / "r"), "v")
    assert os.listdir(tmp_path / "cache") == []


def test_records_are_kept_per_repository_volume_and_host(tmp_path, monkeypatch):
    root = str(tmp_path)
    paths = {record_path(root, repo, volume, host) for repo in ("r1", "r2")
             for volume in ("a", "b") for host in ("h1", "h2")}
    assert len(paths) == 8
    monkeypatch.setenv(parentrecord.CACHE_ENV, "/srv/cache")
    assert parentrecord.cache_root() == "/srv/cache"
    monkeypatch.delenv(parentrecord.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert parentrecord.cache_root() == "/x/volbackup"


def test_temporary_records_of_killed_backups_are_removed_once_old(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old, fresh = cache / ".record-killed", cache / ".record-running"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    week = parentrecord.ABANDONED + 60
    os.utime(old, (os.path.getmtime(old) - week,) * 2)
    writer = RecordWriter(str(cache / "r"), "v")
    assert not old.exists() and fresh.exists()
    writer.discard()
    assert sorted(p.name for p in cache.iterdir()) == [".record-running"]


def test_records_not_replaced_for_45_days_are_removed_but_the_one_being_written(tmp_path):
    """A host that backs up a new volume each day must not keep every record for ever."""
    stale = parentrecord.STALE + 60
    gone, kept, own = (_record(tmp_path, [LINE], [("ab" * 32, 1024)], 2048, 1024, name)
                       for name in ("a" * 32, "b" * 32, "c" * 32))
    other = tmp_path / "cache" / "notes.txt"        # not a record's name: left alone
    other.write_bytes(b"x")
    for path in (gone, own, other):
        os.utime(path, (os.path.getmtime(path) - stale,) * 2)
    writer = RecordWriter(own, "v")
    assert not os.path.exists(gone)
    assert os.path.exists(kept) and os.path.exists(own) and other.exists()
    writer.discard()
    assert open_record(own) is not None and open_record(kept) is not None


def test_a_record_larger_than_its_batches_round_trips(tmp_path):
    """Lines and leaves reach zstd in batches of about 1 MiB: many batches, nothing lost."""
    n = 20_000                          # 3.6 MB of lines, 720 KB of leaves
    leaves = [(f"{i:064x}", 1024) for i in range(n)]
    got = open_record(_record(tmp_path, [LINE] * n, leaves, n * 1024, n * 1024))
    assert [run.blobs[0] for run in got.runs()] == leaves
    assert sum(1 for _ in got.lines()) == n

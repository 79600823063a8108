"""Snapshot ids, layout, resolving refs, and broken manifests, on a real LocalBackend."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from tests.unit.manifests import BROKEN, make_manifest, manifest_json
from volbackup.errors import NotFound, RepositoryError
from volbackup.repo.backends import LocalBackend
from volbackup.repo.repository import Repository, looks_like_id, new_snapshot_id, split_id

OLD = "pgdata@20260101T000000Z-aaaa"
MID = "pgdata@20260301T000000Z-0001"
NEW = "pgdata@20260201T000000Z-ffff"     # the newest by `created`, not by its stamp


@pytest.fixture
def repo(tmp_path):
    return Repository(LocalBackend(tmp_path))


@pytest.fixture
def three(repo):
    """Three snapshots of pgdata whose stamps do not sort like their `created`."""
    for sid, created in ((OLD, "2026-01-01T00:00:00.000Z"), (MID, "2026-02-01T00:00:00.000Z"),
                         (NEW, "2026-03-01T00:00:00.000Z")):
        repo.commit(make_manifest(sid, created))
    repo.commit(make_manifest("other@20270101T000000Z-beef", "2027-01-01T00:00:00.000Z"))
    return repo


def put_raw(repo, snapshot_id: str, raw: str | bytes) -> str:
    key = Repository.manifest_key(snapshot_id)
    repo.backend.write_bytes(key, raw.encode() if isinstance(raw, str) else raw)
    return key


# -- ids


def test_id_round_trip():
    created = datetime(2026, 11, 29, 3, 15, 0, tzinfo=timezone.utc)
    ids = {new_snapshot_id("my.vol_1-x", created) for _ in range(20)}
    assert len(ids) > 1                          # the random suffix tells them apart
    for sid in ids:
        volume, stamp = split_id(sid)
        assert volume == "my.vol_1-x" and stamp.startswith("20261129T031500Z-")
        assert looks_like_id(sid)
        assert Repository.manifest_key(sid) == f"snapshots/my.vol_1-x/{stamp}.json"
        assert Repository.archive_name(sid) == f"{stamp}.tar.zst"


@pytest.mark.parametrize("bad", [
    "pgdata", "pgdata@", "@20260101T000000Z-abcd", "pgdata@20260101T000000Z",
    "pgdata@20260101T000000Z-abc", "pgdata@20260101T000000Z-ABCD", "pgdata@20260101T000000Z-" + "a" * 33,
    "pgdata@2026-01-01T00:00:00Z-abcd", "pgdata@20260101T000000-abcd", "-pgdata@20260101T000000Z-abcd",
    "a/b@20260101T000000Z-abcd", "../x@20260101T000000Z-abcd", "pgdata@20260101T000000Z-abcd/../x",
    "pg@data@20260101T000000Z-abcd", " pgdata@20260101T000000Z-abcd",
])
def test_malformed_ids_are_rejected(bad):
    with pytest.raises(NotFound, match="is not a snapshot id"):
        split_id(bad)
    with pytest.raises(NotFound):
        Repository.manifest_key(bad)
def test_id_with_trailing_newline_is_rejected():
    with pytest.raises(NotFound):
        split_id("pgdata@20260101T000000Z-abcd\n")


# -- resolving


def test_resolve_by_id_and_by_volume_name(three):
    assert three.resolve(OLD).snapshot == OLD
    assert three.load(MID).created == "2026-02-01T00:00:00.000Z"
    assert three.resolve("pgdata").snapshot == NEW
    assert three.newest("pgdata").snapshot == NEW
    assert three.resolve("other").snapshot == "other@20270101T000000Z-beef"


@pytest.mark.parametrize("ref", ["pgdata@20990101T000000Z-abcd", "nosuchvolume", "bad/name",
                                 "", "pgdata@garbage"])
def test_unknown_refs_are_not_found(three, ref):
    with pytest.raises(NotFound):
        three.resolve(ref)


def test_manifest_claiming_another_id_is_refused(repo):
    put_raw(repo, OLD, make_manifest(MID).to_json())
    with pytest.raises(RepositoryError, match="claims to be snapshot"):
        repo.load(OLD)


# -- listing and broken manifests


def test_snapshots_lists_oldest_first(three):
    assert [m.snapshot for m in three.snapshots("pgdata").snapshots] == [OLD, MID, NEW]
    assert [m.volume for m in three.snapshots().snapshots] == ["pgdata"] * 3 + ["other"]
    assert three.snapshots("pgdata").problems == []
    assert three.volumes() == ["other", "pgdata"]


def test_snapshots_reports_broken_ones(three):
    keys = [put_raw(three, f"pgdata@2026050{i}T000000Z-000{i}", raw)
            for i, (_, raw, _) in enumerate(BROKEN[:3])]
    listing = three.snapshots("pgdata")
    assert [m.snapshot for m in listing.snapshots] == [OLD, MID, NEW]
    assert len(listing.problems) == 3
    for key, problem in zip(keys, listing.problems):
        assert key in str(problem)
    assert three.snapshots("other").problems == []


@pytest.mark.parametrize("raw,words", [(raw, words) for _, raw, words in BROKEN],
                         ids=[name for name, _, _ in BROKEN])
def test_loading_a_broken_manifest(repo, raw, words):
    key = put_raw(repo, OLD, raw)
    with pytest.raises(RepositoryError) as caught:
        repo.load(OLD)
    assert key in str(caught.value) and words in str(caught.value)


def test_newest_refuses_when_the_newest_manifest_is_broken(three):
    key = put_raw(three, "pgdata@20270101T000000Z-dead", manifest_json(level="high"))
    for call in (three.newest, three.resolve):
        with pytest.raises(RepositoryError, match="name a snapshot id explicitly") as caught:
            call("pgdata")
        assert key in str(caught.value)
    assert three.resolve(OLD).snapshot == OLD       # an explicit id still works
    assert three.resolve("other").volume == "other"


def test_archive_without_manifest_is_never_a_snapshot(repo):
    with repo.snapshot_writer(OLD) as writer:
        writer._out.write(b"orphan")
    assert repo.snapshots().snapshots == [] and repo.snapshots("pgdata").problems == []
    with pytest.raises(NotFound):
        repo.resolve("pgdata")
    with pytest.raises(NotFound):
        repo.resolve(OLD)


def test_orphan_archive_volume_is_not_among_volumes(three):
    with three.snapshot_writer("orphan@20260101T000000Z-abcd") as writer:
        writer._out.write(b"orphan")
    assert three.volumes() == ["other", "pgdata"]


# -- archives


def test_archive_written_and_read_through_the_manifest(repo):
    manifest = make_manifest(OLD)
    with repo.snapshot_writer(OLD) as writer:
        assert writer.archive == "20260101T000000Z-aaaa.tar.zst"
        writer._out.write(b"archive bytes")
    repo.commit(manifest)
    loaded = repo.load(OLD)
    assert repo.archive_key(loaded) == "snapshots/pgdata/20260101T000000Z-aaaa.tar.zst"
    with repo.open_archive(loaded) as chunks:
        assert b"".join(chunks) == b"archive bytes"


def test_missing_archive_is_a_repository_error(repo):
    repo.commit(make_manifest(OLD))
    with pytest.raises(RepositoryError, match="archive .*20260101T000000Z-aaaa.tar.zst .* missing"):
        with repo.open_archive(repo.load(OLD)):
            pass
def test_manifest_volume_that_is_a_path_is_a_repository_error(repo):
    put_raw(repo, OLD, make_manifest(OLD, volume="../../elsewhere").to_json())
    with pytest.raises(RepositoryError):
        with repo.open_archive(repo.load(OLD)):
            pass


def test_open_checks_the_directory(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        Repository.open(str(tmp_path / "none"))
    assert Repository.open(str(tmp_path), writable=True).describe() == str(tmp_path)


# -- untrusted entries: each bad one is a problem of its own volume, never a crash or a skip


def test_manifest_under_another_snapshots_key_is_a_problem(three):
    """A manifest copied to another key would make prune delete the snapshot it names."""
    key = put_raw(three, "pgdata@20260601T000000Z-abcd", make_manifest(OLD).to_json())
    listing = three.snapshots()
    assert [m.snapshot for m in listing.snapshots].count(OLD) == 1
    [problem] = listing.problems
    assert problem.volume == "pgdata" and key in str(problem) and "claims to be" in str(problem)


def test_entries_that_are_not_files_are_problems_of_their_volume(three, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text(make_manifest("etc@20260101T000000Z-aaaa").to_json())
    os.symlink(outside, three.backend.root / "snapshots" / "etc")
    os.symlink("/dev/zero", three.backend.root / "snapshots" / "other" / "20270202T000000Z-0000.json")
    os.mkfifo(three.backend.root / "snapshots" / "pgdata" / "20270303T000000Z-0000.json")
    listing = three.snapshots()
    assert [m.snapshot for m in listing.snapshots] == [OLD, MID, NEW, "other@20270101T000000Z-beef"]
    problems = {p.volume: str(p) for p in listing.problems}
    assert "snapshots/etc " in problems["etc"] and "symlink" in problems["etc"]
    assert "20270202T000000Z-0000.json" in problems["other"] and "symlink" in problems["other"]
    assert "FIFO" in problems["pgdata"]
    assert three.volumes() == ["etc", "other", "pgdata"]      # restore --all reports all three
    assert three.volumes(host="host1") == ["etc", "other", "pgdata"]
    for volume in ("etc", "other", "pgdata"):
        with pytest.raises(RepositoryError, match="name a snapshot id explicitly"):
            three.resolve(volume)
    with pytest.raises(RepositoryError, match="symlink"):
        three.load("other@20270202T000000Z-0000")


def test_snapshots_directory_that_is_a_symlink_fails_the_listing(repo, tmp_path):
    os.symlink(tmp_path, repo.backend.root / "snapshots")
    with pytest.raises(RepositoryError, match="snapshots .* is a symlink"):
        repo.snapshots()


def test_bad_created_sorts_nothing_and_mixed_precision_sorts_by_time(repo):
    repo.commit(make_manifest(OLD, "2026-01-01T00:00:01Z"))
    repo.commit(make_manifest(MID, "2026-01-01T00:00:00.500Z"))
    put_raw(repo, NEW, manifest_json(snapshot=NEW, created="2026-13-45T00:00:00Z"))
    listing = repo.snapshots()
    assert [m.snapshot for m in listing.snapshots] == [MID, OLD]
    assert "invalid created time" in str(listing.problems[0])


# -- the repository owns its storage


def test_ops_and_cli_never_reach_past_the_repository():
    """prune, run, restore and unlock used `repo.backend` for locks, orphans and temp files:
    a chunked layout would have had to change them all. Tests may still use backends."""
    import pathlib
    import re

    import volbackup

    root = pathlib.Path(volbackup.__file__).parent
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}"
             for folder in ("ops", "cli") for path in sorted((root / folder).glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\.backend\b|volbackup\.repo\.backends|import .*\bbackends\b", line)]
    assert found == []


def test_orphans_are_archives_named_by_volbackup_without_a_manifest(three):
    backend = three.backend
    for key in ("snapshots/pgdata/20261120T000000Z-beef.tar.zst",       # an orphan
                "snapshots/pgdata/20261120T000000Zbeef.tar.zst",        # not a stamp
                "snapshots/pgdata/20261320T000000Z-beef.tar.zst",       # month 13
                "snapshots/pgdata/notes.tar.zst",
                "snapshots/pgdata/sub/20261120T000000Z-beef.tar.zst",   # not a volume's
                f"snapshots/pgdata/{three.archive_name(OLD)}"):           # has a manifest
        backend.write_bytes(key, b"x" * 5)
    orphan, = three.orphans()
    assert (orphan.key, orphan.volume, orphan.size) == (
        "snapshots/pgdata/20261120T000000Z-beef.tar.zst", "pgdata", 5)
    assert orphan.started == datetime(2026, 11, 20, tzinfo=timezone.utc)
    three.remove_orphan(orphan)
    assert three.orphans() == [] and len(three.snapshots().snapshots) == 4


def test_uploads_and_temp_files_are_one_kind_of_unfinished_write(tmp_path):
    from volbackup.repo.backends import Leftover, UnfinishedUploads

    started = datetime(2026, 11, 29, tzinfo=timezone.utc)
    upload = Leftover("snapshots/v/20261129T000000Z-0000.tar.zst", "upload-1", started, 7)
    aborted = []

    class BothKinds(LocalBackend, UnfinishedUploads):  # a store with uploads and temp files
        def leftovers(self):
            return [upload]

        def remove_leftover(self, leftover):
            aborted.append(leftover)

    repo = Repository(BothKinds(tmp_path))
    (tmp_path / "snapshots" / "v").mkdir(parents=True)
    temp = tmp_path / "snapshots" / "v" / ".20261129T000000Z-0001.json.tmp-123-ab12"
    temp.write_bytes(b"abc")
    first, second = repo.unfinished_writes()
    assert (first.kind, first.key, first.since, first.size, first.upload_id, first.volume) == (
        "upload", upload.key, started, 7, "upload-1", "v")
    assert (second.kind, second.key, second.size, second.pid, second.volume) == (
        "temp", "snapshots/v/" + temp.name, 3, 123, "v")
    repo.remove_unfinished(first)
    repo.remove_unfinished(second)
    assert aborted == [upload] and not temp.exists()


def test_locks_through_the_repository(repo):
    from volbackup.repo import locking

    with repo.lock(locking.EXCLUSIVE, 0, "prune") as held:
        assert [lock.key for lock in repo.locks()] == [held.info.key]
        assert repo.unlock() == [(repo.locks()[0], None)]  # live: kept
    assert repo.locks() == []
    with repo.lock(locking.SHARED, 0):
        assert [why for _, why in repo.unlock(remove_all=True)] == ["removed with --all"]

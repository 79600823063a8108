"""`volbackup copy` without an engine: repositories built with tests/unit/chunkrepos.py on real
LocalBackends and on S3 (moto's server), copied through the ops and through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from tests.conftest import run_cli
from tests.moto_s3 import s3_bucket, s3_client, s3_endpoint  # noqa: F401 - fixtures
from tests.unit.chunkrepos import (backup, chunk_files, chunk_list, chunked_repo, restored,
                                   volume_tar)
from volbackup.errors import (IntegrityError, KeyProblem, NotFound, PartialFailure,
                              TargetNotEmpty)
from volbackup.ops import copy as ops
from volbackup.ops.snapshots import verify
from volbackup.repo.chunkstore import chunk_key
from volbackup.repo.config import PACKED, RepoConfig
from volbackup.repo.repository import Repository
from volbackup.repo.sealing import Secrets

ALL = ops.Choice([], all=True)


def archive_repo(path: Path) -> Repository:
    """An archive-layout repository: one that holds snapshots (a copy refuses a target
    that is neither initialised nor holds any), here one of a volume of its own."""
    path.mkdir(exist_ok=True)
    repo = Repository.open(str(path), writable=True)
    backup(repo, volume_tar(seed=99, size=1000), volume="its-own")
    return repo


def manifests(repo: Repository) -> dict[str, dict]:
    return {m.snapshot: m.to_dict() for m in repo.snapshots().snapshots}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def source(tmp_path):
    """A chunked repository with two snapshots of volume pgdata (one byte apart) and one
    of volume cache."""
    repo = chunked_repo(tmp_path / "source")
    first = backup(repo, volume_tar(1))
    second = backup(repo, volume_tar(1, edit_at=300_000))
    other = backup(repo, volume_tar(2, size=200_000), volume="cache")
    return repo, [first, second, other]


def test_chunked_to_chunked_sends_each_chunk_once_and_keeps_every_field(tmp_path, source):
    repo, made = source
    target = chunked_repo(tmp_path / "target")
    result = ops.copy(repo, target, ALL)
    by_id = {o.snapshot: o for o in result.snapshots}
    assert [o.status for o in result.snapshots] == ["copied"] * 3
    assert all(o.how == "chunks" for o in result.snapshots)
    first, second = by_id[made[0].snapshot], by_id[made[1].snapshot]
    assert first.chunks_sent == first.chunks == len(chunk_list(repo, made[0])) \
        + made[0].catalog["chunks"]          # the data's and the catalogue's
    assert first.objects_written == first.chunks + 3   # and two lists, one manifest
    assert 0 < second.chunks_sent <= 4       # one byte changed: around it, and the catalogue
    assert chunk_files(tmp_path / "target") == chunk_files(tmp_path / "source")
    assert manifests(target) == manifests(repo)   # ids and every field, as they were
    for manifest in made:
        assert restored(target, target.load(manifest.snapshot)) == restored(repo, manifest)
        assert manifest.catalog and list(target.catalog(manifest)) == list(repo.catalog(manifest))
        assert (tmp_path / "target" / target.catalog_key(manifest.snapshot, True)).exists()
    assert_verifies(target)


def assert_verifies(repo: Repository) -> None:
    """`verify --all`: data, chunk lists and catalogues (read back, and recomputed)."""
    checks = verify(repo, [], True).snapshots
    assert checks and [c.message for c in checks if c.failed] == []


def test_a_second_copy_writes_nothing(tmp_path, source):
    repo, _ = source
    target = chunked_repo(tmp_path / "target")
    ops.copy(repo, target, ALL)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "target").rglob("*") if p.is_file()}
    again = ops.copy(repo, target, ALL)
    assert [o.status for o in again.snapshots] == ["skipped"] * 3
    assert sum(o.objects_written + o.chunks_sent for o in again.snapshots) == 0
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "target").rglob("*") if p.is_file()}
    assert after == before


def test_only_what_the_target_lacks_is_sent(tmp_path, source):
    repo, made = source
    target = chunked_repo(tmp_path / "target")
    ops.copy(repo, target, ops.Choice([made[0].snapshot]))
    result = ops.copy(repo, target, ops.Choice([made[1].snapshot]))
    assert 0 < result.snapshots[0].chunks_sent <= 4    # around the byte, and the catalogue's
    assert result.snapshots[0].objects_written == result.snapshots[0].chunks_sent + 3


def test_chunked_to_packed_and_back_sends_chunks_as_stored(tmp_path, source):
    """A plain chunked and a plain packed repository store a chunk alike (its zstd frame,
    under its sha256): copy moves chunks as they are, both ways, and a second copy or a
    copy of one snapshot more sends only what the target lacks."""
    repo, made = source
    packed = chunked_repo(tmp_path / "packed", layout=PACKED)
    assert [o.how for o in ops.copy(repo, packed, ops.Choice([made[0].snapshot])).snapshots] \
        == ["chunks"]
    rest = ops.copy(repo, packed, ALL).snapshots
    assert sorted(o.status for o in rest) == ["copied", "copied", "skipped"]
    assert 0 < next(o for o in rest if o.snapshot == made[1].snapshot).chunks_sent <= 4
    assert not (tmp_path / "packed" / "chunks").exists()
    assert len(list((tmp_path / "packed" / "packs").rglob("*/*"))) < len(chunk_files(
        tmp_path / "source")) / 20
    assert manifests(packed) == manifests(repo)
    assert_verifies(packed)
    back = chunked_repo(tmp_path / "back")
    assert {o.how for o in ops.copy(packed, back, ALL).snapshots} == {"chunks"}
    assert chunk_files(tmp_path / "back") == chunk_files(tmp_path / "source")
    for manifest in made:
        assert restored(back, back.load(manifest.snapshot)) == restored(repo, manifest)


def test_archive_to_chunked_and_back(tmp_path, source):
    repo, made = source
    archives = archive_repo(tmp_path / "archives")
    to_archives = ops.copy(repo, archives, ALL)
    assert {o.how for o in to_archives.snapshots} == {"stream"}
    assert {m.layout for m in archives.snapshots().snapshots} == {"archive"}
    assert list(files_under(tmp_path / "archives")) and not (tmp_path / "archives/chunks").exists()
    chunked = chunked_repo(tmp_path / "chunked")
    back = ops.copy(archives, chunked, ops.Choice([m.snapshot for m in made]))
    assert [o.status for o in back.snapshots] == ["copied"] * 3
    for manifest in made:
        for repository in (archives, chunked):
            copied = repository.load(manifest.snapshot)
            assert restored(repository, copied) == restored(repo, manifest)
            for name in ("volume", "created", "host", "bytes", "entries", "labels", "level",
                         "driver", "seconds", "tool_version"):
                assert getattr(copied, name) == getattr(manifest, name), name
        assert chunked.load(manifest.snapshot).tar_sha256 == manifest.tar_sha256
        assert list(archives.catalog(archives.load(manifest.snapshot))) == \
            list(repo.catalog(manifest))
    assert_verifies(archives)
    assert_verifies(chunked)
    assert [o.status for o in ops.copy(archives, chunked, ops.Choice(
        [m.snapshot for m in made])).snapshots] == ["skipped"] * 3


def test_local_to_s3_and_back(tmp_path, source, s3_bucket):  # noqa: F811 - a fixture
    repo, made = source
    url = f"s3://{s3_bucket}/copy"
    bucket = Repository.init(url, config=RepoConfig.new(avg_size=4096))
    first = ops.copy(repo, bucket, ALL)
    assert sum(o.chunks_sent for o in first.snapshots) == len(chunk_files(tmp_path / "source"))
    assert sum(o.objects_written for o in ops.copy(repo, bucket, ALL).snapshots) == 0
    back = chunked_repo(tmp_path / "back")
    ops.copy(Repository.open(url), back, ops.Choice([], volumes=["pgdata"]))
    assert sorted(manifests(back)) == sorted(m.snapshot for m in made[:2])
    assert restored(back, back.load(made[1].snapshot)) == restored(repo, made[1])


def test_plain_to_encrypted_with_a_stock_age_identity(tmp_path, source):
    repo, made = source
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    key_file = tmp_path / "target.key"
    (tmp_path / "sealed").mkdir()
    Repository.init(str(tmp_path / "sealed"), config=RepoConfig.new(avg_size=4096),
                    encrypt_to=[recipient], key_file=str(key_file))
    writer = Repository.open(str(tmp_path / "sealed"), writable=True,
                             secrets=Secrets(key_file=str(key_file)))
    result = ops.copy(repo, writer, ALL)
    assert {o.how for o in result.snapshots} == {"stream"}
    assert [o.status for o in ops.copy(repo, writer, ALL).snapshots] == ["skipped"] * 3
    stored = b"".join(p.read_bytes() for p in (tmp_path / "sealed").rglob("*") if p.is_file())
    assert b"hello\n" not in stored and made[0].tar_sha256.encode() not in stored
    reader = Repository.open(str(tmp_path / "sealed"),
                             secrets=Secrets(str(key_file), str(identity)))
    for manifest in made:
        copied = reader.reveal(reader.load(manifest.snapshot))
        assert copied.tar_sha256 == manifest.tar_sha256 and copied.labels == manifest.labels
        assert restored(reader, copied) == restored(repo, manifest)
    # ... and out again: the encrypted repository is a source like any other
    plain = chunked_repo(tmp_path / "plain")
    with pytest.raises(TargetNotEmpty, match="--allow-plain-target"):
        ops.copy(reader, plain, ALL)
    assert not (tmp_path / "plain/snapshots").exists()
    ops.copy(reader, plain, ALL, allow_plain_target=True)
    assert restored(plain, plain.load(made[2].snapshot)) == restored(repo, made[2])


def test_an_encrypted_target_without_its_key_is_refused_before_anything_is_written(
        tmp_path, source):
    repo, _ = source
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    (tmp_path / "sealed").mkdir()
    Repository.init(str(tmp_path / "sealed"), encrypt_to=[recipient],
                    key_file=str(tmp_path / "k"))
    before = files_under(tmp_path / "sealed")
    with pytest.raises(KeyProblem, match="key"):
        ops.copy(repo, Repository.open(str(tmp_path / "sealed"), writable=True,
                                       secrets=Secrets()), ALL)
    assert files_under(tmp_path / "sealed") == before


def test_a_corrupt_source_chunk_fails_the_copy_and_commits_nothing(tmp_path, source):
    repo, made = source
    chunk_id, _ = chunk_list(repo, made[2])[5]
    path = tmp_path / "source" / chunk_key(chunk_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for target in (chunked_repo(tmp_path / "chunked"), archive_repo(tmp_path / "archives")):
        result = ops.copy(repo, target, ALL)
        statuses = {o.snapshot: o.status for o in result.snapshots}
        assert statuses == {made[0].snapshot: "copied", made[1].snapshot: "copied",
                            made[2].snapshot: "failed"}
        failed = [o for o in result.snapshots if o.failed][0]
        assert isinstance(failed.error, IntegrityError) and chunk_id in failed.message
        assert sorted(s for s in manifests(target) if not s.startswith("its-own@")) == \
            sorted(m.snapshot for m in made[:2])
        leftovers = [p.name for p in (Path(target.describe()) / "snapshots/cache").iterdir()]
        assert leftovers == []  # no list, no archive, no manifest: nothing half there
        with pytest.raises(PartialFailure, match="1 of 3 snapshots failed: cache"):
            result.raise_for_failures()


def test_a_source_list_that_is_not_its_manifests_copies_nothing(tmp_path, source):
    repo, made = source
    key = tmp_path / "source" / "snapshots" / "cache" / made[2].archive
    lines = key.read_bytes().splitlines(keepends=True)
    key.write_bytes(b"".join(lines[:-1]))  # a line dropped: every chunk still valid
    target = chunked_repo(tmp_path / "target")
    result = ops.copy(repo, target, ops.Choice(["cache"]))
    assert result.snapshots[0].failed and "manifest" in result.snapshots[0].message
    assert chunk_files(tmp_path / "target") == set()  # refused before any chunk moved


def test_a_different_snapshot_under_the_same_id_is_a_conflict(tmp_path, source):
    repo, made = source
    target = chunked_repo(tmp_path / "target")
    forged = replace(made[0], bytes=made[0].bytes + 1)
    target.commit(forged)
    result = ops.copy(repo, target, ops.Choice([made[0].snapshot]))
    assert isinstance(result.snapshots[0].error, TargetNotEmpty)
    assert "another snapshot with the id" in result.snapshots[0].message
    assert target.load(made[0].snapshot) == forged


def test_selection_by_volume_and_host(tmp_path, source):
    repo, made = source
    target = chunked_repo(tmp_path / "target")
    assert ops.copy(repo, target, ops.Choice(["pgdata"])).snapshots[0].snapshot == \
        made[1].snapshot  # a volume name: its newest
    with pytest.raises(NotFound, match="from host elsewhere"):
        ops.copy(repo, target, ops.Choice([], all=True, host="elsewhere"))
    with pytest.raises(NotFound):
        ops.copy(repo, target, ops.Choice(["pgdata@20200101T000000Z-abcd"]))
    result = ops.copy(repo, target, ops.Choice([], volumes=["cache"], host=made[0].host))
    assert [o.snapshot for o in result.snapshots] == [made[2].snapshot]


def test_the_same_repository_under_another_name_is_refused(tmp_path, source):
    os.symlink(tmp_path / "source", tmp_path / "alias")
    repo, _ = source
    for target in (str(tmp_path / "source"), str(tmp_path / "alias")):
        with pytest.raises(TargetNotEmpty, match="source repository"):
            ops.copy(repo, Repository.open(target, writable=True), ALL)
    assert len(repo.snapshots().snapshots) == 3 and repo.locks() == []


# -- through the command line: one-line errors, exit codes, nothing created


def test_cli_copy_and_its_bad_input(tmp_path, source):
    repo, made = source
    src = str(tmp_path / "source")
    chunked_repo(tmp_path / "target")
    dst = str(tmp_path / "target")
    done = run_cli("copy", "--all", "-r", src, "--to", dst, "--json")
    assert done.code == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["command"] == "copy" and len(data["snapshots"]) == 3
    assert {s["status"] for s in data["snapshots"]} == {"copied"}
    again = run_cli("copy", "--all", "-r", src, "--to", dst)
    assert again.code == 0 and again.stdout.count("skipped: already in") == 3

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root\n")
    (tmp_path / "empty").mkdir()
    inited = str(tmp_path / "inited")
    chunked_repo(tmp_path / "inited")
    cases = [
        (["copy", "pgdata@20200101T000000Z-abcd", "-r", src, "--to", inited],
         4, "no snapshot pgdata@20200101T000000Z-abcd"),
        (["copy", "--all", "-r", src, "--to", str(tmp_path / "empty")], 5,
         "is not a repository yet: make it with `volbackup init"),
        (["copy", "--all", "-r", src, "--to", str(tmp_path / "etc")], 5,
         "is not a volbackup repository"),
        (["copy", "--all", "-r", src, "--to", str(tmp_path / "missing")], 5, "does not exist"),
        (["copy", "--all", "-r", src, "--to", src], 8, "is the source repository"),
        (["copy", "--all", "-r", src, "--to", inited, "--to-key-file",
          str(tmp_path / "nokey")], 17, "not encrypted"),
        (["copy", "-r", src, "--to", str(tmp_path / "empty")], 2, "--all"),
        (["copy", "pgdata", "--all", "-r", src, "--to", str(tmp_path / "empty")], 2, "not both"),
    ]
    for args, code, words in cases:
        run = run_cli(*args)
        assert run.code == code, (args, run.stderr)
        assert words in run.stderr and "Traceback" not in run.stderr, run.stderr
        errors = [line for line in run.stderr.splitlines() if "rror:" in line]
        assert len(errors) == 1 and words in errors[0]  # one line (usage: after click's)
    assert files_under(tmp_path / "empty") == set()
    assert files_under(tmp_path / "inited") == {"config"}
    assert files_under(tmp_path / "etc") == {"passwd"}
    assert not (tmp_path / "missing").exists()


def test_a_copy_killed_midway_is_completed_by_the_next(tmp_path):
    repo = chunked_repo(tmp_path / "source")
    big = backup(repo, volume_tar(7, size=24 << 20))
    target_root = tmp_path / "target"
    chunked_repo(target_root)
    args = [sys.executable, "-m", "volbackup", "copy", "--all", "-r", str(tmp_path / "source"),
            "--to", str(target_root)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # durable ones: a temp file counted here made 199 of "200" (a race of the test)
        while len({n for n in chunk_files(target_root) if not n.startswith(".")}) < 200:
            assert proc.poll() is None, "the copy ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    durable = {n for n in chunk_files(target_root) if not n.startswith(".")}  # not temp files
    target = Repository.open(str(target_root), writable=True)
    assert target.snapshots().snapshots == []        # killed: no snapshot
    result = ops.copy(repo, target, ALL)
    outcome = result.snapshots[0]
    assert outcome.status == "copied"
    assert 200 <= len(durable) < outcome.chunks
    assert outcome.chunks_sent == outcome.chunks - len(durable)  # the rest, not all again
    assert restored(target, target.load(big.snapshot)) == restored(repo, big)


def test_encrypted_to_encrypted_with_another_key(tmp_path, source):
    repo, made = source
    sides = {}
    for name in ("one", "two"):
        identity = tmp_path / f"{name}.id"
        subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        (tmp_path / name).mkdir()
        Repository.init(str(tmp_path / name), config=RepoConfig.new(avg_size=4096),
                        encrypt_to=[recipient], key_file=str(tmp_path / f"{name}.key"))
        sides[name] = Repository.open(str(tmp_path / name), writable=True, secrets=Secrets(
            str(tmp_path / f"{name}.key"), str(identity)))
    ops.copy(repo, sides["one"], ALL)
    result = ops.copy(sides["one"], sides["two"], ALL)
    assert [o.status for o in result.snapshots] == ["copied"] * 3
    assert sum(o.chunks_sent for o in result.snapshots) > 0
    assert chunk_files(tmp_path / "one").isdisjoint(chunk_files(tmp_path / "two"))  # own names
    two = sides["two"]
    for manifest in made:
        assert restored(two, two.reveal(two.load(manifest.snapshot))) == restored(repo, manifest)
    assert [o.status for o in ops.copy(sides["one"], two, ALL).snapshots] == ["skipped"] * 3
    # a manifest altered in the target (fields compared all equal): its MAC gives it away
    key = two.manifest_key(made[0].snapshot)
    data = json.loads(two.backend.read_bytes(key))
    data["seconds"] = data["seconds"] + 1
    two.backend.write_bytes(key, json.dumps(data).encode())
    again = ops.copy(sides["one"], two, ops.Choice([made[0].snapshot]))
    assert isinstance(again.snapshots[0].error, TargetNotEmpty)
    assert "not authentic" in again.snapshots[0].message


def test_an_unreadable_source_manifest_fails_alone(tmp_path, source):
    repo, made = source
    bad = tmp_path / "source/snapshots/broken/20261201T000000Z-beef.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    target = chunked_repo(tmp_path / "target")
    result = ops.copy(repo, target, ALL)
    failed = [o for o in result.snapshots if o.failed]
    assert [o.volume for o in failed] == ["broken"] and "not valid JSON" in failed[0].message
    assert sorted(manifests(target)) == sorted(m.snapshot for m in made)
    with pytest.raises(PartialFailure):
        result.raise_for_failures()
    only = ops.copy(repo, target, ops.Choice([], volumes=["cache"]))  # not its volume
    assert [o.status for o in only.snapshots] == ["skipped"]


def _plant_under(root: Path, chunk_id: str, length: int, how: str) -> None:
    """What a writer to the target (or damage) leaves under a chunk's name: another
    chunk's frame of the same length (`planted`), or the right frame with a byte flipped."""
    path = root / chunk_key(chunk_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "planted":
        path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(b"x" * length))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["planted", "damaged"])
def test_chunks_the_target_holds_with_other_bytes_are_replaced(tmp_path, source, how):
    """copy said `copied` for a snapshot whose chunks the target held under their names
    with other bytes, and the copy could not be restored; copying again changed nothing."""
    repo, made = source
    target = chunked_repo(tmp_path / "target")
    ids = chunk_list(repo, made[0])
    if how == "damaged":  # stored there right (by a backup, say), and damaged since
        for chunk_id, _ in ids[3:5]:
            path = tmp_path / "target" / chunk_key(chunk_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes((tmp_path / "source" / chunk_key(chunk_id)).read_bytes())
    for chunk_id, length in ids[3:5]:
        _plant_under(tmp_path / "target", chunk_id, length, how)
    result = ops.copy(repo, target, ops.Choice([made[0].snapshot, made[1].snapshot]))
    first, second = result.snapshots
    assert [first.status, second.status] == ["copied", "copied"]
    for manifest in made[:2]:
        assert restored(target, target.load(manifest.snapshot)) == restored(repo, manifest)
    assert_verifies(target)
    assert first.chunks_replaced == 2 and second.chunks_replaced == 0  # checked once


def test_a_stream_copy_into_a_plain_chunked_target_replaces_wrong_chunks(tmp_path, source):
    """The stream path (archive layout -> chunked) dedups against the target too."""
    repo, made = source
    archives = archive_repo(tmp_path / "archives")
    ops.copy(repo, archives, ops.Choice([made[0].snapshot]))
    target = chunked_repo(tmp_path / "target")
    target.backend.write_bytes("config", replace(  # the same cuts
        target.config, chunker=repo.config.chunker).to_json())
    target = Repository.open(str(tmp_path / "target"), writable=True)  # layout: from config
    for chunk_id, length in chunk_list(repo, made[0])[3:5]:
        _plant_under(tmp_path / "target", chunk_id, length, "planted")
    (outcome,) = ops.copy(archives, target, ops.Choice([made[0].snapshot])).snapshots
    assert outcome.status == "copied" and outcome.how == "stream", outcome.message
    assert restored(target, target.load(made[0].snapshot)) == restored(repo, made[0])
    assert_verifies(target)
    assert outcome.chunks_replaced == 2

"""Prune in a chunked repository: the sweep of chunks no chunk list names (real
LocalBackend, small chunks)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import run_cli
from tests.unit.chunkrepos import (backup, catalog_list, chunk_files, chunk_list, chunked_repo, list_key,
                                   restored, volume_tar)
from volbackup.errors import VolbackupError
from volbackup.ops.prune import PruneOptions, prune
from volbackup.repo.repository import new_snapshot_id
from volbackup.repo.retention import Rules

AGO = datetime.now(timezone.utc) - timedelta(days=3)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def repo(root):
    return chunked_repo(root)


@pytest.fixture
def three(repo):
    """pgdata: an old snapshot and a newer one with an edit; other: data of its own."""
    old = backup(repo, volume_tar(seed=1), when=AGO)
    new = backup(repo, volume_tar(seed=1, edit_at=300_000), when=AGO + timedelta(days=1))
    other = backup(repo, volume_tar(seed=2), volume="other", when=AGO)
    return old, new, other


def ids(repo, *manifests) -> set[str]:
    return {c for m in manifests for c, _ in chunk_list(repo, m) + catalog_list(repo, m)}


def keep_last(repo, **options):
    return prune(repo, PruneOptions(Rules(last=1), leftover_age=options.pop("leftover_age", 0),
                                    **options))


def test_removing_a_snapshot_removes_exactly_the_chunks_only_it_used(repo, root, three):
    old, new, other = three
    only_old = ids(repo, old) - ids(repo, new, other)
    assert 1 <= len(only_old) <= 3   # the edit changed a chunk or two
    before = chunk_files(root)
    result = keep_last(repo)
    assert [d.snapshot for d in result.removed] == [old.snapshot]
    assert chunk_files(root) == before - only_old
    sweep = result.chunks
    assert (sweep.stored, sweep.removed, sweep.failed, sweep.problems) == (
        len(before), len(only_old), 0, [])
    assert sweep.referenced == len(ids(repo, new, other))
    assert result.freed_bytes == sweep.removed_bytes > 0
    assert restored(repo, new) == volume_tar(seed=1, edit_at=300_000)
    assert restored(repo, other) == volume_tar(seed=2)


def test_a_prune_of_one_volume_never_takes_what_another_uses(repo, root):
    tar = volume_tar(seed=5)
    a = backup(repo, tar, volume="a", when=AGO)
    backup(repo, volume_tar(seed=6), volume="a", when=AGO + timedelta(days=1))
    b = backup(repo, tar, volume="b", when=AGO)
    before = chunk_files(root)
    result = keep_last(repo, volumes=["a"])
    assert [d.snapshot for d in result.removed] == [a.snapshot]
    assert result.chunks.removed == 0 and chunk_files(root) == before
    assert restored(repo, b) == tar


@pytest.mark.parametrize("damage", ["junk line", "symlink"])
def test_an_unreadable_chunk_list_anywhere_sweeps_nothing(repo, root, three, damage):
    old, new, other = three
    if damage == "junk line":
        repo.backend.write_bytes(list_key(other), b"this is not a chunk list\n")
    else:
        os.symlink("/etc/passwd", root / "snapshots" / "other" / "strange")
    before = chunk_files(root)
    result = keep_last(repo)
    assert [d.snapshot for d in result.removed] == [old.snapshot]  # snapshots still go
    assert chunk_files(root) == before                              # chunks do not
    assert result.chunks.removed == 0
    assert len(result.chunks.problems) == 1
    assert result.chunks.problems[0].startswith("no chunk swept")
    with pytest.raises(VolbackupError, match="problem"):
        result.raise_for_failures()


def test_prune_exits_non_zero_when_nothing_could_be_swept(repo, root, three):
    old, new, other = three
    repo.backend.write_bytes(list_key(other), b"junk")
    before = chunk_files(root)
    run = run_cli("prune", "-r", str(root), "--keep-last", "1", "--leftover-age", "0s")
    assert run.code == 1, run.stderr
    assert "no chunk swept: chunk list snapshots/other/" in run.stderr
    assert "Traceback" not in run.stderr
    assert chunk_files(root) == before


def test_young_unreferenced_chunks_are_kept(repo, root, three):
    old, new, other = three
    only_old = ids(repo, old) - ids(repo, new, other)
    before = chunk_files(root)
    result = keep_last(repo, leftover_age=3600)
    assert [d.snapshot for d in result.removed] == [old.snapshot]
    assert result.chunks.too_young == len(only_old) and result.chunks.removed == 0
    assert chunk_files(root) == before
    assert keep_last(repo).chunks.removed == len(only_old)   # once old enough
    assert chunk_files(root) == before - only_old


def test_dry_run_removes_nothing(repo, root, three):
    old, new, other = three
    only_old = ids(repo, old) - ids(repo, new, other)
    before = chunk_files(root)
    result = keep_last(repo, dry_run=True)
    assert result.chunks.removed == len(only_old) and result.chunks.removed_bytes > 0
    assert chunk_files(root) == before
    assert repo.load(old.snapshot) == old


def test_chunks_of_a_killed_backup_are_swept_by_the_next_prune(repo, root, three):
    """Killed after its chunks, before its chunk list appeared: nothing names them."""
    before = chunk_files(root)
    with pytest.raises(RuntimeError):
        with repo.snapshot_writer(new_snapshot_id("pgdata", AGO)) as writer:
            writer.pack([volume_tar(seed=9)], 3)
            raise RuntimeError("killed")
    dead = chunk_files(root) - before
    assert len(dead) > 50
    result = prune(repo, PruneOptions(Rules(last=5), leftover_age=0))
    assert result.removed == [] and result.chunks.removed == len(dead)
    assert chunk_files(root) == before


def test_chunks_of_a_backup_killed_before_its_manifest_are_swept_with_its_list(
        repo, root, three):
    before = chunk_files(root)
    snapshot = new_snapshot_id("pgdata", AGO)
    with repo.snapshot_writer(snapshot) as writer:
        writer.pack([volume_tar(seed=9)], 3)    # the list is written, the manifest never
    young = prune(repo, PruneOptions(Rules(last=5), leftover_age=5 * 86400))
    # a young orphan (chunk list and catalogue list) and its chunks
    assert [o.status for o in young.leftovers] == ["kept", "kept"]
    assert young.chunks.removed == 0 and len(chunk_files(root)) > len(before)
    dead = chunk_files(root) - before
    dry = prune(repo, PruneOptions(Rules(last=5), leftover_age=0, dry_run=True))
    assert dry.chunks.removed == len(dead) and chunk_files(root) - before == dead
    result = prune(repo, PruneOptions(Rules(last=5), leftover_age=0))
    assert [(o.kind, o.status) for o in result.leftovers] == [("archive", "removed")] * 2
    assert chunk_files(root) == before


def test_a_stray_file_under_chunks_is_reported_and_left_alone(repo, root, three):
    old, new, other = three
    stray = root / "chunks" / "ab" / "notes.txt"
    stray.parent.mkdir(exist_ok=True)
    stray.write_text("mine\n")
    only_old = ids(repo, old) - ids(repo, new, other)
    before = chunk_files(root)
    result = keep_last(repo)
    assert stray.read_text() == "mine\n"
    assert result.chunks.problems == [
        f"chunks/ab/notes.txt in repository {repo.describe()} is not a chunk (left alone)"]
    assert chunk_files(root) == before - only_old     # the rest is still swept

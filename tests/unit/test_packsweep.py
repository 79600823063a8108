"""Prune in a packed repository (volbackup.repo.packsweep): packs removed, repacked, the
index compacted, on a real LocalBackend; interrupted at its worst moments."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.unit.chunkrepos import backup, blob_count, chunked_repo, restored, volume_tar
from tests.unit.test_encryption import age_identity, opened
from volbackup.ops.prune import PruneOptions, prune
from volbackup.repo import packs
from volbackup.repo.backends import LocalBackend
from volbackup.repo.config import PACKED, RepoConfig
from volbackup.repo.crypto import PlainChunks
from volbackup.repo.packstore import PackedBlobStore
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules

AGO = datetime.now(timezone.utc) - timedelta(days=3)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def repo(root):
    return chunked_repo(root, seed=1, layout=PACKED)


def pack_names(root: Path) -> set[str]:
    return {p.name for p in (root / "packs").rglob("*/*")}


def index_names(root: Path) -> set[str]:
    return {p.name for p in (root / "index").iterdir()}


def keep_last(repo, **options):
    return prune(repo, PruneOptions(Rules(last=1), leftover_age=options.pop("leftover_age", 0),
                                    **options))


@pytest.fixture
def two(repo):
    """pgdata: an old snapshot of 3 MiB, and a newer one of other data."""
    old = backup(repo, volume_tar(seed=1, size=3 << 20), when=AGO)
    new = backup(repo, volume_tar(seed=2, size=3 << 20), when=AGO + timedelta(days=1))
    return old, new


def test_removing_a_snapshot_removes_its_packs_and_the_rest_restores(repo, root, two):
    old, new = two
    before = pack_names(root)
    result = keep_last(repo)
    sweep = result.chunks
    assert [d.snapshot for d in result.removed] == [old.snapshot]
    assert sweep.problems == [] and sweep.failed == 0
    assert sweep.packs == len(before) and sweep.packs_removed >= 2
    assert len(pack_names(root)) == (len(before) - sweep.packs_removed - sweep.packs_repacked
                                     + sweep.packs_written)
    assert sweep.removed >= blob_count(old) - 10 and result.freed_bytes == sweep.removed_bytes > 0
    assert len(index_names(root)) == sweep.index_written    # compacted: the old ones gone
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(new)) == volume_tar(seed=2, size=3 << 20)
    again = keep_last(reopened)
    assert (again.chunks.packs_removed, again.chunks.packs_repacked, again.chunks.removed) == (
        0, 0, 0)


def test_a_pack_partly_used_is_repacked_and_its_used_blobs_move(repo, root):
    # two snapshots whose blobs share packs: the older's go, the newer's stay
    shared = volume_tar(seed=3, size=1 << 20)
    old = backup(repo, volume_tar(seed=4, size=1 << 19), when=AGO)
    new = backup(repo, shared, when=AGO + timedelta(days=1))
    store = repo.blobs
    store.forget()
    packs_of_new = {loc.pack.hex for loc in (
        store.index().locations(bytes.fromhex(c)) for c, _ in _chunks(repo, new))
        for loc in loc}
    result = keep_last(repo)
    assert result.chunks.packs_repacked >= 1 and result.chunks.packs_written >= 1
    assert not packs_of_new <= pack_names(root)         # a pack the newer used was rewritten
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(new)) == shared
    assert old.snapshot not in {m.snapshot for m in reopened.snapshots().snapshots}


def _chunks(repo, manifest):
    from tests.unit.chunkrepos import chunk_list
    return chunk_list(repo, manifest)


def test_a_dry_run_changes_nothing_and_says_what_a_prune_does(repo, root, two):
    before = pack_names(root), index_names(root)
    dry = keep_last(repo, dry_run=True).chunks
    assert (pack_names(root), index_names(root)) == before
    real = keep_last(repo).chunks
    assert (dry.packs_removed, dry.packs_repacked, dry.removed, dry.removed_bytes) == (
        real.packs_removed, real.packs_repacked, real.removed, real.removed_bytes)


def test_young_packs_are_kept_whatever_they_hold(repo, root):
    backup(repo, volume_tar(seed=1), when=AGO)
    backup(repo, volume_tar(seed=2), when=AGO + timedelta(days=1))
    before = pack_names(root)
    sweep = keep_last(repo, leftover_age=3600).chunks        # every pack is minutes old
    assert sweep.too_young > 0 and sweep.packs_removed == sweep.packs_repacked == 0
    assert pack_names(root) == before


def test_a_pack_no_index_names_goes_once_old_enough(repo, root, two):
    store = PackedBlobStore(LocalBackend(str(root)), PlainChunks(), 1 << 20)
    builder = packs.PackBuilder(packs.DATA_PACK, PlainChunks().mac)
    builder.add(os.urandom(32), "data", b"left by a killed backup", 40, packs.NO_SLOT)
    pack_id, data = builder.finish()
    store.backend.write_bytes(packs.pack_key(pack_id), data)
    young = keep_last(repo, leftover_age=3600).chunks
    assert pack_id in pack_names(root) and young.unindexed_removed == 0
    old_enough = keep_last(Repository.open(str(root))).chunks
    assert pack_id not in pack_names(root) and old_enough.unindexed_removed == 1


def test_an_index_object_that_cannot_be_read_stops_the_sweep(repo, root, two):
    (root / "index" / ("f" * 64)).write_bytes(b"not an index")
    before = pack_names(root)
    sweep = keep_last(repo).chunks
    assert pack_names(root) == before and sweep.packs_removed == 0
    assert sweep.problems and "nothing swept" in sweep.problems[0]


def test_an_indexed_pack_that_is_missing_is_reported_and_the_rest_swept(repo, root, two):
    old, new = two
    store = repo.blobs
    store.forget()
    chunk = _chunks(repo, new)[0][0]
    gone = store.index().locations(bytes.fromhex(chunk))[0].pack.hex
    (root / "packs" / gone[:2] / gone).unlink()
    sweep = keep_last(repo).chunks
    assert any(gone in p and "missing" in p for p in sweep.problems)
    assert sweep.packs_removed >= 1


def test_a_prune_killed_after_writing_the_new_index_loses_nothing(repo, root, two,
                                                                   monkeypatch):
    old, new = two
    real = LocalBackend.delete_many

    def killed(self, keys):
        raise KeyboardInterrupt   # the kill: after the new index, before any old one goes

    monkeypatch.setattr(LocalBackend, "delete_many", killed)
    with pytest.raises(KeyboardInterrupt):
        keep_last(repo)
    monkeypatch.setattr(LocalBackend, "delete_many", real)
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(new)) == volume_tar(seed=2, size=3 << 20)
    sweep = keep_last(reopened).chunks
    assert sweep.problems == [] and sweep.packs_removed >= 1     # the next one finishes
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(new)) == volume_tar(seed=2, size=3 << 20)
    assert keep_last(reopened).chunks.packs_removed == 0


def test_an_encrypted_repository_is_repacked_with_the_key_alone(tmp_path):
    identity, key_file, root = tmp_path / "id.txt", tmp_path / "repo.key", tmp_path / "repo"
    root.mkdir()
    Repository.init(str(root), config=RepoConfig.new(avg_size=4096, layout=PACKED,
                                                     pack_size=1 << 20),
                    encrypt_to=[age_identity(identity)], key_file=str(key_file))
    backup(opened(root, key_file), volume_tar(seed=4, size=1 << 19), when=AGO)
    new = backup(opened(root, key_file), volume_tar(seed=3, size=1 << 20),
                 when=AGO + timedelta(days=1))
    result = keep_last(opened(root, key_file))          # no identity
    assert result.chunks.problems == [] and result.chunks.packs_removed \
        + result.chunks.packs_repacked >= 1
    reader = opened(root, key_file, identity)
    assert restored(reader, reader.reveal(reader.load(new.snapshot))) == volume_tar(
        seed=3, size=1 << 20)


def test_chunks_in_no_index_object_stop_the_sweep_so_their_unindexed_packs_stay(repo, root,
                                                                                 two):
    """An index object removed (or damaged) leaves its packs unindexed while snapshots
    still need them: prune must not take them for a killed backup's leftovers."""
    old, new = two
    for path in (root / "index").iterdir():
        path.unlink()
    before = pack_names(root)
    sweep = keep_last(repo).chunks
    assert pack_names(root) == before and sweep.unindexed_removed == 0
    # a tree snapshot's tree pieces are found through the index too: its walk stops first
    assert any("in no index object" in p or "(no index entry)" in p for p in sweep.problems)


def test_a_packs_directory_that_cannot_be_listed_stops_the_sweep(repo, root, two):
    """A pack there would pass for missing and be left out of the compacted index."""
    old, new = two
    fanout = next((root / "packs").iterdir())
    moved = fanout.with_name("real-" + fanout.name)
    fanout.rename(moved)
    fanout.symlink_to(moved.name)           # never followed: listed as a problem
    before_index = index_names(root)
    sweep = keep_last(repo).chunks
    assert index_names(root) == before_index and sweep.packs_removed == 0
    assert any(p.startswith("nothing swept") and "symlink" in p for p in sweep.problems)
    fanout.unlink()
    moved.rename(fanout)
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(new)) == volume_tar(seed=2, size=3 << 20)


def test_a_foreign_file_under_packs_is_reported_and_does_not_stop_the_sweep(repo, root, two):
    (root / "packs" / "ab").mkdir(exist_ok=True)
    (root / "packs" / "ab" / "notes.txt").write_text("not a pack")
    sweep = keep_last(repo).chunks
    assert sweep.packs_removed >= 1 and (root / "packs" / "ab" / "notes.txt").exists()
    assert any("notes.txt" in p and "not a pack" in p for p in sweep.problems)

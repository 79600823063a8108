"""`volbackup copy` between packed repositories: a tree snapshot goes by the blobs the
target lacks (volbackup.repo.packcopy) when both name blobs alike, on real LocalBackends;
CountingBackend says what was read from the source."""

from __future__ import annotations

import base64
import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.unit.chunkrepos import backup, chunked_repo, restored, volume_tar
from tests.unit.test_encryption import age_identity, opened
from tests.unit.test_tree_snapshots import small_files_tar
from volbackup.errors import IntegrityError
from volbackup.ops import copy as ops
from volbackup.ops.snapshots import verify, verify_packs
from volbackup.repo import crypto
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.backends.local import LocalBackend
from volbackup.repo.config import CONFIG_KEY, PACKED, RepoConfig
from volbackup.repo.repository import Repository, read_config
from volbackup.repo.sealing import Secrets, new_encryption
from volbackup.repo.trees import TreeRoot, walk

ALL = ops.Choice([], all=True)
SIZE = 2 << 20


def packed(root: Path) -> Repository:
    return chunked_repo(root, seed=1, layout=PACKED)


def counted(root: Path, secrets: Secrets | None = None) -> tuple[Repository, CountingBackend]:
    """The repository at `root` read through a CountingBackend."""
    backend = CountingBackend(LocalBackend(str(root)))
    return Repository(backend, read_config(backend), secrets or Secrets()), backend


def assert_sound(repo: Repository) -> None:
    """verify --all (data and catalogue read back, every blob checked) and --packs."""
    checks = verify(repo, [], True).snapshots
    assert checks and [c.message for c in checks if c.failed] == []
    assert verify_packs(repo).problems == []


def data_location(repo: Repository, manifest, index: int):
    """Where the data blob `index` of the snapshot lies: (pack file, location)."""
    blob_id, _ = list(walk(repo.blobs, TreeRoot.from_fields(manifest.data, "t")))[index]
    repo.blobs.forget()
    loc = repo.blobs.index().locations(bytes.fromhex(blob_id))[0]
    return Path(repo.describe()) / "packs" / loc.pack.hex[:2] / loc.pack.hex, loc, blob_id


def test_a_plain_copy_sends_only_the_blobs_the_target_lacks(tmp_path):
    source = packed(tmp_path / "source")
    first = backup(source, volume_tar(seed=1, size=SIZE))
    target = packed(tmp_path / "target")
    reading, counting = counted(tmp_path / "source")
    (one,) = ops.copy(reading, target, ops.Choice([first.snapshot])).snapshots
    assert one.status == "copied" and one.how == "blobs", one.message
    assert one.chunks_sent == one.chunks > 100 and one.chunks_present == 0
    assert one.bytes_sent > SIZE // 2 and one.objects_written >= 3   # packs, index, manifest
    first_read = counting.bytes["packs"]
    assert first_read >= one.bytes_sent * 0.9

    # A second snapshot of the volume, one byte changed: its trees and a blob or two differ.
    second = backup(source, volume_tar(seed=1, size=SIZE, edit_at=SIZE // 2))
    counting.reset()
    (two,) = ops.copy(reading, target, ops.Choice([second.snapshot])).snapshots
    assert two.how == "blobs" and two.status == "copied", two.message
    assert 0 < two.chunks_sent <= 8 and two.chunks_present >= one.chunks - 8
    assert two.bytes_present > SIZE - 64 * 1024
    # read from the source: the trees' pieces and the new blobs, not the snapshot
    assert counting.bytes["packs"] < first_read / 20, counting.bytes
    assert counting.bytes["packs"] <= two.bytes_sent + 64 * 1024
    for manifest in (first, second):
        copied = target.load(manifest.snapshot)
        assert copied.data == manifest.data and copied.tree     # the same blobs, by id
        assert restored(target, copied) == restored(source, manifest)
        assert list(target.catalog(copied)) == list(source.catalog(manifest))
    assert_sound(target)
    again = ops.copy(source, target, ALL).snapshots
    assert [o.status for o in again] == ["skipped", "skipped"]


def test_a_plain_catalogue_is_cut_again_with_the_targets_key(tmp_path):
    """Two plain repositories cut catalogue pieces with keys of their own (their config
    ids): the catalogue is read and cut again; a tree of many pieces crosses whole."""
    source = packed(tmp_path / "source")
    made = backup(source, small_files_tar(3000), volume="small")
    target = packed(tmp_path / "target")
    (out,) = ops.copy(source, target, ALL).snapshots
    assert out.how == "blobs", out.message
    copied = target.load(made.snapshot)
    assert copied.catalog["entries"] == made.catalog["entries"]
    assert copied.catalog["version"] == made.catalog["version"]
    assert copied.catalog["root"] != made.catalog["root"]     # other cuts
    assert list(target.catalog(copied)) == list(source.catalog(made))
    assert restored(target, copied) == restored(source, made)
    assert_sound(target)


def test_a_tampered_source_blob_fails_the_copy_and_commits_nothing(tmp_path):
    source = packed(tmp_path / "source")
    made = backup(source, volume_tar(seed=2, size=SIZE))
    other = backup(source, volume_tar(seed=3, size=200_000), volume="other")
    path, loc, blob_id = data_location(source, made, 10)
    good = path.read_bytes()
    data = bytearray(good)
    data[loc.offset + loc.stored // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target = packed(tmp_path / "target")
    result = ops.copy(source, target, ALL)
    by_id = {o.snapshot: o for o in result.snapshots}
    failed = by_id[made.snapshot]
    assert failed.status == "failed" and isinstance(failed.error, IntegrityError)
    assert blob_id in failed.message and "\n" not in failed.message
    assert failed.error.exit_code == 6
    assert by_id[other.snapshot].status == "copied"
    assert [m.snapshot for m in target.snapshots().snapshots] == [other.snapshot]
    assert not (tmp_path / "target" / "snapshots" / "pgdata").exists()
    # what the failed copy left (packs, perhaps indexed) trips neither verify nor a copy
    assert verify_packs(target).problems == []
    path.write_bytes(good)     # mended: the next copy completes the snapshot
    (fixed,) = ops.copy(source, target, ops.Choice([made.snapshot])).snapshots
    assert fixed.status == "copied", fixed.message
    assert restored(target, target.load(made.snapshot)) == restored(source, made)
    assert_sound(target)


def test_a_tampered_source_tree_piece_fails_the_copy(tmp_path):
    source = packed(tmp_path / "source")
    made = backup(source, small_files_tar(3000), volume="small")
    source.blobs.forget()
    root = bytes.fromhex(made.data["root"])
    loc = source.blobs.index().locations(root)[0]
    path = tmp_path / "source" / "packs" / loc.pack.hex[:2] / loc.pack.hex
    data = bytearray(path.read_bytes())
    data[loc.offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    target = packed(tmp_path / "target")
    (out,) = ops.copy(source, target, ALL).snapshots
    assert out.failed and isinstance(out.error, IntegrityError), out.message
    assert target.snapshots().snapshots == []


def test_a_blob_planted_in_a_plain_target_is_replaced(tmp_path):
    """The target holds a blob under its id with other bytes: read back, and replaced."""
    source = packed(tmp_path / "source")
    made = backup(source, volume_tar(seed=4, size=SIZE))
    target = packed(tmp_path / "target")
    ops.copy(source, target, ALL)
    path, loc, _ = data_location(target, made, 7)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.stored // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target.remove_manifest(made.snapshot)
    (out,) = ops.copy(source, target, ALL).snapshots
    assert out.status == "copied" and out.chunks_replaced == 1 and out.chunks_sent == 1
    assert restored(target, target.load(made.snapshot)) == restored(source, made)


def _same_key(source_root: Path, root: Path, recipients: list[str] | None = None) -> None:
    """A repository with the source's key: its config copied (a mirror started from it), or
    sealed again to other `recipients` with the same key."""
    root.mkdir()
    if recipients is None:
        shutil.copy(source_root / CONFIG_KEY, root / CONFIG_KEY)
        return
    config = RepoConfig.from_json((source_root / CONFIG_KEY).read_bytes(), "config")
    key = crypto.RepositoryKey.from_text((source_root.parent / "one.key").read_text(), "k")
    parsed = [crypto.parse_recipient(r) for r in recipients]
    sealed = base64.b64encode(crypto.encrypt(key.to_text().encode(), parsed)).decode()
    encryption = dataclasses.replace(config.encryption, recipients=tuple(recipients),
                                     sealed_key=sealed)
    unsigned = dataclasses.replace(config, encryption=encryption, mac=None)
    made = dataclasses.replace(unsigned, mac=key.mac(unsigned.signed_bytes()))
    (root / CONFIG_KEY).write_bytes(made.to_json())


@pytest.fixture
def sealed(tmp_path):
    """An encrypted packed repository `one` with two snapshots: (repository, made, its
    identity, its key file)."""
    identity, key_file = tmp_path / "one.id", tmp_path / "one.key"
    (tmp_path / "one").mkdir()
    Repository.init(str(tmp_path / "one"), config=RepoConfig.new(avg_size=4096, layout=PACKED),
                    encrypt_to=[age_identity(identity)], key_file=str(key_file))
    writer = opened(tmp_path / "one", key_file)
    made = [writer.load(m.snapshot) for m in (backup(writer, volume_tar(seed=5, size=SIZE)),
            backup(writer, small_files_tar(2000), volume="small"))]
    return opened(tmp_path / "one", key_file, identity), made, identity, key_file


def test_encrypted_with_the_same_key_and_recipients_copies_records_as_stored(tmp_path, sealed):
    source, made, identity, key_file = sealed
    _same_key(tmp_path / "one", tmp_path / "mirror")
    target = opened(tmp_path / "mirror", key_file, identity)
    out = ops.copy(source, target, ALL).snapshots
    assert [o.how for o in out] == ["blobs", "blobs"], [o.message for o in out]
    for manifest in made:
        copied = target.reveal(target.load(manifest.snapshot))
        assert copied.data == manifest.data and copied.catalog == manifest.catalog
        assert restored(target, copied) == restored(source, manifest)
    # records moved byte for byte: the target's data packs hold the source's sealed keys
    source_packs = {p.name for p in (tmp_path / "one" / "packs").rglob("*") if p.is_file()}
    target_slots = set()
    target.blobs.forget()
    for pack in target.blobs.index().packs:
        target_slots.update(target.blobs.trailer(pack.hex, pack.length).slots)
    source.blobs.forget()
    source_slots = set()
    for pack in source.blobs.index().packs:
        source_slots.update(source.blobs.trailer(pack.hex, pack.length).slots)
    assert source_packs and len(target_slots & source_slots) >= 1
    assert_sound(target)
    assert [o.status for o in ops.copy(source, target, ALL).snapshots] == ["skipped"] * 2


def test_encrypted_with_the_same_key_and_other_recipients_seals_again(tmp_path, sealed):
    source, made, identity, key_file = sealed
    other_identity = tmp_path / "other.id"
    _same_key(tmp_path / "one", tmp_path / "other", [age_identity(other_identity)])
    writer = opened(tmp_path / "other", key_file)
    out = ops.copy(source, writer, ALL).snapshots
    assert [o.how for o in out] == ["blobs", "blobs"], [o.message for o in out]
    target = opened(tmp_path / "other", key_file, other_identity)
    target.blobs.forget()
    source.blobs.forget()
    target_slots, source_slots = set(), set()
    for pack in target.blobs.index().packs:
        target_slots.update(target.blobs.trailer(pack.hex, pack.length).slots)
    for pack in source.blobs.index().packs:
        source_slots.update(source.blobs.trailer(pack.hex, pack.length).slots)
    assert target_slots and not target_slots & source_slots     # its own data keys
    for manifest in made:
        copied = target.reveal(target.load(manifest.snapshot))
        assert restored(target, copied) == restored(source, manifest)
    assert_sound(target)
    # the source's identity opens nothing there
    with pytest.raises(Exception):
        restored(opened(tmp_path / "other", key_file, identity), target.load(made[0].snapshot))


def test_encrypted_with_another_key_goes_through_the_stream(tmp_path, sealed):
    source, made, identity, key_file = sealed
    two_id, two_key = tmp_path / "two.id", tmp_path / "two.key"
    (tmp_path / "two").mkdir()
    Repository.init(str(tmp_path / "two"), config=RepoConfig.new(avg_size=4096, layout=PACKED),
                    encrypt_to=[age_identity(two_id)], key_file=str(two_key))
    out = ops.copy(source, opened(tmp_path / "two", two_key), ALL).snapshots
    assert [o.how for o in out] == ["stream", "stream"], [o.message for o in out]
    target = opened(tmp_path / "two", two_key, two_id)
    for manifest in made:
        copied = target.reveal(target.load(manifest.snapshot))
        assert copied.tree and restored(target, copied) == restored(source, manifest)
    assert_sound(target)


def test_plain_and_encrypted_packed_go_through_the_stream(tmp_path, sealed):
    source, made, _, _ = sealed
    plain = packed(tmp_path / "plain")
    out = ops.copy(source, plain, ALL, allow_plain_target=True).snapshots
    assert [o.how for o in out] == ["stream", "stream"], [o.message for o in out]
    assert restored(plain, plain.load(made[0].snapshot)) == restored(source, made[0])


@pytest.mark.parametrize("step", ["before-index", "before-manifest"])
def test_a_copy_killed_before_its_manifest_leaves_nothing_to_trip_over(tmp_path, monkeypatch,
                                                                      step):
    """Killed after its packs (before their index object), or after the index object
    (before the manifest): no snapshot; verify --packs finds no problem; the next copy
    completes it (reusing what was indexed); prune then keeps what the snapshot needs."""
    from volbackup.ops.prune import PruneOptions, prune
    from volbackup.repo import repository as repository_module
    from volbackup.repo.packstore import PackedBlobStore
    from volbackup.repo.retention import Rules

    source = packed(tmp_path / "source")
    made = backup(source, volume_tar(seed=6, size=SIZE))
    target = packed(tmp_path / "target")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt(step)

    if step == "before-index":
        monkeypatch.setattr(PackedBlobStore, "write_index", killed)
    else:
        monkeypatch.setattr(repository_module, "pause",
                            lambda name: killed() if name == step else None)
    with pytest.raises(KeyboardInterrupt):
        ops.copy(source, target, ALL)
    monkeypatch.undo()
    target = Repository.open(str(tmp_path / "target"), writable=True)
    assert target.snapshots().snapshots == [] and target.locks() == []
    check = verify_packs(target)
    assert check.problems == [] and check.packs >= 1
    assert check.unindexed == (check.packs if step == "before-index" else 0)
    (out,) = ops.copy(source, target, ALL).snapshots
    assert out.status == "copied", out.message
    if step == "before-manifest":
        assert out.chunks_sent == 0 and out.chunks_present == out.chunks   # all indexed
    else:
        assert out.chunks_sent == out.chunks
    pruned = prune(target, PruneOptions(Rules(last=1), leftover_age=0))
    assert pruned.chunks.problems == []
    assert restored(target, target.load(made.snapshot)) == restored(source, made)
    assert_sound(target)
    assert verify_packs(target).unindexed == 0       # the killed copy's packs: removed


def test_cli_copy_between_packed_repositories_says_what_was_sent_and_present(tmp_path):
    import json

    from tests.conftest import run_cli

    source = packed(tmp_path / "source")
    first = backup(source, volume_tar(seed=8, size=SIZE))
    second = backup(source, volume_tar(seed=8, size=SIZE, edit_at=1000))
    packed(tmp_path / "target")
    args = ("-r", str(tmp_path / "source"), "--to", str(tmp_path / "target"))
    done = run_cli("copy", first.snapshot, *args, "--json")
    assert done.code == 0, done.stderr
    (entry,) = json.loads(done.stdout)["snapshots"]
    assert entry["how"] == "blobs" and entry["chunks_sent"] == entry["chunks"]
    assert entry["chunks_present"] == 0 and entry["bytes_present"] == 0
    text = run_cli("copy", second.snapshot, *args)
    assert text.code == 0, text.stderr
    line = text.stdout.strip()
    assert line.startswith(f"{second.snapshot}: copied (") and " blobs sent, " in line
    sent, total = (int(n) for n in line.split("; ")[1].split(" blobs")[0].split(" of "))
    assert 0 < sent <= 8 and total == entry["chunks"]
    assert f"{total - sent} present" in line


def test_blobs_the_target_holds_only_in_doomed_packs_are_sent_again(tmp_path):
    """A prune plan pending in the target dooms the packs a first copy wrote: a second
    copy of a snapshot with the same blobs does not count on them, and the prune that
    finishes the plan leaves the second snapshot whole."""
    from datetime import datetime, timezone

    from volbackup.ops.prune import PruneOptions, prune
    from volbackup.repo import pruneplan
    from volbackup.repo.retention import Rules

    source = packed(tmp_path / "source")
    first = backup(source, volume_tar(seed=9, size=SIZE), volume="a")
    second = backup(source, volume_tar(seed=9, size=SIZE), volume="b")   # the same blobs
    target = packed(tmp_path / "target")
    ops.copy(source, target, ops.Choice([first.snapshot]))
    target.blobs.forget()
    doomed = [pack.hex for pack in target.blobs.index().packs]
    superseded = list(target.blobs.loaded.keys)  # the index objects naming them
    target.remove_manifest(first.snapshot)       # as a prune's step 2 would have
    pruneplan.write_plan(target.backend, pruneplan.Plan(
        pruneplan.new_name(datetime.now(timezone.utc)), "", "t", doomed, superseded),
        target.blobs.cipher.mac)
    (out,) = ops.copy(source, target, ops.Choice([second.snapshot])).snapshots
    assert out.status == "copied" and out.chunks_present == 0, out.message
    assert out.chunks_sent == out.chunks
    assert verify_packs(target).prune_plans != []
    result = prune(target, PruneOptions(Rules(last=1), leftover_age=0))
    assert result.chunks.problems == [] and result.chunks.adopted == 1
    target = Repository.open(str(tmp_path / "target"))
    assert restored(target, target.load(second.snapshot)) == restored(source, second)
    assert_sound(target)

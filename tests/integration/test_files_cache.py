"""The files cache (issue 25): a direct backup into a packed repository takes a file whose
stat data matches its parent snapshot's record whole from that snapshot, without reading
it. Real volumes on a real engine, real files; each case ends with a restore compared
with the volume as it was at the backup (corpus.tree: lstat on the host)."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path

import pytest

from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.conftest import make_layout
from volbackup.docker.engine import Engine
from volbackup.ops.backup import BackupOptions, backup
from volbackup.ops.restore import restore
from volbackup.repo.repository import Repository

FIXED = 1_600_000_000


@pytest.fixture
def engine(client) -> Engine:
    """As the CLI connects: the direct path is proved through the engine's socket."""
    return Engine.connect()


@pytest.fixture
def packed(tmp_path) -> Repository:
    path = str(tmp_path / "repo")
    os.mkdir(path)
    make_layout(path, "packed")
    return Repository.open(path, writable=True)


def fill(root: str, files: int = 12, size: int = 200_000) -> None:
    """Files of their own blobs (4 KiB or more), a small one, a hard-linked pair."""
    rnd = random.Random(7)
    os.makedirs(os.path.join(root, "d", "e"), exist_ok=True)
    for i in range(files):
        Path(root, "d" if i % 2 else "d/e", f"f{i:02}").write_bytes(rnd.randbytes(size + i))
    Path(root, "small").write_bytes(b"tiny\n")
    Path(root, "linked").write_bytes(rnd.randbytes(50_000))
    os.link(os.path.join(root, "linked"), os.path.join(root, "d", "linked-too"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (FIXED, FIXED))


def run(engine, repo: Repository, volume: str, **options):
    options.setdefault("settle", 0)     # the files were written just now: trust them
    result = backup(engine, repo, [volume], options=BackupOptions(**options))
    result.raise_for_failures()
    (outcome,) = result.volumes
    assert outcome.via == "direct"
    return outcome


def restored_tree(engine, repo: Repository, snapshot: str, names, mountpoint) -> dict:
    return tree(restored(engine, repo, snapshot, names, mountpoint))


def restored(engine, repo: Repository, snapshot: str, names, mountpoint) -> str:
    """The mountpoint of a fresh volume `snapshot` was restored into."""
    target = names("restored")
    restore(engine, repo, [snapshot], target=target).raise_for_failures()
    return mountpoint(target)


def same(expected: dict, actual: dict) -> None:
    assert not differences(expected, actual), differences(expected, actual)


def test_an_unchanged_volume_is_taken_from_its_parent_and_restores_identically(
        engine, packed, make_volume, mountpoint, names):
    volume = make_volume("fc").name
    root = mountpoint(volume)
    write_corpus(root)
    fill(os.path.join(root, "cached"))
    first = run(engine, packed, volume)
    assert first.files_cache["parent"] is None and first.files_cache["files_reused"] == 0
    expected = tree(root)
    second = run(engine, packed, volume)
    cache = second.files_cache
    assert cache["parent"] == first.snapshot
    # the corpus's 50 MiB file and the 12 files of fill() at least; hard links and files
    # under 4 KiB are read
    assert cache["files_reused"] >= 13 and cache["bytes_reused"] >= 50 << 20
    assert cache["files_read"] >= 3 and cache["bytes_read"] < 8 << 20  # the small ones
    assert second.bytes == first.bytes and second.stored_bytes < 64 << 10
    same(expected, restored_tree(engine, packed, second.snapshot, names, mountpoint))
    # and the same catalogue, line for line, so `ls` and partial reads see no difference
    assert [e.as_dict() for e in packed.catalog(packed.load(second.snapshot))] == \
        [e.as_dict() for e in packed.catalog(packed.load(first.snapshot))]


def test_read_all_reads_every_file(engine, packed, make_volume, mountpoint, names):
    volume = make_volume("fc").name
    fill(mountpoint(volume))
    run(engine, packed, volume)
    again = run(engine, packed, volume, read_all=True)
    assert again.files_cache["files_reused"] == 0 and again.files_cache["parent"] is None
    assert again.files_cache["files_read"] == 15


def test_files_changed_just_before_a_backup_are_read_again_next_time(
        engine, packed, make_volume, mountpoint, names):
    """A file whose ctime is within `settle` of the backup's start is not trusted: its stat
    is not recorded, whatever its mtime says."""
    volume = make_volume("fc").name
    fill(mountpoint(volume))
    run(engine, packed, volume, settle=3600)
    again = run(engine, packed, volume)
    assert again.files_cache["files_reused"] == 0 and again.files_cache["files_read"] == 15
    third = run(engine, packed, volume)
    assert third.files_cache["files_reused"] == 12


def _change(root: str, how: str) -> str:
    """Change d/f01 as `how` says, keeping what the cache must not be fooled by."""
    path = os.path.join(root, "d", "f01")
    st = os.stat(path)
    if how == "content, same size and mtime":
        data = bytearray(Path(path).read_bytes())
        data[1000:1010] = b"0123456789"
        Path(path).write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))     # touch -r
    elif how == "mode":
        os.chmod(path, 0o600)
    elif how == "owner":
        os.chown(path, 4321, 8765)
    elif how == "xattr":
        os.setxattr(path, "user.volbackup-test", b"set after the first backup")
    elif how == "replaced":
        data = Path(path).read_bytes()
        os.unlink(path)
        Path(path).write_bytes(data[:-10] + b"replaced!!")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) or how in (
        "mode", "owner", "xattr")
    return path


@pytest.mark.parametrize("how", ["content, same size and mtime", "mode", "owner", "xattr",
                                 "replaced"])
def test_a_change_the_stat_data_shows_only_in_ctime_is_read(
        engine, packed, make_volume, mountpoint, names, how):
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    run(engine, packed, volume)
    _change(root, how)
    expected = tree(root)
    again = run(engine, packed, volume)
    assert again.files_cache["files_reused"] == 11 and again.files_cache["files_read"] == 4
    into = restored(engine, packed, again.snapshot, names, mountpoint)
    same(expected, tree(into))
    if how == "xattr":      # corpus.tree leaves xattrs out
        assert os.getxattr(os.path.join(into, "d", "f01"), "user.volbackup-test") == \
            b"set after the first backup"


def test_a_file_replaced_under_the_same_inode_number_is_read(
        engine, packed, make_volume, mountpoint, names):
    """ext4 and overlayfs give a freed inode number to the next file made in the same
    directory, often at once: the new file then has the old one's path, size, mtime and
    inode, and only its ctime tells it apart."""
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    path = os.path.join(root, "d", "f01")
    run(engine, packed, volume)
    before = os.stat(path)
    data = Path(path).read_bytes()
    for _ in range(20):
        os.unlink(path)
        Path(path).write_bytes(data[:-3] + b"new")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.stat(path).st_ino == before.st_ino:
            break
    else:
        pytest.skip("this file system never gave the inode number back (ctime is "
                    "checked by the test above)")
    expected = tree(root)
    again = run(engine, packed, volume)
    assert again.files_cache["files_read"] == 4
    same(expected, restored_tree(engine, packed, again.snapshot, names, mountpoint))


def _data_packs(repo: Repository, repo_dir: Path) -> dict[Path, set[str]]:
    """Each data pack of a directory repository, and the kinds of blob it holds."""
    out = {}
    for path in repo_dir.glob("packs/*/*"):
        trailer = repo.blobs.trailer(path.name, path.stat().st_size)
        kinds = {record.kind for record in trailer.records}
        if "data" in kinds:
            out[path] = kinds
    return out


def _lose(repo_dir: Path, pack: Path) -> Repository:
    """`pack` gone and the index repaired without it; the repository opened afresh."""
    from volbackup.ops.repair import RepairIndexOptions, repair_index
    pack.unlink()
    repair_index(Repository.open(str(repo_dir), writable=True), RepairIndexOptions())
    return Repository.open(str(repo_dir), writable=True)


def test_a_parent_whose_blobs_left_the_index_has_those_files_read(
        engine, packed, make_volume, mountpoint, names):
    """A pack of the parent's file data removed and the index repaired without it: the
    files it held are read again (the cache never names a blob the index lacks), the
    others are taken, and the new snapshot is complete on its own."""
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root, files=6, size=6 << 20)   # 36 MiB: more than one 16 MiB data pack
    first = run(engine, packed, volume)
    repo_dir = Path(packed.backend.describe())
    packs = _data_packs(packed, repo_dir)
    only_data = [p for p, kinds in packs.items() if kinds == {"data"}]
    assert len(packs) >= 2 and only_data
    repo = _lose(repo_dir, only_data[0])
    again = run(engine, repo, volume)
    assert again.files_cache["parent"] == first.snapshot and not again.files_cache["problem"]
    assert 1 <= again.files_cache["files_reused"] <= 5
    same(tree(root), restored_tree(engine, repo, again.snapshot, names, mountpoint))


def test_a_parent_that_cannot_be_read_is_reported_and_every_file_read(
        engine, packed, make_volume, mountpoint, names):
    """The pack holding the parent's catalogue lost: the backup does not fail for it; it
    reads what it cannot compare and says why."""
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    run(engine, packed, volume)
    repo_dir = Path(packed.backend.describe())
    (holder,) = [p for p, kinds in _data_packs(packed, repo_dir).items() if "catalog" in kinds]
    repo = _lose(repo_dir, holder)
    again = run(engine, repo, volume)
    assert again.files_cache["files_reused"] == 0 and again.files_cache["files_read"] == 15
    assert "could not be read whole" in again.files_cache["problem"]
    same(tree(root), restored_tree(engine, repo, again.snapshot, names, mountpoint))


def test_excluded_paths_stay_out_with_the_cache(engine, packed, make_volume, mountpoint,
                                                names):
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    run(engine, packed, volume, exclude_paths=("d/e",))
    again = run(engine, packed, volume, exclude_paths=("d/e",))
    assert again.files_cache["files_reused"] == 6 and again.files_cache["files_read"] == 3
    got = restored_tree(engine, packed, again.snapshot, names, mountpoint)
    expected = {k: v for k, v in tree(root).items() if not k.startswith(b"d/e")}
    same(expected, got)


def test_a_named_parent_is_used_and_a_snapshot_of_another_host_is_not(
        engine, packed, make_volume, mountpoint, names):
    volume = make_volume("fc").name
    fill(mountpoint(volume))
    first = run(engine, packed, volume)
    again = run(engine, packed, volume, parent=first.snapshot)
    assert again.files_cache["parent"] == first.snapshot
    assert again.files_cache["files_reused"] == 12
    assert socket.gethostname()   # the default parent is the newest from this host


def test_the_command_line_says_what_the_cache_did_and_refuses_bad_parents(
        make_volume, mountpoint, tmp_path, cli):
    volume = make_volume("fc").name
    fill(mountpoint(volume))
    repo = str(tmp_path / "cli-repo")
    os.mkdir(repo)
    make_layout(repo, "packed")
    time.sleep(2.1)     # older than the settle time: the first backup records their stat
    first = cli("backup", volume, "-r", repo)
    assert first.code == 0 and "not read" not in first.stdout
    again = cli("backup", volume, "-r", repo)
    assert again.code == 0 and again.stdout.rstrip().endswith(", 12 unchanged files not read")
    missing = cli("backup", volume, "-r", repo, "--parent", f"{volume}@20000101T000000Z-0000")
    assert missing.code == 4 and missing.stderr.count("\n") == 1 and "Traceback" not in \
        missing.stderr
    both = cli("backup", volume, "-r", repo, "--parent", volume, "--read-all")
    assert both.code == 2 and "exclude each other" in both.stderr
    read_all = cli("backup", volume, "-r", repo, "--read-all", "--json")
    (done,) = json.loads(read_all.stdout)["volumes"]
    assert done["files_cache"] == {"parent": None, "files_read": 15, "bytes_read": done[
        "files_cache"]["bytes_read"], "files_reused": 0, "bytes_reused": 0, "problem": None}


class _Host:
    """A backup host of an encrypted repository (the key, no identity), with the cache
    directory its parent records go to."""

    def __init__(self, tmp_path: Path, cli, cache: str = "cache"):
        from tests.integration.test_encrypted import make_keys
        self.keys = make_keys(tmp_path, "--layout", "packed")
        self.cli, self.cache = cli, tmp_path / cache

    def backup(self, volume: str, *extra: str, cache: Path | None = None) -> dict:
        done = self.cli("backup", volume, "-r", str(self.keys.repo), "--key-file",
                        str(self.keys.key_file), "--json", *extra,
                        env={"VOLBACKUP_CACHE_DIR": str(cache or self.cache)})
        assert done.code == 0, done.stderr
        (row,) = json.loads(done.stdout)["volumes"]
        assert row["status"] == "ok" and row["via"] == "direct", row
        return row

    def records(self, cache: Path | None = None) -> list[Path]:
        return sorted(p for p in (cache or self.cache).rglob("*") if p.is_file())

    def restored(self, snapshot: str, names, mountpoint) -> dict:
        target = names("restored")
        done = self.cli("restore", snapshot, "-r", str(self.keys.repo), "--identity",
                        str(self.keys.carrying), "--as", target)
        assert done.code == 0, done.stderr
        return tree(mountpoint(target))


def test_an_encrypted_repository_takes_unchanged_files_from_the_hosts_parent_record(
        make_volume, mountpoint, names, tmp_path, cli):
    """A backup host holds the repository key, not the identity (docs/security.md): it
    cannot read the parent's sealed catalogue, so it keeps its own record of what it
    stored (volbackup.repo.parentrecord) and the next backup compares with that."""
    host = _Host(tmp_path, cli)
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    time.sleep(2.1)     # older than the settle time: the first backup records their stat
    first = host.backup(volume)
    assert first["files_cache"]["parent"] is None and first["files_cache"]["files_read"] == 15
    (record,) = host.records()      # one record, no temporary file left beside it
    assert oct(record.parent.stat().st_mode & 0o777) == "0o700"
    second = host.backup(volume)
    assert second["files_cache"]["parent"] == first["snapshot"]
    assert second["files_cache"]["files_reused"] == 12
    assert second["files_cache"]["files_read"] == 3 and second["files_cache"]["problem"] is None
    same(tree(root), host.restored(second["snapshot"], names, mountpoint))
    _change(root, "content, same size and mtime")
    expected = tree(root)
    third = host.backup(volume)
    assert third["files_cache"]["parent"] == second["snapshot"]
    assert third["files_cache"]["files_reused"] == 11 and third["files_cache"]["files_read"] == 4
    same(expected, host.restored(third["snapshot"], names, mountpoint))
    assert host.records() == [record]


def test_a_parent_record_of_another_snapshot_or_damaged_is_not_used(
        make_volume, mountpoint, names, tmp_path, cli):
    """The record is used only when it is of the very snapshot that is the parent, and
    whole: a newer snapshot made elsewhere, a damaged record or none at all means every
    file is read, and the backup does not fail for it."""
    host = _Host(tmp_path, cli)
    volume = make_volume("fc").name
    root = mountpoint(volume)
    fill(root)
    time.sleep(2.1)
    first = host.backup(volume)
    (record,) = host.records()
    # a backup of the volume with another cache directory: the parent is now a snapshot
    # this record is not of
    elsewhere = host.backup(volume, cache=tmp_path / "other-cache")
    assert elsewhere["files_cache"]["parent"] is None
    stale = host.backup(volume)
    assert stale["files_cache"]["parent"] is None and stale["files_cache"]["files_read"] == 15
    # damaged: a byte of the catalogue lines changed
    data = bytearray(record.read_bytes())
    data[40] ^= 0x55
    record.write_bytes(bytes(data))
    damaged = host.backup(volume)
    assert damaged["files_cache"]["files_read"] == 15
    assert "parent record not used" in damaged["files_cache"]["problem"]
    same(tree(root), host.restored(damaged["snapshot"], names, mountpoint))
    # the damaged backup wrote a good record; --read-all uses none and writes one too
    assert host.backup(volume)["files_cache"]["files_reused"] == 12
    assert host.backup(volume, "--read-all")["files_cache"]["files_reused"] == 0
    assert host.backup(volume)["files_cache"]["files_reused"] == 12
    # a named parent: used when the record is of it, and one that does not exist is an
    # error, as in a plain repository
    latest = host.backup(volume)
    named = host.backup(volume, "--parent", latest["snapshot"])
    assert named["files_cache"]["parent"] == latest["snapshot"]
    assert host.backup(volume, "--parent", first["snapshot"])["files_cache"]["parent"] is None
    missing = cli("backup", volume, "-r", str(host.keys.repo), "--key-file",
                  str(host.keys.key_file), "--parent", f"{volume}@20000101T000000Z-0000",
                  env={"VOLBACKUP_CACHE_DIR": str(host.cache)})
    assert missing.code == 4 and "Traceback" not in missing.stderr
    record.unlink()
    assert host.backup(volume)["files_cache"]["parent"] is None

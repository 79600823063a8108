"""What restore does with existing targets, bad archives and several snapshots, in each
repository layout (tests that do not read a snapshot's data run on the archive layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import make_layout
from tests.integration.helpers import contents, fill, one_line_error
from volbackup.repo import packs
from volbackup.repo.backends import LocalBackend
from volbackup.repo.crypto import PlainChunks

FILES = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40}
ARCHIVE_ONLY = pytest.mark.parametrize("layout", ["archive"])


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


@pytest.fixture
def backed_up(make_volume, mountpoint, cli, repo_dir):
    """A volume with FILES, backed up once; returns (volume name, snapshot id)."""
    volume = make_volume("src", labels={"role": "source"})
    fill(mountpoint(volume.name), FILES)
    result = cli("backup", volume.name, "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    return volume.name, json.loads(result.stdout)["volumes"][0]["snapshot"]


def archive_of(repo_dir: Path, volume: str) -> tuple[Path, int, int]:
    """Where a restore of the snapshot reads its data: the archive, in a chunked
    repository its chunk (FILES make one), in a packed one the largest data record of its
    data pack; as (file, start, end)."""
    packs_dir = repo_dir / "packs"
    if packs_dir.is_dir():
        records = [(record.stored, record.offset, pack)
                   for pack in packs_dir.rglob("*/*")
                   for record in packs.read_trailer(LocalBackend(str(repo_dir)), pack.name,
                                                    pack.stat().st_size,
                                                    PlainChunks().mac).records
                   if record.kind == packs.DATA]
        stored, offset, pack = max(records)
        return pack, offset, offset + stored
    if (repo_dir / "config").exists():
        (chunk_list,) = Path(repo_dir, "snapshots", volume).glob("*.chunks")
        (line,) = chunk_list.read_text().splitlines()
        chunk_id = line.split()[0]
        path = repo_dir / "chunks" / chunk_id[:2] / chunk_id
    else:
        (path,) = Path(repo_dir, "snapshots", volume).glob("*.tar.zst")
    return path, 0, path.stat().st_size


def test_refuses_a_non_empty_target_and_touches_nothing(backed_up, cli, repo_dir, mountpoint):
    volume, _ = backed_up
    fill(mountpoint(volume), {"a.txt": b"changed since\n"})
    result = cli("restore", volume, "-r", str(repo_dir))
    assert result.code == 8
    assert "not empty" in one_line_error(result.stderr)
    assert contents(mountpoint(volume))["a.txt"] == b"changed since\n"


def test_force_replaces_contents_rather_than_merging(backed_up, cli, repo_dir, mountpoint, client):
    volume, snapshot = backed_up
    fill(mountpoint(volume), {"stale.txt": b"not in the snapshot\n", "a.txt": b"changed\n"})
    result = cli("restore", snapshot, "-r", str(repo_dir), "--force")
    assert result.code == 0, result.stderr
    assert contents(mountpoint(volume)) == FILES
    assert client.api.inspect_volume(volume)["Labels"] == {"role": "source"}


def test_existing_empty_target_is_filled_without_force(backed_up, cli, repo_dir, make_volume,
                                                       mountpoint, client):
    volume, _ = backed_up
    target = make_volume("empty", labels={"will": "be replaced"})
    result = cli("restore", volume, "--as", target.name, "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert contents(mountpoint(target.name)) == FILES
    assert client.api.inspect_volume(target.name)["Labels"] == {"role": "source"}


@ARCHIVE_ONLY
def test_target_in_use_by_a_container_is_refused_even_with_force(
        backed_up, cli, repo_dir, make_container, mountpoint):
    volume, _ = backed_up
    fill(mountpoint(volume), {"extra": b"x"})
    holder = make_container("holder", binds={volume: {"bind": "/v", "mode": "rw"}})
    result = cli("restore", volume, "-r", str(repo_dir), "--force")
    assert result.code == 8
    assert holder.name in one_line_error(result.stderr)
    assert contents(mountpoint(volume))["extra"] == b"x"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_bad_archive_fails_and_leaves_no_volume(backed_up, cli, repo_dir, names, client, damage):
    volume, _ = backed_up
    archive, start, end = archive_of(repo_dir, volume)
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[(start + end) // 2] ^= 0xFF
    else:
        del data[start + (end - start) * 2 // 3:]
    archive.write_bytes(bytes(data))
    target = names("never")
    result = cli("restore", volume, "--as", target, "-r", str(repo_dir))
    assert result.code == 6, result.stderr
    one_line_error(result.stderr)
    assert not [v for v in client.volumes.list() if v.name == target]


def test_force_with_a_bad_archive_keeps_the_existing_volume(backed_up, cli, repo_dir, mountpoint):
    volume, _ = backed_up
    fill(mountpoint(volume), {"keep.txt": b"precious\n"})
    archive, _, end = archive_of(repo_dir, volume)
    data = bytearray(archive.read_bytes())
    data[end - 20] ^= 0x55
    archive.write_bytes(bytes(data))
    result = cli("restore", volume, "-r", str(repo_dir), "--force")
    assert result.code == 6
    assert contents(mountpoint(volume))["keep.txt"] == b"precious\n"


@ARCHIVE_ONLY
def test_manifest_that_is_not_json(backed_up, cli, repo_dir):
    volume, snapshot = backed_up
    (manifest,) = Path(repo_dir, "snapshots", volume).glob("*.json")
    manifest.write_text("{not json")
    for args in (["restore", snapshot, "--as", "x-never"], ["show", snapshot],
                 ["restore", volume, "--as", "x-never"]):
        result = cli(*args, "-r", str(repo_dir))
        assert result.code == 5, (args, result.stderr)
        assert "not valid JSON" in one_line_error(result.stderr)
    listing = cli("list", "-r", str(repo_dir))
    assert listing.code == 0 and "not valid JSON" in listing.stderr


@ARCHIVE_ONLY
def test_unknown_snapshot_id(backed_up, cli, repo_dir):
    volume, _ = backed_up
    result = cli("restore", f"{volume}@20000101T000000Z-abcd", "-r", str(repo_dir))
    assert result.code == 4
    assert "no snapshot" in one_line_error(result.stderr)
    result = cli("show", "no-such-volume", "-r", str(repo_dir))
    assert result.code == 4


def test_volume_name_means_newest_snapshot(backed_up, cli, repo_dir, mountpoint, names):
    volume, first = backed_up
    fill(mountpoint(volume), {"a.txt": b"second version\n"})
    second = json.loads(cli("backup", volume, "-r", str(repo_dir), "--json").stdout)
    second_id = second["volumes"][0]["snapshot"]
    shown = json.loads(cli("show", volume, "-r", str(repo_dir), "--json").stdout)
    assert shown["manifest"]["snapshot"] == second_id != first
    old, new = names("old"), names("new")
    assert cli("restore", first, "--as", old, "-r", str(repo_dir)).code == 0
    assert cli("restore", volume, "--as", new, "-r", str(repo_dir)).code == 0
    assert contents(mountpoint(old))["a.txt"] == b"alpha\n"
    assert contents(mountpoint(new))["a.txt"] == b"second version\n"


def test_restore_all_restores_missing_and_skips_non_empty(
        make_volume, mountpoint, cli, repo_dir, client):
    one, two = make_volume("one"), make_volume("two")
    fill(mountpoint(one.name), {"1": b"one"})
    fill(mountpoint(two.name), {"2": b"two"})
    assert cli("backup", one.name, two.name, "-r", str(repo_dir)).code == 0
    one.remove()
    result = cli("restore", "--all", "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    outcome = {v["volume"]: v for v in json.loads(result.stdout)["volumes"]}
    assert outcome[one.name]["status"] == "restored"
    assert outcome[two.name]["status"] == "skipped"
    assert "not empty" in outcome[two.name]["message"]
    assert contents(mountpoint(one.name)) == {"1": b"one"}


@ARCHIVE_ONLY
def test_several_snapshots_at_once_with_one_missing(backed_up, cli, repo_dir, client):
    volume, snapshot = backed_up
    client.volumes.get(volume).remove()
    result = cli("restore", snapshot, "nonexistent-volume", "-r", str(repo_dir))
    assert result.code == 3
    assert result.stderr.strip().splitlines()[-1].startswith("volbackup: error: 1 of 2")
    assert client.volumes.get(volume)


@ARCHIVE_ONLY
def test_volume_on_external_storage_is_never_merged_into(make_volume, mountpoint, cli, repo_dir,
                                                         tmp_path, names, client):
    """A local volume with `o=bind,device=DIR` keeps its data in DIR: removing the volume does
    not empty it, so a restore there would merge. It is refused and nothing is left behind."""
    storage = tmp_path / "storage"
    storage.mkdir()
    opts = {"type": "none", "o": "bind", "device": str(storage)}
    volume = make_volume("external", driver_opts=opts)
    fill(str(storage), {"data.txt": b"v1\n"})
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    fill(str(storage), {"added-later.txt": b"new\n"})

    copy = names("copy")
    result = cli("restore", volume.name, "--as", copy, "-r", str(repo_dir),
                 "--trust-driver-options")
    assert result.code == 8
    announced, error = result.stderr.splitlines()  # what it would create, then why not
    assert "as --trust-driver-options allows" in announced
    assert "keeps its data outside Docker" in one_line_error(error)
    assert [v for v in client.volumes.list() if v.name == copy] == []

    result = cli("restore", volume.name, "--force", "-r", str(repo_dir),
                 "--trust-driver-options")
    assert result.code == 8, result.stderr
    assert client.api.inspect_volume(volume.name)["Options"] == opts
    assert contents(str(storage)) == {"data.txt": b"v1\n", "added-later.txt": b"new\n"}


def test_all_on_an_empty_repository_is_an_error(cli, repo_dir):
    for args in (["restore", "--all"], ["verify", "--all"]):
        result = cli(*args, "-r", str(repo_dir))
        assert result.code == 4
        assert "no snapshots in repository" in one_line_error(result.stderr)


def test_verify_reports_a_broken_manifest_with_its_code(backed_up, cli, repo_dir):
    volume, _ = backed_up
    (manifest,) = Path(repo_dir, "snapshots", volume).glob("*.json")
    manifest.write_text("[]")
    result = cli("verify", "--all", "-r", str(repo_dir), "--json")
    assert result.code == 5
    (check,) = json.loads(result.stdout)["snapshots"]
    assert check["volume"] == volume and check["exit_code"] == 5

"""Crafted archives: members that would land outside the volume, and names that come twice
(issue 23: a symlink then a file of the same name restored differently by the two paths),
are refused (exit 6) by `verify` and by `restore` on both paths, before any of it is left
in a volume.

Each archive is put into a repository with a valid manifest and sha256, as another tenant
of a bucket could write it: only the tar inside is bad. Nothing may appear in a directory
on the host the archives point at, no volume is left under the target name, and with
--force the volume being replaced keeps its contents.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard

from tests.integration.helpers import PATHS, contents, fill, one_line_error
from tests.unit.manifests import make_manifest
from tests.unit.tars import crafted, gnu_long_crafted, make_tar, members_of
from volbackup.repo.repository import Repository, new_snapshot_id
from volbackup.stream.chunker import cut
from volbackup.timefmt import utc_iso

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
# The cases run through the CLI on both paths (the unit tests cover every case).
CASES = ["dotdot", "absolute", "pax-path", "sparse-name", "under-symlink", "dir-after-symlink",
         "hardlink-absolute", "hardlink-under-symlink", "hardlink-to-symlink",
         "repeated-name", "repeated-dir", "repeated-root"]
# The tar checks are one for both layouts: a chunked repository runs a few through restore.
CHUNKED_CASES = ["dotdot", "under-symlink", "hardlink-to-symlink", "repeated-name"]
LAYOUTS = ["archive", "chunked"]


def put_snapshot(repo: Path, volume: str, tar: bytes, layout: str = "archive") -> str:
    """Store `tar` as a snapshot of `volume` with a manifest that matches it exactly."""
    if layout == "chunked":
        return put_chunked_snapshot(repo, volume, tar)
    snapshot = new_snapshot_id(volume, CREATED)
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    manifest = make_manifest(
        snapshot=snapshot, created=utc_iso(CREATED, "milliseconds"), driver="local",
        driver_options={}, labels={}, bytes=len(tar), stored_bytes=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(), entries=len(members_of(tar)))
    folder = repo / "snapshots" / volume
    folder.mkdir(parents=True, exist_ok=True)
    (folder / manifest.archive).write_bytes(stored)
    (repo / Repository.manifest_key(snapshot)).write_text(manifest.to_json())
    return snapshot


def put_chunked_snapshot(repo: Path, volume: str, tar: bytes) -> str:
    """The same in a chunked repository: chunks cut as a backup cuts them, a chunk list,
    and a manifest whose digests all match (made a chunked repository if it is not)."""
    if not (repo / "config").exists():
        Repository.init(str(repo))
    repository = Repository.open(str(repo), writable=True)
    c = repository.config.chunker
    snapshot = new_snapshot_id(volume, CREATED)
    listing, stored_bytes = b"", 0
    for data in cut([tar], c.avg_size, c.min_size, c.max_size, c.normalized_chunking, c.seed):
        saved = repository.blobs.save(data, 3)
        assert saved.id == hashlib.sha256(data).hexdigest()
        stored_bytes += saved.stored
        listing += f"{saved.id} {len(data)}\n".encode()
    manifest = make_manifest(
        snapshot=snapshot, created=utc_iso(CREATED, "milliseconds"), driver="local",
        driver_options={}, labels={}, bytes=len(tar), stored_bytes=stored_bytes,
        sha256=hashlib.sha256(listing).hexdigest(), entries=len(members_of(tar)),
        archive=Repository.archive_name(snapshot, chunked=True), layout="chunked",
        format_version=2, chunks=listing.count(b"\n"), new_chunks=listing.count(b"\n"),
        tar_sha256=hashlib.sha256(tar).hexdigest())
    repository.backend.write_bytes(f"snapshots/{volume}/{manifest.archive}", listing)
    repository.commit(manifest)
    return snapshot


@pytest.fixture
def outside(tmp_path):
    """A directory on the host that the crafted archives point at; must stay empty."""
    path = tmp_path / "outside"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "a crafted archive wrote outside the volume"


def volume_exists(client, name: str) -> bool:
    return any(v.name == name for v in client.volumes.list(filters={"name": name}))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_verify_refuses_a_member_outside_the_volume(case, layout, cli, repo_dir, outside, names):
    tar, member = crafted(str(outside))[case]
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    result = cli("verify", snapshot, "-r", str(repo_dir))
    assert result.code == 6, result.stderr
    line = one_line_error(result.stderr)
    assert f"tar member '{member}' " in line and "refused" in line


def test_verify_refuses_a_dotdot_in_a_gnu_long_name(cli, repo_dir, names):
    snapshot = put_snapshot(repo_dir, names("src"), gnu_long_crafted())
    result = cli("verify", snapshot, "-r", str(repo_dir))
    assert result.code == 6
    assert "has '..' in its name" in one_line_error(result.stderr)


@pytest.mark.parametrize("via", list(PATHS))
@pytest.mark.parametrize("case, layout", [(case, "archive") for case in CASES]
                         + [(case, "chunked") for case in CHUNKED_CASES])
def test_restore_refuses_a_member_outside_the_volume(case, layout, via, cli, repo_dir, outside,
                                                     names, client):
    tar, member = crafted(str(outside))[case]
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    target = names("target")
    result = cli("restore", snapshot, "--as", target, "-r", str(repo_dir), PATHS[via])
    assert result.code == 6, result.stderr
    line = one_line_error(result.stderr)
    assert f"tar member '{member}' " in line and "refused" in line
    assert not volume_exists(client, target), "a half-restored volume was left"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("via", list(PATHS))
def test_restore_with_force_keeps_the_volume_it_would_replace(via, layout, cli, repo_dir, outside,
                                                              names, client, make_volume,
                                                              mountpoint):
    """The whole archive is read before a non-empty volume is given up: a refused
    member costs nothing."""
    tar, member = crafted(str(outside), filler=os.urandom(3 << 20))["under-symlink"]
    existing = make_volume("keep")
    fill(mountpoint(existing.name), {"precious": b"old contents\n"})
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    result = cli("restore", snapshot, "--as", existing.name, "--force", "-r", str(repo_dir),
                 PATHS[via])
    assert result.code == 6, result.stderr
    assert f"tar member '{member}' " in one_line_error(result.stderr)
    assert contents(mountpoint(existing.name)) == {"precious": b"old contents\n"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("via", list(PATHS))
def test_restore_into_an_empty_volume_removes_what_it_wrote(via, layout, cli, repo_dir, outside, names,
                                                            client, make_volume, mountpoint):
    """An empty target is replaced without a pre-check: the member is refused while the
    stream goes in, and the target is put back empty."""
    tar, member = crafted(str(outside), filler=os.urandom(3 << 20))["hardlink-to-symlink"]
    empty = make_volume("empty")
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    result = cli("restore", snapshot, "--as", empty.name, "-r", str(repo_dir), PATHS[via])
    assert result.code == 6, result.stderr
    assert f"tar member '{member}' " in one_line_error(result.stderr)
    assert volume_exists(client, empty.name)
    assert os.listdir(mountpoint(empty.name)) == []


def test_the_direct_path_reports_tar_s_own_reason(cli, repo_dir, names, client):
    """A member GNU tar cannot write (here: under a regular file) fails with tar's first
    error line, not its closing "Exiting with failure status due to previous errors"."""
    info = tarfile.TarInfo
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    tar = make_tar([(root, b""), (info("./f"), b"a file\n"), (info("./f/x"), b"x")])
    snapshot = put_snapshot(repo_dir, names("src"), tar)
    target = names("target")
    result = cli("restore", snapshot, "--as", target, "-r", str(repo_dir), "--direct")
    assert result.code == 1, result.stderr
    line = one_line_error(result.stderr)
    assert "./f/x: Cannot open: Not a directory" in line, line
    assert "Exiting with failure status" not in line
    assert not volume_exists(client, target)


def test_gnu_tar_s_first_error_line_is_the_reason(tmp_path):
    """direct.import_ on its own: the first of several error lines is kept."""
    from volbackup.docker import direct

    if direct.gnu_tar() is None:
        pytest.fail("GNU tar is needed for this test")
    members = [(tarfile.TarInfo("./f"), b"a file\n")] + [
        (tarfile.TarInfo(f"./f/{i}"), b"x") for i in range(200)]
    with pytest.raises(Exception) as raised:
        direct.import_(str(tmp_path), [make_tar(members)])
    message = str(raised.value)
    assert "./f/0: Cannot open: Not a directory" in message
    assert "Exiting with failure status" not in message and "\n" not in message

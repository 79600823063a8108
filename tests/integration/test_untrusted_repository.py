"""A repository is untrusted input: what the CLI does with files that others put into it
(symlinks, FIFOs, huge or malformed manifests, escape sequences), with a full disk, and
with a directory that is not a repository. Also: what it creates is private (0600/0700).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import deadline, umask
from tests.integration.conftest import make_layout
from tests.integration.helpers import contents, fill, one_line_error
ESC = "\x1b]0;pwned\x07\x1b[2J"
# What volbackup creates, and what it reads from chunks/, is tried on both layouts; what
# it reads from snapshots/ is the same in both, and is tried on the archive layout.
ARCHIVE_ONLY = pytest.mark.parametrize("layout", ["archive"])


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir




def backup(cli, repo_dir, *volumes: str) -> list[str]:
    result = cli("backup", *volumes, "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    return [v["snapshot"] for v in json.loads(result.stdout)["volumes"]]


def manifest_path(repo_dir: Path, snapshot: str) -> Path:
    volume, stamp = snapshot.split("@")
    return repo_dir / "snapshots" / volume / f"{stamp}.json"


def forge(repo_dir: Path, snapshot: str, stamp: str, **changes) -> tuple[str, Path]:
    """A copy of a real manifest under a new stamp, with fields changed (archive kept)."""
    data = json.loads(manifest_path(repo_dir, snapshot).read_text())
    volume = data["volume"]
    data["snapshot"] = f"{volume}@{stamp}"
    data.update(changes)
    path = repo_dir / "snapshots" / volume / f"{stamp}.json"
    path.write_text(json.dumps(data))
    return data["snapshot"], path


@pytest.fixture
def two(make_volume, mountpoint, cli, repo_dir):
    """Two volumes, each backed up once: (volume names, snapshot ids)."""
    volumes = [make_volume("a"), make_volume("b")]
    for v in volumes:
        fill(mountpoint(v.name), {"secret.env": b"PASSWORD=hunter2\n", "d/f": v.name.encode()})
    return [v.name for v in volumes], backup(cli, repo_dir, *(v.name for v in volumes))


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


# -- 1. what volbackup creates is private


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_repository_files_are_0600_and_directories_0700_whatever_the_umask(
        cli, repo_dir, make_volume, mountpoint, mask):
    volume = make_volume("perm")
    fill(mountpoint(volume.name), {"secret.env": b"PASSWORD=hunter2\n"})
    with umask(mask):
        backup(cli, repo_dir, volume.name)
        result = cli("prune", "-r", str(repo_dir), "--keep-last", "5")  # takes a lock too
        assert result.code == 0, result.stderr
    found = modes(repo_dir)
    assert {p for p in found} >= {"snapshots", f"snapshots/{volume.name}", "locks"}
    for path, mode in found.items():
        is_dir = (repo_dir / path).is_dir()
        assert mode == (0o700 if is_dir else 0o600), (path, oct(mode))
    archive = next(repo_dir.glob("snapshots/*/*.tar.zst"), None) or \
        next(p for p in [*repo_dir.glob("chunks/*/*"), *repo_dir.glob("packs/*/*")])
    denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "cat", str(archive)], capture_output=True)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr


def test_existing_world_readable_repository_keeps_working(two, cli, repo_dir, names):
    (volumes, snapshots) = two
    for p in repo_dir.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    backup(cli, repo_dir, volumes[0])
    assert cli("verify", "--all", "-r", str(repo_dir)).code == 0
    copy = names("copy")
    result = cli("restore", snapshots[0], "--as", copy, "-r", str(repo_dir))
    assert result.code == 0, result.stderr


# -- 2. entries that are not regular files


@ARCHIVE_ONLY
@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "FIFO", "2 MiB file"])
def test_manifest_that_is_not_a_small_file_is_refused_and_reported(two, cli, repo_dir, kind):
    (names, snapshots) = two
    volume = names[0]
    bad = repo_dir / "snapshots" / volume / "20300101T000000Z-dead.json"
    if kind == "FIFO":
        os.mkfifo(bad)
    elif kind.startswith("symlink"):
        os.symlink("/dev/zero", bad)
    else:
        bad.write_bytes(b" " * (2 << 20))
    words = {"FIFO": "is a FIFO", "2 MiB file": "larger than 1,048,576 bytes"}.get(kind, "is a symlink")
    with deadline(60):
        shown = cli("show", f"{volume}@20300101T000000Z-dead", "-r", str(repo_dir), timeout=30)
        assert shown.code == 5 and words in one_line_error(shown.stderr)
        listed = cli("list", "-r", str(repo_dir), timeout=30)
        assert listed.code == 0
        assert f"warning: snapshots/{volume}/20300101T000000Z-dead.json" in listed.stderr
        assert words in listed.stderr
        assert all(s in listed.stdout for s in snapshots)
        verified = cli("verify", "--all", "-r", str(repo_dir), "--json", timeout=30)
        assert verified.code == 3
        checks = json.loads(verified.stdout)["snapshots"]
        assert [c["status"] for c in checks].count("ok") == 2
        [failed] = [c for c in checks if c["status"] == "failed"]
        assert failed["volume"] == volume and words in failed["message"]


@ARCHIVE_ONLY
def test_symlinked_volume_directory_is_reported_and_never_followed(two, cli, repo_dir, tmp_path):
    (names, snapshots) = two
    outside = tmp_path / "outside"
    shutil.copytree(repo_dir / "snapshots" / names[0], outside)   # real-looking snapshots
    (outside / "19990101T000000Z-0000.tar.zst").write_bytes(b"precious, old")
    before = contents(str(outside))
    os.symlink(outside, repo_dir / "snapshots" / "etc")
    listed = cli("list", "-r", str(repo_dir))
    assert listed.code == 0 and "snapshots/etc " in listed.stderr and "symlink" in listed.stderr
    verified = cli("verify", "--all", "-r", str(repo_dir))
    assert verified.code == 3 and "volbackup: etc: failed:" in verified.stderr
    pruned = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--leftover-age", "0")
    assert pruned.code == 1 and "volume etc left alone" in pruned.stderr
    assert contents(str(outside)) == before


@ARCHIVE_ONLY
def test_restore_all_reports_a_volume_it_cannot_read(two, cli, repo_dir, client):
    (names, snapshots) = two
    for name in names:
        client.volumes.get(name).remove()
    os.mkfifo(repo_dir / "snapshots" / names[1] / "20300101T000000Z-dead.json")
    result = cli("restore", "--all", "-r", str(repo_dir), timeout=120)
    assert result.code == 3, result.stderr
    assert f"volbackup: {names[1]}: failed: snapshots/{names[1]}/20300101T000000Z-dead.json" \
        in result.stderr
    assert [v.name for v in client.volumes.list() if v.name in names] == [names[0]]


@ARCHIVE_ONLY
def test_unreadable_snapshot_directory_is_reported_not_dropped(two, cli, repo_dir, client):
    """Root reads any directory; without CAP_DAC_OVERRIDE/READ_SEARCH a 000 one is denied."""
    (names, snapshots) = two
    client.volumes.get(names[0]).remove()
    client.volumes.get(names[1]).remove()
    locked = repo_dir / "snapshots" / names[1]
    locked.chmod(0o000)
    try:
        runs = {args[0]: _without_dac_override(*args, "-r", str(repo_dir))
                for args in (["list"], ["verify", "--all"], ["restore", "--all", "--no-direct"])}
    finally:
        locked.chmod(0o700)
    assert runs["list"].returncode == 0
    assert f"cannot list snapshots/{names[1]}/" in runs["list"].stderr
    assert "Permission denied" in runs["list"].stderr
    for command in ("verify", "restore"):
        assert runs[command].returncode == 3, runs[command].stderr
        [line] = [x for x in runs[command].stderr.splitlines()
                  if x.startswith(f"volbackup: {names[1]}: failed: ")]
        assert f"snapshots/{names[1]}/ in repository {repo_dir}: Permission denied" in line
    assert [v.name for v in client.volumes.list() if v.name in names] == [names[0]]


def _without_dac_override(*args: str) -> subprocess.CompletedProcess:
    drop = "-dac_override,-dac_read_search"
    return subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}",
                           sys.executable, "-m", "volbackup", *args],
                          capture_output=True, text=True, timeout=300)


# -- 4. a bad manifest is a problem of its own snapshot only


@pytest.mark.parametrize("changes", [{"created": "29/11/2026 03:15"}, {"host": 42},
                                     {"created": "2026-11-29T03:15:00"}],
                         ids=["created-not-iso", "host-int", "created-no-zone"])
@ARCHIVE_ONLY
def test_one_bad_manifest_beside_good_ones(two, cli, repo_dir, client, changes):
    (names, snapshots) = two
    bad, _ = forge(repo_dir, snapshots[0], "20300101T000000Z-bad0", **changes)
    field = next(iter(changes))
    listed = cli("list", "-r", str(repo_dir), "--json")
    assert listed.code == 0 and f"invalid {field}" in listed.stderr
    assert [s["snapshot"] for s in json.loads(listed.stdout)["snapshots"]] == snapshots
    [problem] = json.loads(listed.stdout)["problems"]
    assert problem["volume"] == names[0] and f"invalid {field}" in problem["message"]
    assert "20300101T000000Z-bad0.json" in problem["message"]
    verified = cli("verify", "--all", "-r", str(repo_dir))
    assert verified.code == 3 and f"volbackup: {names[0]}: failed:" in verified.stderr
    assert f"{snapshots[1]}: ok" in verified.stdout
    pruned = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--json")
    assert pruned.code == 1 and f"volume {names[0]} left alone" in pruned.stderr
    assert "Traceback" not in pruned.stderr
    for name in names:
        client.volumes.get(name).remove()
    restored = cli("restore", "--all", "-r", str(repo_dir), timeout=120)
    assert restored.code == 3 and f"volbackup: {names[0]}: failed:" in restored.stderr
    assert [v.name for v in client.volumes.list() if v.name in names] == [names[1]]
    assert cli("restore", snapshots[0], "-r", str(repo_dir)).code == 0   # by id it still works


# -- 3. control characters are escaped in text, exact in JSON


@ARCHIVE_ONLY
def test_control_characters_are_escaped_in_text_and_exact_in_json(two, cli, repo_dir):
    (names, snapshots) = two
    sid, _ = forge(repo_dir, snapshots[0], "20300101T000000Z-e5c0", host=f"db{ESC}1",
                   labels={"note": f"x{ESC}y"})
    (repo_dir / "snapshots" / names[1] / f"{ESC}.json").write_text("{")
    listed = cli("list", "-r", str(repo_dir))
    shown = cli("show", sid, "-r", str(repo_dir))
    for result in (listed, shown):
        assert result.code == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr
        assert "\x07" not in result.stdout + result.stderr
    assert "db\\x1b]0;pwned\\x07\\x1b[2J1" in listed.stdout + shown.stdout
    assert "warning: manifest snapshots/" in listed.stderr and "\\x1b]0;pwned" in listed.stderr
    assert "note=x\\x1b]0;pwned\\x07\\x1b[2Jy" in shown.stdout
    as_json = cli("show", sid, "-r", str(repo_dir), "--json")
    manifest = json.loads(as_json.stdout)["manifest"]
    assert manifest["host"] == f"db{ESC}1" and manifest["labels"] == {"note": f"x{ESC}y"}


@ARCHIVE_ONLY
def test_control_characters_in_the_error_line_are_escaped(cli, repo_dir):
    (repo_dir / "locks").mkdir()
    lock = {"kind": "exclusive", "host": f"evil{ESC}", "pid": 1, "pid_namespace": "x",
            "started": "2030-01-01T00:00:00Z", "refreshed": "2099-01-01T00:00:00Z",
            "command": f"prune{ESC}"}
    (repo_dir / "locks" / "20300101T000000Z-000000000000.json").write_text(json.dumps(lock))
    result = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--lock-wait", "0")
    assert result.code == 11
    line = one_line_error(result.stderr)
    assert "\x1b" not in result.stderr and "host evil\\x1b]0;pwned\\x07\\x1b[2J" in line


# -- 4. a full disk


def test_full_repository_is_exit_5_with_what_was_written_and_what_is_free(
        cli, tmp_path, make_volume, mountpoint):
    repo = tmp_path / "tiny"
    repo.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(repo)], check=True)
    try:
        volume = make_volume("big")
        with open(os.path.join(mountpoint(volume.name), "random.bin"), "wb") as f:
            f.write(os.urandom(6 << 20))
        result = cli("backup", volume.name, "-r", str(repo))
        assert result.code == 5, result.stderr
        line = one_line_error(result.stderr)
        assert f"repository {repo} is full (No space left on device): writing snapshots/" \
            f"{volume.name}/" in line
        assert " MiB free of 2.0 MiB" in line and "failed after " in line
        assert [p.name for p in repo.rglob("*") if p.is_file()] == []    # no partial archive
    finally:
        subprocess.run(["umount", str(repo)], check=True)


def test_full_chunked_repository_is_exit_5_and_leaves_no_snapshot(
        cli, tmp_path, make_volume, mountpoint):
    repo = tmp_path / "tiny"
    repo.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(repo)], check=True)
    try:
        make_layout(str(repo), "chunked")
        volume = make_volume("big")
        with open(os.path.join(mountpoint(volume.name), "random.bin"), "wb") as f:
            f.write(os.urandom(6 << 20))
        result = cli("backup", volume.name, "-r", str(repo))
        assert result.code == 5, result.stderr
        line = one_line_error(result.stderr)
        assert f"repository {repo} is full (No space left on device)" in line
        assert not list(repo.glob("snapshots/*/*")), "no chunk list, no manifest"
        listed = cli("list", "-r", str(repo), "--json")
        assert listed.code == 0 and json.loads(listed.stdout)["snapshots"] == []
    finally:
        subprocess.run(["umount", str(repo)], check=True)


@pytest.mark.parametrize("layout", ["chunked"])
@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "FIFO", "directory"])
def test_a_chunk_that_is_not_a_regular_file_is_refused_never_followed(two, cli, repo_dir,
                                                                      kind):
    (names, snapshots) = two
    (chunk_list,) = (repo_dir / "snapshots" / names[0]).glob("*.chunks")
    chunk_id = chunk_list.read_text().split()[0]
    path = repo_dir / "chunks" / chunk_id[:2] / chunk_id
    path.unlink()
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink("/dev/zero", path)
    with deadline(60):
        verified = cli("verify", "--all", "-r", str(repo_dir), "--json", timeout=30)
    assert verified.code == 3, verified.stderr
    checks = {c["snapshot"]: c for c in json.loads(verified.stdout)["snapshots"]}
    assert checks[snapshots[1]]["status"] == "ok"
    failed = checks[snapshots[0]]
    assert failed["status"] == "failed" and failed["exit_code"] == 6
    assert f"chunk {chunk_id}" in failed["message"]


# -- 5. newcomers


def test_missing_repository_option_mentions_the_environment_variable(cli):
    env = {k: v for k, v in os.environ.items() if k != "VOLBACKUP_REPO"}
    result = subprocess.run([sys.executable, "-m", "volbackup", "list"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2
    assert "Missing option '-r' / '--repo' (or set VOLBACKUP_REPO)" in result.stderr


@ARCHIVE_ONLY
def test_list_of_an_empty_directory_says_no_snapshots_yet(cli, repo_dir):
    (repo_dir / "lost+found").mkdir()      # a fresh file system is still empty
    result = cli("list", "-r", str(repo_dir))
    assert result.code == 0 and result.stdout == ""
    assert result.stderr == f"no snapshots yet in repository {repo_dir}\n"


@pytest.mark.parametrize("command", [["list"], ["verify", "--all"], ["restore", "--all"],
                                     ["restore", "pgdata"], ["show", "pgdata"]])
def test_a_directory_that_is_not_a_repository_is_named_so(cli, tmp_path, command):
    for where in (Path("/etc"), tmp_path):
        (tmp_path / "notes.txt").write_text("x")
        result = cli(*command, "-r", str(where))
        assert result.code == 5
        line = one_line_error(result.stderr)
        assert f"{where} is not a volbackup repository: it holds " in line
        assert "and no snapshots/" in line
    assert (Path("/etc") / "snapshots").exists() is False

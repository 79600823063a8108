"""Bad input, as a new user would give it: one-line errors, documented codes, no leftovers."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.helpers import fill, one_line_error, repo_files


def test_volume_that_does_not_exist(cli, repo_dir):
    result = cli("backup", "vbtest-no-such-volume", "-r", str(repo_dir))
    assert result.code == 4
    assert "no such volume: vbtest-no-such-volume" in one_line_error(result.stderr)
    assert repo_files(repo_dir) == []


def test_container_that_does_not_exist(cli, repo_dir):
    result = cli("backup", "--container", "vbtest-no-such-container", "-r", str(repo_dir))
    assert result.code == 4
    assert "no such container" in one_line_error(result.stderr)


def test_one_missing_volume_among_several_is_a_partial_failure(cli, repo_dir, make_volume,
                                                                 mountpoint):
    good = make_volume("good")
    fill(mountpoint(good.name), {"f": b"data"})
    result = cli("backup", good.name, "vbtest-no-such-volume", "-r", str(repo_dir), "--json")
    assert result.code == 3
    assert "vbtest-no-such-volume: failed: no such volume" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("volbackup: error: 1 of 2 volumes")
    assert len([f for f in repo_files(repo_dir) if f.endswith(".json")]) == 1


@pytest.mark.parametrize("command", ["backup", "list", "restore"])
def test_repository_that_does_not_exist(cli, tmp_path, command):
    missing = tmp_path / "nowhere"
    args = {"backup": ["backup", "somevolume"], "list": ["list"], "restore": ["restore", "v"]}
    result = cli(*args[command], "-r", str(missing))
    assert result.code == 5
    assert "does not exist" in one_line_error(result.stderr)
    assert not missing.exists()


def test_repository_that_is_a_file(cli, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    result = cli("backup", "somevolume", "-r", str(path))
    assert result.code == 5
    assert "not a directory" in one_line_error(result.stderr)


def test_repository_that_is_not_writable(cli, tmp_path, make_volume):
    """A read-only mount: root ignores permission bits, but not a read-only file system."""
    repo = tmp_path / "ro-repo"
    repo.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(repo)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a read-only tmpfs: {mounted.stderr}"
    try:
        volume = make_volume("ro")
        result = cli("backup", volume.name, "-r", str(repo))
        assert result.code == 5
        assert "not writable" in one_line_error(result.stderr)
    finally:
        subprocess.run(["umount", str(repo)], check=True)


def test_engine_that_cannot_be_reached(cli, repo_dir, tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    for args in (["backup", "somevolume"], ["restore", "somevolume"]):
        result = cli(*args, "-r", str(repo_dir), env=env)
        assert result.code == 7
        assert "cannot reach the Docker engine" in one_line_error(result.stderr)
    result = cli("backup", "v", "-r", str(repo_dir), env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.code == 7


def test_engine_url_password_never_printed(cli, repo_dir):
    env = {"DOCKER_HOST": "tcp://admin:s3cr3t-pw@127.0.0.1:9"}
    for debug in ([], ["--debug"]):
        result = cli(*debug, "backup", "v", "-r", str(repo_dir), env=env)
        assert result.code == 7
        assert "s3cr3t-pw" not in result.stderr + result.stdout
        assert "tcp://127.0.0.1:9" in result.stderr and "admin" not in result.stderr


def test_debug_prints_a_traceback(cli, repo_dir):
    result = cli("--debug", "backup", "vbtest-no-such-volume", "-r", str(repo_dir))
    assert result.code == 4
    assert "Traceback" in result.stderr


def test_backup_of_a_missing_volume_leaves_no_temp_file(cli, repo_dir, make_volume, mountpoint):
    result = cli("backup", "vbtest-no-such-volume", "-r", str(repo_dir))
    assert result.code == 4
    assert repo_files(repo_dir) == []

"""Ctrl-C, SIGTERM and SIGKILL in the middle of a run: cleanup now, or by the next run."""

from __future__ import annotations

import signal

import pytest

from tests.integration.helpers import (PATHS, gone, helpers_of, one_line_error, random_file,
                                       repo_files, start, tar_children, wait_for_read)


@pytest.fixture
def big_volume(make_volume, mountpoint):
    volume = make_volume("big")
    random_file(mountpoint(volume.name))
    return volume.name


@pytest.mark.parametrize("via", list(PATHS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_backup_cleans_up(big_volume, repo_dir, client, sig, via):
    proc = start("backup", big_volume, "-r", str(repo_dir), PATHS[via])
    wait_for_read(client, proc, via)
    tars = tar_children(proc.pid)
    assert bool(tars) == (via == "direct")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in one_line_error(stderr)
    assert helpers_of(client, proc.pid) == []
    assert gone(tars), "the direct path's tar outlived the run"
    assert repo_files(repo_dir) == [], "a temp file or a half snapshot was left"


@pytest.mark.parametrize("via", list(PATHS))
def test_signal_during_restore_leaves_no_volume(big_volume, repo_dir, client, names, cli, via):
    assert cli("backup", big_volume, "-r", str(repo_dir)).code == 0
    target = names("interrupted")
    proc = start("restore", big_volume, "--as", target, "-r", str(repo_dir), PATHS[via])
    wait_for_read(client, proc, via)
    tars = tar_children(proc.pid)
    assert bool(tars) == (via == "direct")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert helpers_of(client, proc.pid) == []
    assert gone(tars), "the direct path's tar outlived the run"
    assert [v for v in client.volumes.list() if v.name == target] == []


@pytest.mark.parametrize("via", list(PATHS))
def test_killed_run_leaves_no_snapshot_and_next_run_removes_its_helper(
        big_volume, repo_dir, client, cli, make_volume, via):
    proc = start("backup", big_volume, "-r", str(repo_dir), PATHS[via])
    wait_for_read(client, proc, via)
    tars = tar_children(proc.pid)
    assert bool(tars) == (via == "direct")
    proc.kill()
    proc.wait(timeout=30)
    if via == "engine":
        assert len(helpers_of(client, proc.pid)) == 1, "SIGKILL cannot clean up; the helper stays"
    else:
        assert gone(tars), "tar should die of SIGPIPE once its reader is gone"
    listing = cli("list", "-r", str(repo_dir), "--json")
    assert listing.code == 0 and '"snapshots": []' in listing.stdout
    small = make_volume("next")
    assert cli("backup", small.name, "-r", str(repo_dir), "--no-direct").code == 0
    assert helpers_of(client, proc.pid) == []


def test_helpers_of_live_runs_are_left_alone(client, engine):
    """A helper whose process still runs (here: this test) is not stale."""
    with engine.helper() as helper:
        removed = engine.remove_stale_helpers()
        assert client.api.inspect_container(helper.id)["Name"].lstrip("/") not in removed

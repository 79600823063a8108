"""Ctrl-C, SIGTERM and SIGKILL in the middle of a run: cleanup now, or by the next run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.helpers import (PATHS, fill, gone, helpers_of, one_line_error,
                                       random_file, repo_files, start, tar_children,
                                       wait_for_read, wait_until)
from tests.integration.slow_engine import SlowEngine
from volbackup.docker.helpers import PIDNS_LABEL
from volbackup.repo import locking
from volbackup.repo.backends import LocalBackend


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


def test_cleanup_removes_the_temp_file_of_a_killed_backup(big_volume, repo_dir, client, cli):
    """A directory repository's temp file is an unfinished write like an S3 upload: `cleanup`
    finds it (it said "no leftovers" and only `prune` removed it) and removes it once old
    enough; younger, its writer dead but quiet for under 10 minutes, it is kept."""
    proc = start("backup", big_volume, "-r", str(repo_dir), PATHS["engine"])
    wait_for_read(client, proc, "engine")

    def temp_files() -> list[str]:
        return [f for f in repo_files(repo_dir) if ".tmp-" in f]

    wait_until(lambda: len(temp_files()) == 2, proc, "the archive's and the catalogue's temp files")
    proc.kill()
    proc.wait(timeout=30)
    try:
        temps = temp_files()  # archive, catalogue
        assert len(temps) == 2 and all(f".tmp-{proc.pid}-" in t for t in temps), temps
        kept = cli("cleanup", "-r", str(repo_dir), "--json")
        assert kept.code == 0, kept.stderr
        lefts = json.loads(kept.stdout)["leftovers"]
        assert sorted((left["key"], left["kind"], left["status"], left["reason"])
                      for left in lefts) == [(t, "temp", "kept", "too young") for t in temps]
        done = cli("cleanup", "-r", str(repo_dir), "--older-than", "0")
        assert done.code == 0, done.stderr
        assert sorted(line.split(":")[0] for line in done.stdout.splitlines()) == temps
        assert "2 unfinished write(s); freed" in done.stderr
        assert [f for f in repo_files(repo_dir) if ".tmp-" in f] == []
    finally:  # the next run removes the killed run's helper (and breaks its lock)
        assert cli("backup", big_volume, "-r", str(repo_dir), "--no-direct").code == 0


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


UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]  # a new pid namespace, same host name


def test_a_run_in_another_pid_namespace_leaves_live_helpers_alone(client, engine, make_volume,
                                                                  repo_dir):
    """volbackup in a container with the host's --hostname sees other pids: the pid of a
    live run on the host is not running *there*, which must not make its helper stale."""
    small = make_volume("small")
    with engine.helper() as helper:
        labels = client.api.inspect_container(helper.id)["Config"]["Labels"]
        assert labels[PIDNS_LABEL] == os.readlink("/proc/self/ns/pid")
        run = subprocess.run([*UNSHARE, sys.executable, "-m", "volbackup", "backup", small.name,
                              "-r", str(repo_dir), "--no-direct"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert client.api.containers(all=True, filters={"id": helper.id}), \
            "a run in another pid namespace removed the helper of a live run"


def test_a_run_in_another_pid_namespace_leaves_live_locks_alone(repo_dir):
    held = locking.acquire(LocalBackend(repo_dir), locking.SHARED, 0, "test")
    try:
        run = subprocess.run([*UNSHARE, sys.executable, "-m", "volbackup", "unlock",
                              "-r", str(repo_dir)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert (repo_dir / held.info.key).exists(), "the lock of a live run was broken"
    finally:
        held.release()


# -- signals at the moments that matter, while other threads run ---------------------------
# The CLI's lock refresher runs during every backup, and `--jobs 2` adds workers: the kernel
# may hand a signal to any of them, but Python handles it in the main thread. A proxy in
# front of the engine's socket holds one request back, so the signal arrives while the run
# waits for exactly that answer.

HELPER_CREATE = rb"POST /v[0-9.]+/containers/create\?name=volbackup-helper-"
CONTAINER_START = rb"POST /v[0-9.]+/containers/[0-9a-f]{64}/start"


@pytest.fixture
def slow_engine():
    made = []

    def make(pattern: bytes) -> SlowEngine:
        directory = tempfile.mkdtemp(prefix="vbtest-proxy-")  # short: unix socket paths
        proxy = SlowEngine(Path(directory, "engine.sock"), pattern)  # have at most 107 bytes
        made.append((proxy, directory))
        return proxy.__enter__()

    yield make
    for proxy, directory in made:
        proxy.__exit__(None, None, None)
        shutil.rmtree(directory, ignore_errors=True)


def _db(client, make_volume, run_container, stem: str, count: int = 1):
    """A volume used by `count` running containers, each with a post-hook that leaves a
    file in the volume."""
    volume = make_volume(stem)
    fill(client.api.inspect_volume(volume.name)["Mountpoint"], {"table": b"rows\n" * 1000})
    containers = [run_container(f"{stem}{i}", volume.name,
                                labels={"volbackup.post": f"echo ran > /data/post-{i}"})
                  for i in range(count)]
    return volume.name, containers


def _all_put_back(client, dbs) -> None:
    for volume, containers in dbs:
        root = client.api.inspect_volume(volume)["Mountpoint"]
        for i, container in enumerate(containers):
            assert client.api.inspect_container(container.id)["State"]["Running"], \
                f"{container.name} was left stopped"
            assert os.path.exists(os.path.join(root, f"post-{i}")), \
                f"the post-hook of {container.name} did not run"


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_helper_create_removes_the_helper(
        client, make_volume, run_container, repo_dir, slow_engine, sig, jobs):
    dbs = [_db(client, make_volume, run_container, f"db{n}") for n in range(jobs)]
    proxy = slow_engine(HELPER_CREATE)
    proc = start("backup", *[v for v, _ in dbs], "--stop", "--no-direct", "--jobs", str(jobs),
                 "-r", str(repo_dir), env={"DOCKER_HOST": proxy.url})
    try:
        assert proxy.held.wait(60), "no helper create reached the engine"
        assert len(os.listdir(f"/proc/{proc.pid}/task")) > 1, \
            "the lock refresher (and workers) should run beside the main thread"
        proc.send_signal(sig)
        time.sleep(0.5)  # the signal is in; the engine has not answered yet
    finally:
        proxy.release()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in one_line_error(stderr)
    assert helpers_of(client, proc.pid) == [], "the helper created during the signal leaked"
    _all_put_back(client, dbs)


@pytest.mark.parametrize("jobs", [1, 2])
def test_three_ctrl_c_during_the_put_back_start_every_container_and_run_post_hooks(
        client, make_volume, run_container, repo_dir, slow_engine, jobs):
    dbs = [_db(client, make_volume, run_container, f"db{n}", count=2) for n in range(jobs)]
    proxy = slow_engine(CONTAINER_START)
    proc = start("backup", *[v for v, _ in dbs], "--stop", "--no-direct", "--jobs", str(jobs),
                 "-r", str(repo_dir), env={"DOCKER_HOST": proxy.url})
    try:
        assert proxy.held.wait(60), "no container start reached the engine"
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
    finally:
        proxy.release()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in one_line_error(stderr)
    assert helpers_of(client, proc.pid) == []
    _all_put_back(client, dbs)


# -- a restore racing a prune (restores take no lock)


@pytest.mark.parametrize("layout", ["packed", "chunked"])
@pytest.mark.parametrize("use_direct", [True, False], ids=["direct", "engine"])
def test_a_restore_racing_a_prune_says_so(big_volume, repo_dir, cli, client, names, engine,
                                          mountpoint, use_direct, layout):
    """A real prune (`prune --keep-last 1`, its own lock) runs while the restore reads the
    older snapshot, started from the restore's progress callback at its first piece: the
    restore fails with its own message and exit 20, not "chunk ... is missing" (exit 6),
    and leaves no volume."""
    from contextlib import contextmanager

    from volbackup.ops.prune import PruneOptions, prune
    from volbackup.ops.restore import RestoreOptions, restore
    from volbackup.repo.repository import Repository
    from volbackup.repo.retention import Rules

    assert cli("init", "-r", str(repo_dir), "--layout", layout).code == 0
    old = json.loads(cli("backup", big_volume, "-r", str(repo_dir), "--json").stdout)
    random_file(mountpoint(big_volume))  # other data, other chunks
    assert cli("backup", big_volume, "-r", str(repo_dir)).code == 0
    snapshot = old["volumes"][0]["snapshot"]
    repo = Repository.open(str(repo_dir), writable=True)
    pruned = []

    @contextmanager
    def progress(label, total):
        def update(n):
            if not pruned:
                pruned.append(prune(repo, PruneOptions(Rules(last=1), leftover_age=0)))
        yield update

    target = names("raced")
    (outcome,) = restore(engine, repo, [snapshot], target, progress=progress,
                         options=RestoreOptions(use_direct=use_direct)).volumes
    assert [d.snapshot for d in pruned[0].removed] == [snapshot]
    assert outcome.failed and outcome.error.exit_code == 20, outcome.message
    assert f"snapshot {snapshot} was removed from repository" in outcome.message
    assert "by a prune that has finished since" in outcome.message
    assert target not in {v.name for v in client.volumes.list()}

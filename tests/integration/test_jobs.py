"""`backup --jobs N`: several volumes read at once, the same snapshots, the same cleanup."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.integration.conftest import TEST_LABEL
from tests.integration.helpers import (PATHS, contents, events, fill, gone, helpers_of,
                                       one_line_error, random_file, repo_files, start,
                                       tar_children, wait_until)
from tests.integration.images import ensure_busybox


@pytest.mark.parametrize("via", list(PATHS))
def test_jobs_back_up_every_volume_and_each_restores(make_volume, mountpoint, cli, repo_dir,
                                                     names, via):
    volumes = [make_volume(f"j{i}").name for i in range(5)]
    for i, name in enumerate(volumes):
        fill(mountpoint(name), {f"own-{i}.txt": f"volume {i}\n".encode() * (i + 1),
                                "sub/random.bin": os.urandom(200_000 + i)})
    result = cli("backup", *volumes, "--jobs", "3", "-r", str(repo_dir), "--json", PATHS[via])
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)["volumes"]
    assert [v["volume"] for v in out] == volumes, "results follow the order asked for"
    assert {v["via"] for v in out} == {via}
    for name in volumes:
        target = names("back")
        assert cli("restore", name, "--as", target, "-r", str(repo_dir)).code == 0
        assert contents(mountpoint(target)) == contents(mountpoint(name))


def test_a_missing_volume_under_jobs_fails_alone(make_volume, mountpoint, cli, repo_dir, names):
    good = [make_volume(f"ok{i}").name for i in range(2)]
    for name in good:
        fill(mountpoint(name), {"f": name.encode()})
    missing = names("missing")
    result = cli("backup", good[0], missing, good[1], "--jobs", "2", "-r", str(repo_dir),
                 "--json")
    assert result.code == 3, result.stderr
    out = json.loads(result.stdout)["volumes"]
    assert [(v["volume"], v["status"]) for v in out] == [
        (good[0], "ok"), (missing, "failed"), (good[1], "ok")]
    assert cli("verify", "--all", "-r", str(repo_dir)).code == 0
    left = repo_files(repo_dir)
    assert len(left) == 6 and not any("/." in f or f.startswith(".") for f in left), left


def test_volumes_sharing_a_container_are_read_together_once_stopped(
        client, make_volume, mountpoint, names, run_container, cli, repo_dir):
    """Two volumes of one container form one group: under --jobs the container is
    stopped once for both and started again once; another container's volume runs
    beside them."""
    a, b, c = (make_volume(s).name for s in ("a", "b", "c"))
    for name in (a, b, c):
        fill(mountpoint(name), {"data": name.encode()})
    both = client.containers.run(
        ensure_busybox(client), ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        name=names("both"), detach=True, network_mode="none", labels={TEST_LABEL: "1"},
        volumes={a: {"bind": "/a", "mode": "rw"}, b: {"bind": "/b", "mode": "rw"}})
    other = run_container("other", c)
    since = time.time()
    result = cli("backup", a, c, b, "--stop", "--jobs", "2", "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    out = {v["volume"]: v for v in json.loads(result.stdout)["volumes"]}
    assert out[a]["stopped"] == out[b]["stopped"] == [both.name]
    assert out[c]["stopped"] == [other.name]
    seen = [(act, n) for _, act, n in events(client, since, {both.id, other.id})
            if act in ("die", "start") and not n.startswith("volbackup-helper-")]
    for container in (both, other):
        assert [act for act, n in seen if n == container.name] == ["die", "start"], seen
        container.reload()
        assert container.status == "running"


@pytest.mark.parametrize("via", list(PATHS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_parallel_reads_cleans_up_every_one(make_volume, mountpoint, client,
                                                          repo_dir, cli, sig, via):
    """Reads going at the time leave nothing; a volume that had finished just before may
    keep its snapshot, which must then be whole."""
    volumes = []
    for i in range(3):
        volume = make_volume(f"big{i}").name
        random_file(mountpoint(volume))  # long enough that two reads are cut
        volumes.append(volume)
    proc = start("backup", *volumes, "--jobs", "2", "-r", str(repo_dir), PATHS[via])
    reads = (lambda: tar_children(proc.pid)) if via == "direct" else \
        (lambda: helpers_of(client, proc.pid))
    wait_until(lambda: len(reads()) >= 2, proc, "two reads going at once")
    assert len(reads()) == 2 and proc.poll() is None, "two reads should be going at once"
    tars = tar_children(proc.pid)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert one_line_error(stderr).endswith(
        "interrupted by SIGTERM" if sig == signal.SIGTERM else "interrupted")
    assert helpers_of(client, proc.pid) == []
    assert gone(tars), "a direct read's tar outlived the run"
    left = repo_files(repo_dir)
    archives = {f.removesuffix(".tar.zst") for f in left if f.endswith(".tar.zst")}
    manifests = {f.removesuffix(".json") for f in left if f.endswith(".json")}
    assert archives == manifests and len(left) == 2 * len(archives), \
        f"a temp file, lock or half snapshot was left: {left}"
    assert len(archives) < len(volumes)
    if archives:
        assert cli("verify", "--all", "-r", str(repo_dir)).code == 0

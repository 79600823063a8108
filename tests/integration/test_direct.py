"""Which way a plain local volume is read or written: GNU tar on this host ("direct") or
the engine's archive endpoints ("engine"), and that either way gives the same snapshot."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest
from docker.types import Mount

from tests.integration.conftest import TEST_LABEL
from tests.integration.helpers import (PATHS, contents, fill, one_line_error, repo_files,
                                       tar_first_on_path)
from tests.integration.images import ensure_busybox
from tests.integration.slow_engine import SlowEngine
from volbackup.docker.helpers import PID_LABEL

FILES = {"table": b"rows\n", "sub/index": b"\x00" * 5000 + b"end"}


def backed_up_via(cli, repo_dir, *args: str) -> str:
    result = cli("backup", *args, "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    vias = {v["via"] for v in json.loads(result.stdout)["volumes"]}
    assert len(vias) == 1, vias
    return vias.pop()


@pytest.mark.parametrize("options,container_state,expected", [
    ([], None, "direct"),
    ([], "running", "engine"),           # a running container may write during the read
    (["--stop"], "running", "direct"),
    (["--pause"], "running", "direct"),  # frozen: it cannot write
    ([], "exited", "direct"),
    ([], "paused", "direct"),
    (["--direct"], "running", "direct"),
    (["--no-direct"], None, "engine"),
], ids=["idle", "running", "stop", "pause", "exited", "paused", "direct-forced", "no-direct"])
def test_default_reads_directly_unless_a_running_container_may_write(
        client, make_volume, mountpoint, run_container, cli, repo_dir, names, options,
        container_state, expected):
    volume = make_volume("db")
    fill(mountpoint(volume.name), FILES)
    container = run_container("db", volume.name) if container_state else None
    if container_state == "exited":
        container.stop(timeout=0)
    elif container_state == "paused":
        container.pause()
    try:
        assert backed_up_via(cli, repo_dir, volume.name, *options) == expected
    finally:
        if container_state == "paused":
            container.unpause()
    target = names("copy")
    assert cli("restore", volume.name, "--as", target, "-r", str(repo_dir)).code == 0
    assert contents(mountpoint(target)) == FILES


def test_a_container_bind_follows_the_same_rule(client, names, tmp_path, cli, repo_dir):
    www = tmp_path / "www"
    fill(str(www), {"index.html": b"<h1>hi</h1>\n"})
    web = client.containers.run(ensure_busybox(client), ["sh", "-c", "sleep 3600 & wait"],
                                name=names("web"), detach=True, network_mode="none",
                                labels={TEST_LABEL: "1"},
                                mounts=[Mount("/srv/www", str(www), type="bind")])
    assert backed_up_via(cli, repo_dir, "--container", web.name) == "engine"
    assert backed_up_via(cli, repo_dir, "--container", web.name, "--stop") == "direct"
    target = names("www")
    assert cli("restore", f"{web.name}-srv-www", "--as", target, "-r", str(repo_dir)).code == 0
    assert contents(client.api.inspect_volume(target)["Mountpoint"]) == {
        "index.html": b"<h1>hi</h1>\n"}


def test_a_directory_that_is_not_the_engines_is_never_read_or_written_directly(
        make_volume, mountpoint, cli, repo_dir, names, client):
    """volbackup in its own mount namespace (as in a container with the engine's socket
    mounted) finds, at the volume's path, a decoy directory: the engine's volume is read
    and written through the engine, never the decoy."""
    volume = make_volume("real")
    fill(mountpoint(volume.name), FILES)
    target = names("restored")

    def unshared(*args: str) -> dict:
        decoy = mountpoint(volume.name)
        volumes_area = os.path.dirname(os.path.dirname(decoy))  # <data-root>/volumes
        script = (f"mount -t tmpfs decoy {shlex.quote(volumes_area)} && mkdir -p {decoy} && "
                  f"echo decoy > {decoy}/decoy && "
                  f"{shlex.join([sys.executable, '-m', 'volbackup', *args, '--json'])}")
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["volumes"][0]

    backed_up = unshared("backup", volume.name, "-r", str(repo_dir))
    assert backed_up["via"] == "engine"
    restored = unshared("restore", volume.name, "--as", target, "-r", str(repo_dir))
    assert restored["via"] == "engine"
    assert contents(mountpoint(target)) == FILES
    assert not os.path.exists(os.path.join(mountpoint(volume.name), "decoy"))


def test_an_engine_reached_through_a_forwarder_is_never_read_directly(
        make_volume, mountpoint, cli, repo_dir, names, tmp_path):
    """A unix socket served by something other than the engine (socat, `ssh -L`, here a
    proxy in this test process) may lead to another host's engine, whose volume of the same
    name is not the directory found here: such an engine is read and written through."""
    volume = make_volume("fwd")
    fill(mountpoint(volume.name), FILES)
    target = names("copy")
    with SlowEngine(tmp_path / "forward.sock", rb"^never$") as forwarder:
        env = {"DOCKER_HOST": forwarder.url}
        backed_up = cli("backup", volume.name, "-r", str(repo_dir), "--json", env=env)
        assert backed_up.code == 0, backed_up.stderr
        assert json.loads(backed_up.stdout)["volumes"][0]["via"] == "engine"
        restored = cli("restore", volume.name, "--as", target, "-r", str(repo_dir), "--json",
                       env=env)
        assert restored.code == 0, restored.stderr
        assert json.loads(restored.stdout)["volumes"][0]["via"] == "engine"
    assert contents(mountpoint(target)) == FILES
    assert backed_up_via(cli, repo_dir, volume.name) == "direct"  # the engine's own socket


def helpers_created(client, since: float, pid: int) -> int:
    """Helpers that the volbackup process `pid` created since `since` (not other runs')."""
    found = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                          filters={"type": "container", "event": "create",
                                   "label": f"{PID_LABEL}={pid}"})
    return sum(1 for e in found if e["timeNano"] / 1e9 >= since
               and e["Actor"]["Attributes"].get("name", "").startswith("volbackup-helper-"))


@pytest.mark.parametrize("via,helpers", [("direct", 0), ("engine", 1)])
def test_a_direct_restore_needs_no_helper(client, make_volume, mountpoint, cli, repo_dir,
                                          names, via, helpers):
    """The fresh volume's directory is checked for emptiness and filled on this host."""
    volume = make_volume("src")
    fill(mountpoint(volume.name), FILES)
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    target = names("copy")
    since = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "volbackup", "restore", volume.name, "--as",
                             target, "-r", str(repo_dir), "--json", PATHS[via]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["volumes"][0]["via"] == via
    assert helpers_created(client, since, proc.pid) == helpers
    assert contents(mountpoint(target)) == FILES


# A GNU tar that breaks: --create sends part of the stream (all of it with TAR_SENDS_ALL=1,
# endless garbage with TAR_GARBAGE=1) and exits 1, as when a file changes while read;
# --extract takes part of it and exits 2, as when the disk fills.
FAILING_TAR = """#!/bin/sh
case " $* " in
  *" --version "*) exec {tar} --version ;;
  *" --create "*) if [ "$TAR_GARBAGE" = 1 ]; then exec yes "not a tar header"; fi
                  if [ "$TAR_SENDS_ALL" = 1 ]; then {tar} "$@"; else {tar} "$@" | head -c 70000; fi
                  echo "tar: ./table: file changed as we read it" >&2; exit 1 ;;
  *) head -c 70000 > /dev/null
     echo "tar: ./sub/index: Cannot write: No space left on device" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def failing_tar(tmp_path) -> dict:
    """Environment whose PATH finds FAILING_TAR first."""
    return tar_first_on_path(tmp_path, FAILING_TAR)


def test_a_direct_read_that_breaks_leaves_no_snapshot(make_volume, mountpoint, cli, repo_dir,
                                                      failing_tar):
    volume = make_volume("breaks")
    fill(mountpoint(volume.name), {"big": os.urandom(1 << 20), **FILES})
    result = cli("backup", volume.name, "--retries", "1", "-r", str(repo_dir), "--json",
                 env=failing_tar)
    # every attempt broke: the stream ended early, and tar's own reason is the message
    assert result.code == 7, result.stderr
    assert "file changed as we read it" in one_line_error(result.stderr)
    (out,) = json.loads(result.stdout)["volumes"]
    assert (out["via"], out["attempts"], out["snapshot"]) == ("direct", 2, None)
    assert out["message"].startswith("every read broke: attempt 1: tar could not read ")
    assert "(exit 1): tar: ./table: file changed as we read it" in out["message"]
    assert repo_files(repo_dir) == [], "an archive, temp file or lock was left"


def test_a_tar_that_sends_garbage_is_stopped_and_leaves_no_snapshot(make_volume, mountpoint, cli,
                                                                     repo_dir, failing_tar):
    """The tar check stops reading a stream that is not tar; the tar that is still writing
    is not waited for forever, and the check's reason is the message."""
    volume = make_volume("garbage")
    fill(mountpoint(volume.name), FILES)
    result = cli("backup", volume.name, "--retries", "0", "-r", str(repo_dir), "--json",
                 env={**failing_tar, "TAR_GARBAGE": "1"})
    assert result.code == 6, result.stderr
    assert "corrupt tar header" in one_line_error(result.stderr)
    assert repo_files(repo_dir) == [], "an archive, temp file or lock was left"


def test_a_complete_stream_from_a_failing_tar_is_not_a_snapshot(make_volume, mountpoint, cli,
                                                                repo_dir, failing_tar):
    """The stream checks out, but tar said it went wrong: its exit code, read when the
    stream is closed inside the archive writer, discards the archive."""
    volume = make_volume("complete")
    fill(mountpoint(volume.name), FILES)
    result = cli("backup", volume.name, "--retries", "0", "-r", str(repo_dir), "--json",
                 env={**failing_tar, "TAR_SENDS_ALL": "1"})
    assert result.code == 7, result.stderr
    assert "file changed as we read it" in one_line_error(result.stderr)
    (out,) = json.loads(result.stdout)["volumes"]
    assert (out["via"], out["attempts"], out["snapshot"]) == ("direct", 1, None)
    assert repo_files(repo_dir) == [], "an archive, temp file or lock was left"


def test_a_direct_fill_that_breaks_leaves_no_volume(make_volume, mountpoint, cli, repo_dir,
                                                    names, client, failing_tar):
    volume = make_volume("src")
    fill(mountpoint(volume.name), {"big": os.urandom(1 << 20), **FILES})
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    target = names("half")
    result = cli("restore", volume.name, "--as", target, "-r", str(repo_dir), env=failing_tar)
    assert result.code == 1
    assert "No space left on device" in one_line_error(result.stderr)
    assert [v for v in client.volumes.list() if v.name == target] == []
    assert len(repo_files(repo_dir)) == 3   # the snapshot (archive, catalogue, manifest) untouched
    assert cli("verify", "--all", "-r", str(repo_dir)).code == 0

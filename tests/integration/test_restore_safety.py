"""A restore must not be a way in, must not lose what it replaces, and must own its target.

- Driver options come from the repository, which anyone who can write to it controls: the
  ones that point outside the engine's volume area need --trust-driver-options.
- restore --force keeps the replaced volume's contents in a safety snapshot, and refuses
  before removing anything when the new contents cannot fit.
- Two restores into one name: exactly one wins; the other changes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import TEST_LABEL
from tests.integration.helpers import contents, fill, one_line_error
from volbackup.engine import CREATED_LABEL, HELPER_IMAGE, HELPER_LABEL, HOST_LABEL, PID_LABEL

FILES = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40}


def manifest_path(repo_dir: Path, volume: str) -> Path:
    (path,) = Path(repo_dir, "snapshots", volume).glob("*.json")
    return path


def craft(repo_dir: Path, volume: str, **fields) -> None:
    """Rewrite the manifest of `volume`'s only snapshot, as a writer of the repository can."""
    path = manifest_path(repo_dir, volume)
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.fixture
def setuid_snapshot(make_volume, mountpoint, cli, repo_dir, client):
    """A snapshot holding a setuid-root file; the volume itself is gone afterwards."""
    volume = make_volume("src")
    root = mountpoint(volume.name)
    fill(root, FILES)
    fill(root, {"evil": b"#!/bin/sh\necho owned\n"})
    os.chmod(os.path.join(root, "evil"), 0o4755)
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    volume.remove()
    return volume.name


def volume_exists(client, name: str) -> bool:
    return any(v.name == name for v in client.volumes.list())


# -- 1. driver options from the repository ------------------------------------------------

def test_a_crafted_bind_manifest_creates_nothing_without_the_flag(setuid_snapshot, cli, repo_dir,
                                                                  client, tmp_path):
    host_dir = tmp_path / "usr-local-sbin"   # empty, as /usr/local/sbin usually is
    host_dir.mkdir()
    bind = {"type": "none", "o": "bind", "device": str(host_dir)}
    craft(repo_dir, setuid_snapshot, driver_options=bind)

    result = cli("restore", setuid_snapshot, "-r", str(repo_dir))
    assert result.code == 13, result.stderr
    line = one_line_error(result.stderr)
    assert f"device={host_dir}" in line and "o=bind" in line
    assert "--trust-driver-options" in line and "--drop-driver-options" in line
    assert not volume_exists(client, setuid_snapshot)
    assert os.listdir(host_dir) == []

    result = cli("restore", "--all", "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    (out,) = [v for v in json.loads(result.stdout)["volumes"] if v["volume"] == setuid_snapshot]
    assert out["status"] == "skipped" and "--trust-driver-options" in out["message"]
    assert "a bind mount of host path" in out["message"]
    assert not volume_exists(client, setuid_snapshot)
    assert os.listdir(host_dir) == []


def test_trusted_options_are_announced_then_applied(setuid_snapshot, cli, repo_dir, client,
                                                    tmp_path):
    host_dir = tmp_path / "storage"
    host_dir.mkdir()
    bind = {"type": "none", "o": "bind", "device": str(host_dir)}
    craft(repo_dir, setuid_snapshot, driver_options=bind)
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir), "--trust-driver-options",
                 "--json")
    assert result.code == 0, result.stderr
    assert f"volume {setuid_snapshot}: creating it with driver local" in result.stderr
    assert "a bind mount of host path" in result.stderr
    (out,) = json.loads(result.stdout)["volumes"]
    assert out["driver_options"] == bind and "bind mount" in out["external_storage"]
    assert client.api.inspect_volume(setuid_snapshot)["Options"] == bind
    assert contents(str(host_dir))["a.txt"] == b"alpha\n"


def test_drop_driver_options_restores_a_plain_volume(setuid_snapshot, cli, repo_dir, client,
                                                     mountpoint, tmp_path, names):
    host_dir = tmp_path / "never"
    host_dir.mkdir()
    craft(repo_dir, setuid_snapshot, driver="local",
          driver_options={"type": "none", "o": "bind", "device": str(host_dir)})
    target = names("plain")
    result = cli("restore", setuid_snapshot, "--as", target, "--drop-driver-options",
                 "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert not client.api.inspect_volume(target)["Options"]
    assert contents(mountpoint(target))["a.txt"] == b"alpha\n"
    mode = os.stat(os.path.join(mountpoint(target), "evil")).st_mode
    assert mode & stat.S_ISUID      # kept, but inside the engine's volume area
    assert os.listdir(host_dir) == []


def test_cifs_passwords_are_never_printed(setuid_snapshot, cli, repo_dir, client):
    cifs = {"type": "cifs", "device": "//192.0.2.1/share",
            "o": "addr=192.0.2.1,username=bob,password=hunter2,credentials=/root/smb"}
    craft(repo_dir, setuid_snapshot, driver_options=cifs)
    for extra in ([], ["--json"]):
        result = cli("restore", setuid_snapshot, "-r", str(repo_dir), *extra)
        assert result.code == 13, result.stderr
        assert "password=***" in one_line_error(result.stderr)
        assert "hunter2" not in result.stdout + result.stderr
        assert "/root/smb" not in result.stdout + result.stderr
    assert not volume_exists(client, setuid_snapshot)
    # trusted: the engine's mount error repeats the options; the secret is still hidden
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir), "--trust-driver-options")
    assert result.code == 7, result.stderr
    assert "failed to mount local volume" in result.stderr and "password=***" in result.stderr
    assert "hunter2" not in result.stderr and "/root/smb" not in result.stderr
    assert not volume_exists(client, setuid_snapshot)


def test_a_plugin_driver_is_refused(setuid_snapshot, cli, repo_dir, client):
    craft(repo_dir, setuid_snapshot, driver="evil/plugin", driver_options={})
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir))
    assert result.code == 13, result.stderr
    assert "volume plugin 'evil/plugin'" in one_line_error(result.stderr)
    assert not volume_exists(client, setuid_snapshot)


def test_migrate_refuses_bind_options_before_creating_anything(make_volume, cli, client, tmp_path,
                                                               names):
    host_dir = tmp_path / "bound"
    host_dir.mkdir()
    fill(str(host_dir), FILES)
    source = make_volume("bound", driver_opts={"type": "none", "o": "bind",
                                               "device": str(host_dir)})
    target = names("moved")
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    result = cli("migrate", source.name, "--as", target, "--to-host", sock)
    assert result.code == 13, result.stderr
    assert "a bind mount of host path" in one_line_error(result.stderr)
    assert not volume_exists(client, target)


# -- 3. two restores into one name ----------------------------------------------------------

class SlowProxy:
    """A unix-socket proxy in front of the engine that holds every `POST .../volumes/create`
    back for `delay` seconds, like a busy engine (volume create is idempotent, so two runs
    that both create the same name both succeed)."""

    def __init__(self, path: str, upstream: str, delay: float):
        self.path, self.upstream, self.delay = path, upstream, delay
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(32)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                first_line = data.split(b"\r\n", 1)[0]
                if requests and first_line.startswith(b"POST ") and b"/volumes/create" in first_line:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def slow_engine(tmp_path):
    """DOCKER_HOST of a proxy that answers `volume create` 2 s late."""
    upstream = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not upstream.startswith("unix://"):
        pytest.skip("the proxy fronts a unix-socket engine")
    path = str(tmp_path / "slow.sock")
    proxy = SlowProxy(path, upstream.removeprefix("unix://"), delay=2.0)
    yield f"unix://{path}"
    proxy.close()


def test_two_restores_into_one_name_exactly_one_wins(make_volume, mountpoint, cli, repo_dir,
                                                     names, client, slow_engine):
    snapshots = {}
    for stem, files in (("a", {"a-only": b"A\n", "same": b"from A\n"}),
                        ("b", {"b-only": b"B\n", "same": b"from B\n"})):
        volume = make_volume(stem)
        fill(mountpoint(volume.name), files)
        assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
        snapshots[volume.name] = files
    target = names("t")
    env = {**os.environ, "DOCKER_HOST": slow_engine}
    procs = [subprocess.Popen([sys.executable, "-m", "volbackup", "restore", volume, "--as",
                               target, "-r", str(repo_dir), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for volume in snapshots]
    done = [(p, *p.communicate(timeout=300)) for p in procs]
    winners = [(p, out) for p, out, _ in done if p.returncode == 0]
    losers = [(p, err) for p, _, err in done if p.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(p.returncode, e) for p, _, e in done]
    (winner, out), (loser, err) = winners[0], losers[0]
    assert loser.returncode == 14, err
    line = one_line_error(err)
    assert f"volume {target} is being restored or migrated into by another volbackup run " \
           f"(pid {winner.pid} " in line
    restored_from = json.loads(out)["volumes"][0]["snapshot"].split("@")[0]
    assert contents(mountpoint(target)) == snapshots[restored_from]
    assert client.api.containers(all=True, filters={"name": f"volbackup-claim-{target}"}) == []


def claim_container(client, target: str, pid: int, host: str):
    """A claim on `target` as a run with `pid` on `host` leaves it (the helper label lets
    the no_helpers_left fixture remove it if the test fails)."""
    return client.api.create_container(
        HELPER_IMAGE, command=["volbackup-claim"], name=f"volbackup-claim-{target}",
        labels={HELPER_LABEL: "claim", PID_LABEL: str(pid), HOST_LABEL: host,
                CREATED_LABEL: str(int(time.time())), TEST_LABEL: "1"})


def test_a_live_claim_refuses_and_a_dead_one_is_swept(setuid_snapshot, cli, repo_dir, client,
                                                      names, mountpoint):
    target = names("claimed")
    held = claim_container(client, target, os.getpid(), socket.gethostname())
    try:
        result = cli("restore", setuid_snapshot, "--as", target, "-r", str(repo_dir))
        assert result.code == 14, result.stderr
        assert f"(pid {os.getpid()} on host {socket.gethostname()}, since " \
               in one_line_error(result.stderr)
        assert not volume_exists(client, target)
    finally:
        client.api.remove_container(held["Id"], force=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim_container(client, target, dead.pid, socket.gethostname())  # a killed run's claim
    result = cli("restore", setuid_snapshot, "--as", target, "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert contents(mountpoint(target))["a.txt"] == b"alpha\n"

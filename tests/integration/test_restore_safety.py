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
import stat
from pathlib import Path

import pytest

from tests.integration.helpers import contents, fill, one_line_error

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

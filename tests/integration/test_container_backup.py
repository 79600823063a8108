"""`backup --container`: every volume and bind mount of a container, nested mounts apart."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from docker.types import Mount

from tests.integration.helpers import PATHS, contents, fill


@pytest.mark.parametrize("with_tmpfs", [False, True], ids=["volumes_from", "tmpfs-direct"])
def test_backs_up_volumes_and_binds_and_restores_them(
        make_volume, make_container, mountpoint, cli, repo_dir, tmp_path, names, with_tmpfs):
    app, cache = make_volume("app", labels={"k": "v"}), make_volume("cache")
    www = tmp_path / "www"
    www.mkdir()
    fill(str(www), {"index.html": b"<h1>hi</h1>\n"})
    fill(mountpoint(app.name), {"db/data": b"rows\n"})
    fill(mountpoint(cache.name), {"cached": b"cache entry\n"})
    mounts = [Mount("/var/lib/app", app.name, type="volume"),
              Mount("/var/lib/app/cache", cache.name, type="volume"),
              Mount("/srv/www", str(www), type="bind", read_only=True)]
    if with_tmpfs:  # engine 20.10 refuses volumes_from for these; direct mounts instead
        mounts.append(Mount("/scratch", None, type="tmpfs"))
    container = make_container("web", mounts=mounts)
    result = cli("backup", "--container", container.name, "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    volumes = {v["volume"]: v for v in json.loads(result.stdout)["volumes"]}
    bind_name = f"{container.name}-srv-www"
    assert set(volumes) == {app.name, cache.name, bind_name}

    manifests = {v: json.loads(cli("show", v, "-r", str(repo_dir), "--json").stdout)["manifest"]
                 for v in volumes}
    assert manifests[app.name]["mount_path"] == "/var/lib/app"
    assert manifests[app.name]["source_container"] == container.name
    assert manifests[app.name]["labels"] == {"k": "v"}
    assert manifests[bind_name]["source_kind"] == "bind"
    assert manifests[bind_name]["bind_path"] == str(www)

    restored = {}
    for volume in volumes:
        target = names("restored")
        assert cli("restore", volume, "--as", target, "-r", str(repo_dir)).code == 0
        restored[volume] = contents(mountpoint(target))
    assert restored[app.name] == {"db/data": b"rows\n"}, "the nested cache volume leaked in"
    assert restored[cache.name] == {"cached": b"cache entry\n"}
    assert restored[bind_name] == {"index.html": b"<h1>hi</h1>\n"}


@pytest.mark.parametrize("via", list(PATHS))
def test_a_bind_of_one_file_is_a_snapshot_of_that_file_and_sockets_are_skipped(
        make_container, mountpoint, cli, repo_dir, tmp_path, names, via):
    """A config file bound into a container (and the engine's socket, a FIFO) is common.
    The file's snapshot holds the root and that one file and restores; a socket or FIFO
    holds no data: skipped with the reason, not a failure of the container's backup."""
    conf = tmp_path / "app.conf"
    conf.write_bytes(b"listen 8080\n")
    conf.chmod(0o640)
    os.chown(conf, 1234, 5678)
    os.mkfifo(tmp_path / "queue")
    agent = socket.socket(socket.AF_UNIX)
    agent.bind(str(tmp_path / "agent.sock"))
    www = tmp_path / "www"
    www.mkdir()
    fill(str(www), {"index.html": b"<h1>hi</h1>\n"})
    (tmp_path / "current.conf").symlink_to(conf)  # the bind follows it; tar must not store it
    try:
        container = make_container("web", mounts=[
            Mount("/etc/app/config.yml", str(conf), type="bind", read_only=True),
            Mount("/etc/app/current.yml", str(tmp_path / "current.conf"), type="bind"),
            Mount("/run/agent.sock", str(tmp_path / "agent.sock"), type="bind"),
            Mount("/run/queue", str(tmp_path / "queue"), type="bind"),
            Mount("/srv/www", str(www), type="bind")])
        result = cli("backup", "--container", container.name, "-r", str(repo_dir), "--json",
                     PATHS[via])
        text = cli("backup", "--container", container.name, "-r", str(repo_dir), PATHS[via])
    finally:
        agent.close()
    assert result.code == 0, result.stderr
    volumes = {v["volume"]: v for v in json.loads(result.stdout)["volumes"]}
    name = container.name
    config = volumes[f"{name}-etc-app-config.yml"]
    assert (config["status"], config["via"]) == ("ok", via), config
    assert volumes[f"{name}-srv-www"]["status"] == "ok"
    for mount, kind in (("run-agent.sock", "socket"), ("run-queue", "fifo")):
        skipped = volumes[f"{name}-{mount}"]
        assert skipped["status"] == "skipped" and skipped["snapshot"] is None, skipped
        assert f"is a bind mount of a {kind}" in skipped["message"]
        assert skipped["exit_code"] == 0
    assert text.code == 0, text.stderr
    assert f"{name}-run-agent.sock: skipped: /run/agent.sock is a bind mount of a socket" \
        in text.stdout

    manifest = json.loads(cli("show", config["snapshot"], "-r", str(repo_dir), "--json")
                          .stdout)["manifest"]
    assert (manifest["source_kind"], manifest["bind_path"], manifest["mount_path"]) == \
        ("bind", str(conf), "/etc/app/config.yml")
    assert manifest["entries"] == 2, "the root and the file, nothing of the file's directory"
    target = names("conf")
    restored = cli("restore", config["snapshot"], "--as", target, "-r", str(repo_dir))
    assert restored.code == 0, restored.stderr
    assert contents(mountpoint(target)) == {"app.conf": b"listen 8080\n"}
    st = os.stat(os.path.join(mountpoint(target), "app.conf"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)

    linked = volumes[f"{name}-etc-app-current.yml"]
    assert linked["status"] == "ok", linked
    target = names("linked")
    assert cli("restore", linked["snapshot"], "--as", target, "-r", str(repo_dir)).code == 0
    assert not os.path.islink(os.path.join(mountpoint(target), "current.conf"))
    assert contents(mountpoint(target)) == {"current.conf": b"listen 8080\n"}


def test_container_without_mounts_is_an_error(make_container, cli, repo_dir):
    container = make_container("bare")
    result = cli("backup", "--container", container.name, "-r", str(repo_dir))
    assert result.code == 4
    assert "has no volumes or bind mounts" in result.stderr


def test_volume_and_container_together_is_a_usage_error(cli, repo_dir):
    result = cli("backup", "v", "--container", "c", "-r", str(repo_dir))
    assert result.code == 2

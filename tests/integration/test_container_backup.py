"""`backup --container`: every volume and bind mount of a container, nested mounts apart."""

from __future__ import annotations

import json

import pytest
from docker.types import Mount

from tests.integration.helpers import contents, fill


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


def test_container_without_mounts_is_an_error(make_container, cli, repo_dir):
    container = make_container("bare")
    result = cli("backup", "--container", container.name, "-r", str(repo_dir))
    assert result.code == 4
    assert "has no volumes or bind mounts" in result.stderr


def test_volume_and_container_together_is_a_usage_error(cli, repo_dir):
    result = cli("backup", "v", "--container", "c", "-r", str(repo_dir))
    assert result.code == 2

"""`volbackup migrate` between two real engines on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from docker.types import Mount

from tests.integration.conftest import PREFIX
from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.helpers import contents, fill, one_line_error
from tests.integration.second_engine import second_engine  # noqa: F401 (fixture)
from tests.integration.ssh_engine import ssh_engine  # noqa: F401 (fixture)
from tests.integration.test_run_failures import failing_for
from volbackup.docker.engine import Engine
from volbackup.docker.helpers import HELPER_LABEL, PID_LABEL
from volbackup.ops import migrate as migrate_ops


@pytest.fixture
def target(second_engine):  # noqa: F811
    """The second engine; volumes the test made there (by prefix) are removed after it."""
    client = second_engine["client"]
    yield second_engine
    for volume in client.volumes.list():
        if volume.name.startswith(PREFIX):
            volume.remove(force=True)
    assert client.containers.list(all=True, filters={"label": HELPER_LABEL}) == []


@pytest.mark.parametrize("wire", ["none", "gzip"])
def test_fidelity_corpus_arrives_whole_and_verified(make_volume, mountpoint, cli, target, wire):
    source = make_volume("corpus", labels={"com.example": "moved"})
    write_corpus(mountpoint(source.name))
    result = cli("migrate", source.name, "--to-host", target["url"], "--verify",
                 "--wire-compression", wire, "--json")
    assert result.code == 0, result.stderr
    (moved,) = json.loads(result.stdout)["volumes"]
    assert moved["status"] == "migrated" and moved["verified"] is True
    attrs = target["client"].api.inspect_volume(source.name)
    assert attrs["Labels"] == {"com.example": "moved"}
    assert differences(tree(mountpoint(source.name)), tree(attrs["Mountpoint"])) == []


def test_non_empty_target_is_refused_then_replaced_with_force(make_volume, mountpoint, cli,
                                                              target):
    source = make_volume("app")
    fill(mountpoint(source.name), {"v": b"new\n"})
    existing = target["client"].volumes.create(source.name)
    there = target["client"].api.inspect_volume(existing.name)["Mountpoint"]
    fill(there, {"v": b"old\n", "stale": b"only on the target\n"})

    result = cli("migrate", source.name, "--to-host", target["url"])
    assert result.code == 8
    assert "not empty" in one_line_error(result.stderr)
    assert contents(there) == {"v": b"old\n", "stale": b"only on the target\n"}

    result = cli("migrate", source.name, "--to-host", target["url"], "--force")
    assert result.code == 0, result.stderr
    there = target["client"].api.inspect_volume(source.name)["Mountpoint"]
    assert contents(there) == {"v": b"new\n"}


def test_as_and_container(make_volume, make_container, mountpoint, cli, target, tmp_path):
    data = make_volume("data")
    fill(mountpoint(data.name), {"rows": b"1,2,3\n"})
    site = tmp_path / "site"
    site.mkdir()
    fill(str(site), {"index.html": b"<p>hi</p>\n"})
    ctr = make_container("svc", mounts=[Mount("/var/lib/data", data.name, type="volume"),
                                        Mount("/srv", str(site), type="bind")])
    result = cli("migrate", "--container", ctr.name, "--to-host", target["url"], "--json")
    assert result.code == 0, result.stderr
    names = {v["volume"] for v in json.loads(result.stdout)["volumes"]}
    assert names == {data.name, f"{ctr.name}-srv"}
    moved = target["client"].api.inspect_volume(f"{ctr.name}-srv")["Mountpoint"]
    assert contents(moved) == {"index.html": b"<p>hi</p>\n"}

    copy = f"{data.name}-copy"
    assert cli("migrate", data.name, "--as", copy, "--to-host", target["url"]).code == 0
    assert contents(target["client"].api.inspect_volume(copy)["Mountpoint"]) == {
        "rows": b"1,2,3\n"}


def test_container_with_a_file_bind_and_a_fifo_bind(make_container, cli, target, tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_bytes(b"listen 8080\n")
    os.mkfifo(tmp_path / "queue")
    ctr = make_container("svc", mounts=[Mount("/etc/app.conf", str(conf), type="bind"),
                                        Mount("/run/queue", str(tmp_path / "queue"), type="bind")])
    result = cli("migrate", "--container", ctr.name, "--to-host", target["url"], "--json")
    assert result.code == 0, result.stderr
    status = {v["volume"]: v["status"] for v in json.loads(result.stdout)["volumes"]}
    assert status == {f"{ctr.name}-etc-app.conf": "migrated", f"{ctr.name}-run-queue": "skipped"}
    moved = target["client"].api.inspect_volume(f"{ctr.name}-etc-app.conf")["Mountpoint"]
    assert contents(moved) == {"app.conf": b"listen 8080\n"}


def test_missing_source_volume_creates_nothing(cli, target, client):
    result = cli("migrate", "vbtest-no-such-volume", "--to-host", target["url"])
    assert result.code == 4
    assert "no such volume" in one_line_error(result.stderr)
    assert [v for v in target["client"].volumes.list() if v.name == "vbtest-no-such-volume"] == []


def test_unreachable_target_creates_nothing_anywhere(make_volume, cli, client, tmp_path):
    source = make_volume("stay")
    proc = subprocess.Popen([sys.executable, "-m", "volbackup", "migrate", source.name,
                             "--to-host", f"unix://{tmp_path}/none.sock"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 7
    assert "cannot reach the Docker engine" in one_line_error(stderr)
    # only this run's helpers: other sessions' runs may come and go meanwhile
    left = client.api.containers(all=True, filters={"label": HELPER_LABEL})
    assert [c["Names"] for c in left if c["Labels"].get(PID_LABEL) == str(proc.pid)] == []


@pytest.mark.parametrize("args", [
    ["v"],                                           # no target
    ["v", "--to-host", "unix:///x", "--to-context", "c"],
    ["v", "w", "--as", "x", "--to-host", "unix:///x"],
    ["--to-host", "unix:///x"],                      # nothing to migrate
    ["v", "--wire-compression", "zstd", "--to-host", "unix:///x"],
])
def test_usage_errors(cli, args):
    assert cli("migrate", *args).code == 2


def test_unknown_context(cli):
    result = cli("migrate", "v", "--to-context", "vbtest-no-such-context")
    assert result.code == 4
    assert "no such Docker context" in one_line_error(result.stderr)


def test_project_with_stop_on_the_source(client, make_volume, cli, target, names):
    from tests.integration.conftest import TEST_LABEL
    from tests.integration.images import ensure_busybox

    project_name = names("proj")  # unique: other test sessions may share the engine
    project = {"com.docker.compose.project": project_name}
    data = make_volume("projdata", labels=project)
    fill(client.api.inspect_volume(data.name)["Mountpoint"], {"db": b"state\n"})
    app = client.containers.run(
        ensure_busybox(client), ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        name=names("app"), detach=True, network_mode="none",
        labels={TEST_LABEL: "1", "volbackup.pre": "echo flushed"},
        volumes={data.name: {"bind": "/data", "mode": "rw"}})
    result = cli("migrate", "--project", project_name, "--stop", "--to-host", target["url"],
                 "--verify", "--json")
    assert result.code == 0, result.stderr
    (moved,) = json.loads(result.stdout)["volumes"]
    assert moved["stopped"] == [app.name] and moved["verified"]
    assert moved["hooks"][0]["output"].strip() == "flushed"
    assert client.api.inspect_container(app.id)["State"]["Running"]
    there = target["client"].api.inspect_volume(data.name)
    assert there["Labels"] == project and contents(there["Mountpoint"]) == {"db": b"state\n"}


def test_over_ssh_with_gzip_on_the_wire(make_volume, mountpoint, cli, ssh_engine):  # noqa: F811
    source = make_volume("viassh", labels={"moved": "over ssh"})
    write_corpus(mountpoint(source.name))
    result = cli("migrate", source.name, "--to-host", ssh_engine["url"], "--verify", "--json",
                 env=ssh_engine["env"])
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    shown = ssh_engine["url"].replace("root@", "")  # scheme and host: no user (volbackup.urls)
    assert out["target"] == shown and out["volumes"][0]["verified"] is True
    attrs = ssh_engine["client"].api.inspect_volume(source.name)
    assert attrs["Labels"] == {"moved": "over ssh"}
    assert differences(tree(mountpoint(source.name)), tree(attrs["Mountpoint"])) == []


def test_an_error_from_outside_volbackup_fails_one_volume_and_the_next_migrates(
        make_volume, mountpoint, engine, target):
    """A non-volbackup exception (disk full, as a progress reporter of ours raises it)
    fails that volume alone, with exit code 1; the next volume still migrates."""
    a, b = make_volume("a").name, make_volume("b").name
    for name in (a, b):
        fill(mountpoint(name), {"f": name.encode()})
    result = migrate_ops.migrate(engine, Engine.connect(target["url"]), [a, b],
                                 progress=failing_for(a, at_start=True))
    assert [(v.volume, v.status) for v in result.volumes] == [(a, "failed"), (b, "migrated")]
    assert result.volumes[0].error.exit_code == 1
    assert "No space left on device" in result.volumes[0].message
    there = {v.name for v in target["client"].volumes.list()}
    assert b in there and a not in there, "no half-migrated volume under the failed name"

"""WebDAV, Azure Blob and Swift repositories end to end (repo/backends/opendal.py): a real
engine, the real CLI, and real servers (Apache httpd + mod_dav, Azurite, Ceph RGW's Swift
API; tests/opendal_servers.py). A chunked, encrypted repository is backed up to, listed,
verified, restored from and pruned; a server that goes away in the middle of a backup leaves
no snapshot, and the next run works."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli
from tests.integration.corpus import differences, tree
from tests.integration.helpers import fill, one_line_error, random_file
from tests.integration.test_encrypted import MARKERS, new_identity
from tests.opendal_servers import WEBDAV_PASSWORD, TcpRelay, azure_connection_string, swift_token
from volbackup.repo.backends import open_backend


def ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.code == 0, f"volbackup {' '.join(args)}: {result.stderr}"
    assert WEBDAV_PASSWORD not in result.stdout + result.stderr
    return result.stdout


def test_chunked_encrypted_round_trip(opendal_repo, tmp_path, make_volume, mountpoint, names):
    repo = opendal_repo
    recipient, secret = new_identity(tmp_path / "id.txt")
    key = ("--key-file", str(tmp_path / "repo.key"))
    ok("init", "-r", repo, "--encrypt-to", recipient, *key, "--chunk-size", "512K",
       "--layout", "chunked")
    checks = {c["name"]: c for c in json.loads(ok("doctor", "-r", repo, "--json", *key))["checks"]}
    assert checks["repository"]["status"] == "ok", checks["repository"]
    assert checks["repository"]["reason"].startswith(f"{repo}: reachable, writable, chunked")
    assert checks["repository space"]["reason"].startswith("not applicable")
    assert [i.key for i in open_backend(repo).list()] == ["config"]   # doctor's probe is gone
    source = make_volume("corpus")   # test_chunked's S3 round trip has the whole corpus
    fill(mountpoint(source.name), {"FILENAME-MARKER": b"CONTENT-MARKER" * 20000,
                                   "sub/dir/random.bin": random.Random(3).randbytes(3 << 20),
                                   "empty": b""})
    expected = tree(mountpoint(source.name))
    first = json.loads(ok("backup", source.name, "-r", repo, "--json", *key))["volumes"][0]
    second = json.loads(ok("backup", source.name, "-r", repo, "--json", *key))["volumes"][0]
    assert second["new_chunks"] == 0 < first["chunks"]
    listed = json.loads(ok("list", "-r", repo, "--json", *key))
    assert {s["snapshot"] for s in listed["snapshots"]} == {first["snapshot"], second["snapshot"]}
    target = names("restored")
    ok("restore", source.name, "-r", repo, "--as", target, *key,
       "--identity", str(tmp_path / "id.txt"))
    assert differences(expected, tree(mountpoint(target))) == []
    # nothing readable is stored: no name, content or label in any blob
    backend = open_backend(repo)
    stored = list(backend.list())
    assert len(stored) >= 4 and any(i.key.startswith("chunks/") for i in stored)
    for info in stored:
        data = backend.read_bytes(info.key, limit=None)
        for marker in MARKERS[:2]:
            assert marker not in data, (marker, info.key)
    pruned = json.loads(ok("prune", "-r", repo, "--keep-last", "1", "--json", *key))
    assert [(s["snapshot"], s["status"]) for s in pruned["snapshots"]] == [
        (second["snapshot"], "kept"), (first["snapshot"], "removed")], pruned["snapshots"]
    listed = json.loads(ok("list", "-r", repo, "--json", *key))
    assert [s["snapshot"] for s in listed["snapshots"]] == [second["snapshot"]]
    ok("verify", "--all", "-r", repo, *key, "--identity", str(tmp_path / "id.txt"))


def test_doctor_calls_a_missing_directory_or_container_a_problem(opendal_repo):
    scheme, _, rest = opendal_repo.partition("://")
    missing = (f"{opendal_repo}/not/made" if scheme == "webdav"
               else f"{scheme}://vbtest-none/{rest.partition('/')[2]}")
    run = run_cli("doctor", "-r", missing, "--json")
    assert run.code == 18 and "Traceback" not in run.stderr
    (check,) = [c for c in json.loads(run.stdout)["checks"] if c["name"] == "repository"]
    assert check["status"] == "problem" and "does not exist" in check["reason"], check


def test_wrong_password_is_denied_in_one_line_without_the_secret(webdav_repo, monkeypatch):
    monkeypatch.setenv("VOLBACKUP_WEBDAV_PASSWORD", "not-the-password")
    result = run_cli("list", "-r", webdav_repo)
    assert result.code == 9, result.stderr
    line = one_line_error(result.stderr)
    assert "refused access" in line and "VOLBACKUP_WEBDAV_PASSWORD" in line
    assert "not-the-password" not in result.stdout + result.stderr


def test_a_password_in_the_url_is_refused_and_never_repeated(webdav_server):
    url = f"webdav://vbtest:hunter2-secret@127.0.0.1:{webdav_server['port']}/x"
    result = run_cli("list", "-r", url)
    assert result.code == 5 and "hunter2-secret" not in result.stdout + result.stderr
    assert "takes no password" in one_line_error(result.stderr)


@pytest.fixture
def relayed_repo(opendal_repo, request, monkeypatch):
    """(URL, relay): the repository of `opendal_repo`, reached through a TcpRelay that the
    test can cut, as if the server went away (the servers are shared by the run)."""
    from urllib.parse import urlsplit

    if opendal_repo.startswith("webdav://"):
        server = request.getfixturevalue("webdav_server")
        relay = TcpRelay(server["port"])
        return opendal_repo.replace(f":{server['port']}/", f":{relay.port}/"), relay
    if opendal_repo.startswith("azure://"):
        endpoint = request.getfixturevalue("azurite")["endpoint"]
        relay = TcpRelay(urlsplit(endpoint).port)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(
            endpoint.replace(f":{urlsplit(endpoint).port}/", f":{relay.port}/")))
        return opendal_repo, relay
    storage, token = swift_token(request.getfixturevalue("swift_env"))
    relay = TcpRelay(urlsplit(storage).port)
    for name in ("ST_AUTH", "ST_USER", "ST_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OS_STORAGE_URL", storage.replace(f":{urlsplit(storage).port}/",
                                                         f":{relay.port}/"))
    monkeypatch.setenv("OS_AUTH_TOKEN", token)
    return opendal_repo, relay


def test_a_server_gone_mid_backup_leaves_no_snapshot_and_the_next_run_works(
        relayed_repo, make_volume, mountpoint, monkeypatch):
    """The server goes away (its relay cut: connections reset, the port refuses) while a
    backup writes chunks: the backup fails with exit 10 after its retries, and no snapshot
    is listed; with the server back, the next backup and verify work."""
    repo, relay = relayed_repo
    monkeypatch.setenv("VOLBACKUP_STORE_ATTEMPTS", "2")
    try:
        ok("init", "-r", repo, "--chunk-size", "512K", "--layout", "chunked")   # chunks/ counted
        volume = make_volume("big")
        random_file(mountpoint(volume.name), size=48 << 20)   # still writing when cut
        proc = subprocess.Popen([sys.executable, "-m", "volbackup", "backup", volume.name,
                                 "-r", repo], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        backend, deadline = open_backend(repo), time.monotonic() + 120
        while sum(1 for _ in backend.list("chunks/")) <= 6:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        relay.cut()
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 10, stderr
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("volbackup: error: cannot reach") and repo in last, stderr
        relay.restore()
        listed = json.loads(ok("list", "-r", repo, "--json"))
        assert listed["snapshots"] == []
        ok("backup", volume.name, "-r", repo)
        verified = json.loads(ok("verify", "--all", "-r", repo, "--json"))["snapshots"]
        assert [c["status"] for c in verified] == ["ok"], verified
    finally:
        relay.cut()

"""WebDAV, Azure Blob and Swift repositories end to end (repo/backends/opendal.py): a real
engine, the real CLI, and real servers (Apache httpd + mod_dav, Azurite, Ceph RGW's Swift
API; tests/opendal_servers.py). A chunked, encrypted repository is backed up to, listed,
verified, restored from and pruned; a WebDAV server that goes away in the middle of a backup
leaves no snapshot, and the next run works."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time

from tests.conftest import run_cli
from tests.integration.corpus import differences, tree
from tests.integration.helpers import fill, one_line_error, random_file
from tests.integration.test_encrypted import MARKERS, new_identity
from tests.opendal_servers import WEBDAV_PASSWORD, start_apache, stop
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
    ok("init", "-r", repo, "--encrypt-to", recipient, *key, "--chunk-size", "512K")
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


def test_webdav_server_gone_mid_backup_leaves_no_snapshot_and_the_next_run_works(
        tmp_path, make_volume, mountpoint, monkeypatch, webdav_env):
    """Apache is stopped while a backup writes chunks: the backup fails with exit 10 after
    its retries, no snapshot is listed; with Apache back, the next backup and verify work
    and `cleanup` finds nothing it cannot remove."""
    server = start_apache()
    port, directory = server["port"], server["dir"]
    try:
        for name, value in webdav_env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("VOLBACKUP_STORE_ATTEMPTS", "2")
        repo = f"webdav://127.0.0.1:{port}/gone"
        ok("init", "-r", repo, "--chunk-size", "512K")
        volume = make_volume("big")
        random_file(mountpoint(volume.name), size=32 << 20)
        proc = subprocess.Popen([sys.executable, "-m", "volbackup", "backup", volume.name,
                                 "-r", repo], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        chunks = directory / "data" / "gone" / "chunks"
        deadline = time.monotonic() + 120
        while not (chunks.exists() and sum(1 for _ in chunks.rglob("*")) > 20):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        stop(server["proc"])
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 10, stderr
        assert "Traceback" not in stderr
        server = start_apache(directory, port)
        listed = json.loads(ok("list", "-r", repo, "--json"))
        assert listed["snapshots"] == []
        ok("backup", volume.name, "-r", repo)
        assert len(json.loads(ok("list", "-r", repo, "--json"))["snapshots"]) == 1
        ok("verify", "--all", "-r", repo)
    finally:
        stop(server["proc"])
        shutil.rmtree(directory, ignore_errors=True)

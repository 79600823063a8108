"""`volbackup doctor` against the real engine and real repositories (a directory, moto's S3)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import docker.errors
import pytest

from tests.integration.conftest import make_layout
from tests.integration.helpers import one_line_error
from tests.integration.test_encrypted import make_keys
from tests.unit.manifests import make_manifest
from volbackup.docker.helpers import (CREATED_LABEL, HELPER_IMAGE, HELPER_LABEL, HOST_LABEL,
                                      PID_LABEL, PIDNS_LABEL)
from volbackup.errors import NotReady
from volbackup.ops import doctor as ops
from volbackup.processes import pid_namespace
from volbackup.repo.locking import LockInfo
from volbackup.repo.repository import Repository


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _doctor(cli, *args, env=None):
    run = cli("doctor", *args, "--json", env=env, timeout=120)
    assert "Traceback" not in run.stderr
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]} if run.stdout else {}
    return run, checks


def _statuses(checks: dict) -> dict:
    return {name: c["status"] for name, c in checks.items()}


@pytest.mark.parametrize("layout", ["archive", "chunked", "packed"])
def test_a_healthy_repository_is_ok_throughout(cli, make_volume, mountpoint, repo_dir, layout):
    make_layout(str(repo_dir), layout)
    volume = make_volume("data")
    with open(os.path.join(mountpoint(volume.name), "f"), "wb") as f:
        f.write(os.urandom(1 << 16))
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    run, checks = _doctor(cli, "-r", str(repo_dir))
    assert run.code == 0, run.stderr
    envelope = json.loads(run.stdout)
    assert envelope["command"] == "doctor" and envelope["ready"] is True
    assert envelope["repository"] == str(repo_dir)
    assert list(checks) == ["engine", "direct path", "repository", "repository space", "clock",
                            "locks", "unfinished writes", "volume area space", "helpers"]
    for name in ("engine", "repository", "repository space", "clock", "locks",
                 "unfinished writes"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["repository"]["details"]["layout"] == layout
    assert checks["repository"]["details"]["format_version"] == {
        "archive": None, "chunked": 1, "packed": 3}[layout]
    assert checks["engine"]["details"]["version"]
    assert checks["repository space"]["details"]["free_bytes"] > 0
    assert checks["clock"]["details"]["newest_snapshot"].startswith(volume.name + "@")
    text = cli("doctor", "-r", str(repo_dir))
    assert text.code == 0 and "PROBLEM" not in text.stdout
    assert f"ok       repository         {repo_dir}: reachable, writable, {layout}" in text.stdout


def test_a_stale_lock_is_a_warning(cli, repo_dir):
    repo = Repository.open(str(repo_dir))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lock = LockInfo("locks/20261129T031500Z-aaaaaaaaaaaa.json", "exclusive",
                    socket.gethostname(), _dead_pid(), pid_namespace(), now, now, "prune")
    repo.backend.write_bytes(lock.key, lock.to_json())
    run, checks = _doctor(cli, "-r", str(repo_dir))
    assert run.code == 0, run.stderr
    assert checks["locks"]["status"] == "warning"
    assert "1 stale lock(s)" in checks["locks"]["reason"]
    assert "is not running on this host" in checks["locks"]["reason"]
    assert "volbackup unlock" in checks["locks"]["action"]
    assert (repo_dir / lock.key).exists()  # doctor changes nothing


def test_a_prune_lock_is_no_warning(cli, repo_dir):
    """A packed repository's prune lock lets backups run: nothing waits for it."""
    repo = Repository.open(str(repo_dir))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lock = LockInfo("locks/20261129T031500Z-cccccccccccc.json", "prune",
                    socket.gethostname(), os.getpid(), pid_namespace(), now, now, "prune")
    repo.backend.write_bytes(lock.key, lock.to_json())
    run, checks = _doctor(cli, "-r", str(repo_dir))
    assert run.code == 0, run.stderr
    assert checks["locks"]["status"] == "ok"
    assert checks["locks"]["reason"].startswith(f"held: prune lock of pid {os.getpid()}")


def test_a_newer_volbackups_lock_is_a_problem(cli, repo_dir):
    (repo_dir / "locks").mkdir()
    (repo_dir / "locks" / "20261129T031500Z-bbbbbbbbbbbb.json").write_text(json.dumps(
        {"format_version": 2, "host": "db1", "pid": 1, "tool_version": "9.0"}))
    run, checks = _doctor(cli, "-r", str(repo_dir))
    assert run.code == NotReady.exit_code
    assert checks["locks"]["status"] == "problem" and "lock of format 2" in checks["locks"]["reason"]
    assert "locks: lock of format 2" in one_line_error(run.stderr)


def _doctor_with_a_leftover_helper(client, engine, repo_dir) -> tuple[str, ops.DoctorReport]:
    """Make a helper of a run that is over, the way volbackup makes them, and run doctor
    in this process at once; remove the helper."""
    name = f"volbackup-helper-{secrets.token_hex(6)}"
    labels = {HELPER_LABEL: "helper", PID_LABEL: str(_dead_pid()),
              HOST_LABEL: socket.gethostname(), PIDNS_LABEL: pid_namespace(),
              CREATED_LABEL: str(int(time.time()))}
    created = client.api.create_container(HELPER_IMAGE, command=["volbackup-helper"],
                                          name=name, labels=labels, network_disabled=True)
    try:
        return name, ops.doctor(str(repo_dir), lambda: engine, datetime.now(timezone.utc))
    finally:
        try:
            client.api.remove_container(created["Id"], force=True)
        except docker.errors.APIError:
            pass  # swept meanwhile by another session's run: wait until it is gone
        deadline = time.monotonic() + 30
        while client.api.containers(all=True, filters={"id": created["Id"]}):
            assert time.monotonic() < deadline, f"{name} was not removed"
            time.sleep(0.1)


def test_a_leftover_helper_is_a_warning(client, engine, repo_dir):
    """Another session's backup on this engine sweeps stale helpers: when it took ours
    before doctor looked (not seen at all), try again; seen, it must be judged stale."""
    for _ in range(10):
        name, report = _doctor_with_a_leftover_helper(client, engine, repo_dir)
        (helpers,) = [c for c in report.checks if c.name == "helpers"]
        if name in helpers.details["stale"] + helpers.details["in_use"]:
            break
    else:
        pytest.fail("the helper was swept before doctor saw it, ten times")
    assert helpers.status == ops.WARNING, helpers
    assert name in helpers.details["stale"] and name in helpers.reason
    assert "next backup removes them" in helpers.action
    report.raise_for_problems()  # a warning only


def test_a_missing_repository_is_a_problem(cli, tmp_path):
    run, checks = _doctor(cli, "-r", str(tmp_path / "nope"))
    assert run.code == NotReady.exit_code
    assert checks["repository"]["status"] == "problem"
    assert "does not exist" in checks["repository"]["reason"]
    assert checks["engine"]["status"] == "ok"   # the other checks still ran
    assert "repository space" not in checks
    assert one_line_error(run.stderr).startswith("volbackup: error: 1 problem(s)")


def test_a_file_where_the_repository_should_be_is_a_problem(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    run, checks = _doctor(cli, "-r", str(tmp_path / "file"))
    assert run.code == NotReady.exit_code
    assert "is not a directory" in checks["repository"]["reason"]


def test_a_read_only_repository_is_a_problem(cli, tmp_path):
    source, target = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        run, checks = _doctor(cli, "-r", str(target))
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert run.code == NotReady.exit_code
    assert checks["repository"]["status"] == "problem"
    assert "is not writable (Read-only file system)" in checks["repository"]["reason"]


def test_a_directory_of_other_things_is_a_problem(cli, tmp_path):
    (tmp_path / "passwd").write_text("x")
    run, checks = _doctor(cli, "-r", str(tmp_path))
    assert run.code == NotReady.exit_code
    assert "is not a volbackup repository" in checks["repository"]["reason"]


def test_an_unreachable_s3_endpoint_is_a_problem(cli, s3_endpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    run, checks = _doctor(cli, "-r", "s3://vbtest-any/x", env=env)
    assert run.code == NotReady.exit_code
    assert "cannot reach the S3 endpoint" in checks["repository"]["reason"]


def test_an_unreachable_engine_is_a_problem(cli, repo_dir, tmp_path):
    run, checks = _doctor(cli, "-r", str(repo_dir),
                          env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert run.code == NotReady.exit_code
    assert checks["engine"]["status"] == "problem"
    assert "cannot reach the Docker engine" in checks["engine"]["reason"]
    assert checks["repository"]["status"] == "ok"
    assert "helpers" not in checks


def test_a_snapshot_from_the_future_is_a_clock_warning(cli, repo_dir):
    future = datetime.now(timezone.utc) + timedelta(hours=3)
    stamp = future.strftime("%Y%m%dT%H%M%SZ")
    Repository.open(str(repo_dir)).commit(make_manifest(
        f"vbtest-clock@{stamp}-abcd", future.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        host="fast-clock"))
    run, checks = _doctor(cli, "-r", str(repo_dir))
    assert run.code == 0, run.stderr
    clock = checks["clock"]
    assert clock["status"] == "warning"
    assert f"vbtest-clock@{stamp}-abcd" in clock["reason"] and "fast-clock" in clock["reason"]
    assert 2 * 3600 < clock["details"]["ahead_seconds"] <= 3 * 3600


def test_the_clock_is_injected(engine, repo_dir):
    Repository.open(str(repo_dir)).commit(make_manifest())  # made 2026-11-29T03:15:00Z
    before = datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc)
    report = ops.doctor(str(repo_dir), lambda: engine, before)
    (clock,) = [c for c in report.checks if c.name == "clock"]
    assert clock.status == ops.WARNING and clock.details["ahead_seconds"] == 900
    report = ops.doctor(str(repo_dir), lambda: engine, before + timedelta(minutes=14))
    (clock,) = [c for c in report.checks if c.name == "clock"]
    assert clock.status == ops.OK


def test_s3_space_is_not_applicable_and_an_abandoned_upload_is_a_warning(
        cli, s3_bucket, s3_client):
    repo = f"s3://{s3_bucket}/r"
    s3_client.create_multipart_upload(Bucket=s3_bucket,
                                      Key="r/snapshots/vbtest-up/20261129T031500Z-abcd.tar.zst")
    run, checks = _doctor(cli, "-r", repo)
    assert run.code == 0, run.stderr
    assert checks["repository"]["status"] == "ok"
    assert checks["repository space"]["reason"].startswith("not applicable")
    # moto dates every upload 2010: abandoned by cleanup's 24h rule
    assert checks["unfinished writes"]["status"] == "warning"
    assert checks["unfinished writes"]["details"]["abandoned"] == 1
    assert f"volbackup cleanup -r {repo}" in checks["unfinished writes"]["action"]
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0  # probe removed


def test_an_encrypted_repository_needs_its_key(cli, tmp_path, monkeypatch):
    for name in ("VOLBACKUP_KEY_FILE", "VOLBACKUP_IDENTITY_FILE"):
        monkeypatch.delenv(name, raising=False)
    keys = make_keys(tmp_path)
    run, checks = _doctor(cli, "-r", str(keys.repo))
    assert run.code == NotReady.exit_code
    assert checks["repository"]["status"] == "problem"
    assert "key" in checks["repository"]["reason"]
    for out in (run.stdout, run.stderr):
        assert not any(secret in out for secret in keys.secrets)
    run, checks = _doctor(cli, "-r", str(keys.repo), "--key-file", str(keys.key_file))
    assert run.code == 0, run.stderr
    assert checks["repository"]["details"] == {"layout": "chunked", "format_version": 2,
                                               "encrypted": True}
    assert "chunked, format 2, encrypted" in checks["repository"]["reason"]


def test_without_a_repository_only_the_engine_is_checked(cli):
    run, checks = _doctor(cli, env={"VOLBACKUP_REPO": ""})
    assert run.code == 0, run.stderr
    assert checks["repository"]["status"] == "warning"
    assert set(checks) == {"engine", "direct path", "repository", "volume area space", "helpers"}

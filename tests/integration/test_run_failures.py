"""Failed runs are reported as failed, and reports never show a webhook's token.

Real faults: a small tmpfs as the repository (disk full), a real local HTTP receiver (that
answers 500, or is not there), a manifest written with a future date (clock skew).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import fill
from tests.unit.test_prune import add
from volbackup.errors import PartialFailure
from volbackup.ops import backup as backup_ops
from volbackup.ops import restore as restore_ops
from volbackup.ops import snapshots
from volbackup.repo.repository import Repository

TOKEN = "T0KEN5ecr3t"          # what a Slack/Discord webhook hides in its path
OLD_SUCCESS = 1_000_000_000.0  # a last success written by an earlier run


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: records each POSTed JSON body, answers `status`."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    server.bodies, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def small_repo(tmp_path):
    """A 4 MiB tmpfs as the repository: a disk that fills up (needs root)."""
    path = tmp_path / "tmpfs-repo"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def samples(path: Path) -> dict:
    return {(s.name, s.labels.get("volume")): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_repository_fails_its_volume_and_the_run(cli, small_repo, tmp_path, receiver,
                                                        make_volume, mountpoint, jobs):
    """Disk full on the first volume (an OSError, not one of volbackup's errors): that
    volume fails naming itself and the disk, the second is still attempted, the metrics
    say failure and keep the earlier last success, the notification says failed."""
    big, small = make_volume("big").name, make_volume("small").name
    fill(mountpoint(big), {f"f{i}.bin": os.urandom(1 << 20) for i in range(12)})
    fill(mountpoint(small), {"a.txt": b"small\n"})
    metrics = tmp_path / "volbackup.prom"
    metrics.write_text(
        f'volbackup_last_success_timestamp_seconds{{backup_job="backup"}} {OLD_SUCCESS}\n')
    hook = f"http://127.0.0.1:{receiver.server_port}/services/{TOKEN}"
    result = cli("backup", big, small, "-r", str(small_repo), "--jobs", jobs, "--json",
                 "--metrics-file", str(metrics), "--notify-url", hook)
    assert result.code in (3, 5) and "Traceback" not in result.stderr, result.stderr
    out = {v["volume"]: v for v in json.loads(result.stdout)["volumes"]}
    assert set(out) == {big, small}, "every volume is attempted and reported"
    assert out[big]["status"] == "failed" and out[big]["exit_code"] == 5  # repository error
    assert f"repository {small_repo} is full (No space left on device)" in out[big]["message"]
    assert " MiB free of " in out[big]["message"]
    assert f"{big}: failed: " in result.stderr and "No space left on device" in result.stderr
    if jobs == "1":  # alone, the small one fits once the big one's temp file is gone
        assert out[small]["status"] == "ok", out[small]
    got = samples(metrics)
    assert got[("volbackup_run_success", None)] == 0
    assert got[("volbackup_volume_success", big)] == 0
    assert got[("volbackup_last_success_timestamp_seconds", None)] == OLD_SUCCESS
    # the default --notify failure: sent, since the run failed
    assert len(receiver.bodies) == 1, result.stderr
    body = receiver.bodies[0]
    assert body["status"] == "failed" and body["exit_code"] == result.code
    assert [v["volume"] for v in body["volumes"]] == [big, small]
    assert "No space left on device" in body["volumes"][0]["message"]
    left = [p.name for p in small_repo.rglob("*") if p.is_file() and big in str(p)]
    assert left == [], "no partial archive of the failed volume is left"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["500", "down", "unresolvable"])
def test_notification_problems_never_show_the_token(cli, repo_dir, tmp_path, receiver,
                                                    make_volume, mountpoint, where):
    """The webhook's path, query, fragment and user info appear nowhere: stderr, stdout,
    --json, metrics file."""
    name = make_volume("v").name
    fill(mountpoint(name), {"a.txt": b"hello\n"})
    receiver.status = 500
    host = {"500": f"127.0.0.1:{receiver.server_port}", "down": f"127.0.0.1:{_closed_port()}",
            "unresolvable": "hooks.invalid"}[where]
    # urllib sends no user info (it takes it for part of the host): only where none arrives
    user = "" if where == "500" else f"user{TOKEN}:pw{TOKEN}@"
    hook = f"http://{user}{host}/api/webhooks/1/{TOKEN}?t={TOKEN}#{TOKEN}"
    metrics = tmp_path / "volbackup.prom"
    for extra in ([], ["--json"]):
        result = cli("backup", name, "-r", str(repo_dir), "--metrics-file", str(metrics),
                     "--notify-url", hook, "--notify", "always", *extra)
        assert result.code == 0, result.stderr
        assert "the notification to http://" in result.stderr
        assert f"the notification to http://{host} " in result.stderr, result.stderr
        for text in (result.stdout, result.stderr, metrics.read_text()):
            assert TOKEN not in text, text
    assert len(receiver.bodies) == (2 if where == "500" else 0)


def test_a_bad_notify_url_is_refused_without_echoing_it(cli, repo_dir, tmp_path):
    hook = f"ftp://hooks.example.com/services/{TOKEN}"
    result = cli("backup", "anything", "-r", str(repo_dir), "--notify-url", hook)
    assert result.code == 2 and TOKEN not in result.stderr, result.stderr
    assert "--notify-url" in result.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[jobs.a]\nrepository = "{repo_dir}"\nvolumes = ["v"]\n'
                      f'notify_url = "{hook}"\n')
    result = cli("run", "--config", str(config))
    assert result.code == 12 and TOKEN not in result.stderr + result.stdout, result.stderr
    assert "notify_url" in result.stderr


def failing_for(volume: str, at_start: bool = False):
    """A progress factory (our interface) whose reporter for `volume` fails like a full disk
    does, in the middle of that volume's data (or as it starts)."""
    def full() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @contextmanager
    def factory(label: str, total: int | None):
        mine = label.startswith(volume)
        if mine and at_start:
            full()

        def update(n: int) -> None:
            if mine:
                full()
        yield update
    return factory


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_error_from_outside_volbackup_fails_one_volume_and_the_loop_goes_on(
        engine, client, repo_dir, make_volume, mountpoint, jobs):
    """backup (also under --jobs), verify and restore: a non-volbackup exception becomes
    that volume's failed outcome (exit code 1); the other volume is still done."""
    a, b = make_volume("a").name, make_volume("b").name
    for name in (a, b):
        fill(mountpoint(name), {"f.txt": name.encode() * 100})
    repo = Repository.open(str(repo_dir), writable=True)

    def check(outcomes, good_status, codes=(1,)):
        assert [o.volume for o in outcomes] == [a, b]
        assert outcomes[0].status == "failed" and outcomes[0].error.exit_code in codes
        assert "No space left on device" in outcomes[0].message
        assert outcomes[1].status == good_status, outcomes[1].message

    backed = backup_ops.backup(engine, repo, [a, b], progress=failing_for(a),
                               options=backup_ops.BackupOptions(jobs=jobs))
    check(backed.volumes, "ok")
    with pytest.raises(PartialFailure):
        backed.raise_for_failures()
    assert backup_ops.backup(engine, repo, [a]).volumes[0].status == "ok"
    check(snapshots.verify(repo, [a, b], progress=failing_for(a)).snapshots, "ok")
    for name in (a, b):
        client.volumes.get(name).remove()
    # (as it starts: in the middle, the engine layer would report it, as an EngineError)
    restored = restore_ops.restore(engine, repo, [a, b], progress=failing_for(a, at_start=True))
    check(restored.volumes, "restored")
    assert [v.name for v in client.volumes.list() if v.name in (a, b)] == [b], \
        "no half-restored volume under the failed one's name"


def test_backup_prune_keeps_what_it_made_despite_a_future_dated_manifest(
        cli, repo_dir, make_volume, mountpoint):
    """A manifest of this host dated a year ahead made `backup --prune --keep-last 1`
    delete the snapshot it had just taken, exit 0."""
    name = make_volume("skew").name
    fill(mountpoint(name), {"a.txt": b"hello\n"})
    repo = Repository.open(str(repo_dir), writable=True)
    ahead = add(repo, name, datetime.now(timezone.utc) + timedelta(days=365),
                host=socket.gethostname(), suffix="f00d")
    result = cli("backup", name, "-r", str(repo_dir), "--prune", "--keep-last", "1", "--json")
    assert result.code == 0, result.stderr
    made = json.loads(result.stdout)["volumes"][0]["snapshot"]
    listed = json.loads(cli("list", name, "-r", str(repo_dir), "--json").stdout)["snapshots"]
    assert sorted(s["snapshot"] for s in listed) == sorted([made, ahead])
    assert f"warning: snapshot {ahead} is dated" in result.stderr
    assert cli("verify", made, "-r", str(repo_dir)).code == 0

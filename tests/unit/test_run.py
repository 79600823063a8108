"""Scheduled runs without an engine: config errors, metrics, notifications, Schedule.run.

The backup step is a stand-in function returning a BackupResult (our own interface); the
repository, the lock, the metrics file and the HTTP server receiving notifications are real.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_prune import add
from volbackup.errors import ConfigError, EngineError, RepositoryLocked
from volbackup.ops.backup import BackupResult, VolumeBackup
from volbackup.ops.report import metrics_text
from volbackup.repo import locking
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.runner import config
from volbackup.runner.run import Schedule

GOOD = """\
[defaults]
repository = "/srv/backups"
lock_wait = "5m"

[jobs.db]
volumes = ["pgdata"]
level = 5
metrics_file = "/tmp/db.prom"
keep = { daily = 7, weekly = 4, within = "2d" }

[jobs.web]
container = "web"
repository = "s3://bucket/web"
notify_url = "https://hooks.example.com/x"
notify = "always"

[jobs.web.keep]
last = 3
"""


def load(tmp_path, text: str):
    path = tmp_path / "volbackup.toml"
    path.write_text(text)
    return config.load(str(path))


def test_good_config(tmp_path):
    db, web = load(tmp_path, GOOD)
    assert (db.name, db.repository, db.volumes, db.level, db.lock_wait) == (
        "db", "/srv/backups", ["pgdata"], 5, 300.0)
    assert db.keep == Rules(daily=7, weekly=4, within=timedelta(days=2))
    assert (web.container, web.repository, web.notify, web.keep) == (
        "web", "s3://bucket/web", "always", Rules(last=3))


BAD = [
    # (change to GOOD, words the message must contain)
    (("level = 5", "level = \"5\""), ["job db", "'level'", "line 7", "integer from 1 to 22"]),
    (("level = 5", "levle = 5"), ["job db", "'levle'", "line 7", "unknown key"]),
    (("last = 3", "hours = 3"), ["job web", "'hours'", "line 18", "unknown keep rule"]),
    (("daily = 7", "daily = 0"), ["job db", "'daily'", "line 9", ">= 1"]),
    (("within = \"2d\"", "within = \"two days\""), ["job db", "'within'", "line 9", "duration"]),
    (("lock_wait = \"5m\"", "lock_wait = \"soon\""), ["job db", "'lock_wait'", "line 3"]),
    (("notify = \"always\"", "notify = \"never\""), ["job web", "'notify'", "line 15"]),
    (("container = \"web\"", "container = \"web\"\nvolumes = [\"a\"]"),
     ["job web", "line 11", "either volumes", "or container"]),
    (("volumes = [\"pgdata\"]", "volumes = \"pgdata\""), ["job db", "'volumes'", "line 6"]),
    (("repository = \"/srv/backups\"", "repo = \"/srv/backups\""), ["defaults", "'repo'", "line 2"]),
    (("[jobs.db]", "[jobs.db\n"), ["not valid TOML", "line 5"]),
    (("level = 5", "stop = \"yes\""), ["job db", "'stop'", "line 7", "true or false"]),
    (("level = 5", "stop = true\npause = true"), ["job db", "'pause'", "exclude each other"]),
    (("level = 5", "exclude = [\"../x\"]"), ["job db", "'exclude'", "volume names"]),
    (("level = 5", "retries = 11"), ["job db", "'retries'", "0 to 10"]),
    (("level = 5", "direct = \"auto\""), ["job db", "'direct'", "line 7", "true or false"]),
    (("level = 5", "parallel = 0"), ["job db", "'parallel'", "1 to 32"]),
    (("level = 5", "exclude_path = [\"a/../b\"]"), ["job db", "'exclude_path'", "line 7",
                                                    "'..' component"]),
    (("level = 5", "exclude_path = \"cache\""), ["job db", "'exclude_path'", "list of strings"]),
    (("level = 5", "exclude_path = [\"\"]"), ["job db", "'exclude_path'", "list of strings"]),
    (("level = 5", "parallel = true"), ["job db", "'parallel'", "1 to 32"]),
    (("container = \"web\"", "container = \"web\"\nall = true"),
     ["job web", "either volumes"]),
]


@pytest.mark.parametrize("change,words", BAD, ids=[b[0][1].split()[0] for b in BAD])
def test_bad_config_names_key_job_and_line(tmp_path, change, words):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, GOOD.replace(*change, 1))
    for word in words:
        assert word in str(caught.value)
    assert caught.value.exit_code == 12


def test_exclude_path_key(tmp_path):
    (job,) = load(tmp_path, '[jobs.a]\nrepository = "/r"\nall = true\n'
                            'exclude_path = ["cache", "/tmp/**", "cache"]\n')
    assert job.exclude_paths == ["cache", "/tmp/**"]
    assert job.selection.exclude == []  # `exclude` stays the volume selection's
    (plain,) = load(tmp_path, '[jobs.a]\nrepository = "/r"\nall = true\n')
    assert plain.exclude_paths == []


def test_selection_and_quiescing_keys(tmp_path):
    (job,) = load(tmp_path, """
[jobs.nightly]
repository = "/srv/backups"
project = "shop"
labels = ["backup=nightly"]
exclude = ["shop_cache"]
stop = true
stop_timeout = 30
retries = 4
parallel = 3
""")
    assert (job.selection.project, job.selection.labels, job.selection.exclude) == (
        "shop", ["backup=nightly"], ["shop_cache"])
    assert (job.quiesce, job.stop_timeout, job.retries, job.volumes) == ("stop", 30, 4, [])
    assert job.parallel == 3
    assert job.direct is None   # the default: direct when no running container writes
    (paused,) = load(tmp_path, '[jobs.a]\nrepository = "/r"\nall = true\npause = true\n')
    assert paused.selection.all and paused.quiesce == "pause"
    for value, expected in (("true", True), ("false", False)):
        (job,) = load(tmp_path, f'[jobs.a]\nrepository = "/r"\nall = true\ndirect = {value}\n')
        assert job.direct is expected


def test_config_without_jobs_or_file(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        load(tmp_path, "[defaults]\nrepository = '/x'\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(str(tmp_path / "missing.toml"))


# -- metrics -------------------------------------------------------------------------------

def summary(status="ok", volumes=None, finished=1_800_000_000.0, prune=None):
    return {"job": "db", "status": status, "finished_unix": finished, "seconds": 12.5,
            "volumes": volumes if volumes is not None else [
                {"volume": "pgdata", "status": "ok", "bytes": 1000, "stored_bytes": 300,
                 "seconds": 2.0},
                {"volume": 'we"ird', "status": "ok", "bytes": 5, "stored_bytes": 4,
                 "seconds": 0.1}],
            "prune": prune}


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_with_prometheus_parser():
    got = samples(metrics_text(summary(prune={"kept": 5, "removed": 2})))
    run = (("backup_job", "db"),)
    assert got[("volbackup_run_success", run)] == 1
    assert got[("volbackup_last_success_timestamp_seconds", run)] == 1_800_000_000
    assert got[("volbackup_run_duration_seconds", run)] == 12.5
    assert got[("volbackup_prune_removed_snapshots", run)] == 2
    pg = (("backup_job", "db"), ("volume", "pgdata"))
    assert got[("volbackup_volume_stored_bytes", pg)] == 300
    assert got[("volbackup_volume_success", (("backup_job", "db"), ("volume", 'we"ird')))] == 1


def test_timestamps_keep_full_precision():
    text = metrics_text(summary(finished=1_795_939_272.592))
    assert "volbackup_run_timestamp_seconds{backup_job=\"db\"} 1795939272.592\n" in text


def test_a_skipped_bind_gets_no_volume_samples():
    """A socket bind of `--container` is skipped: it never had a snapshot, so it must not
    look freshly backed up to a staleness alert."""
    text = metrics_text(summary(volumes=[
        {"volume": "web-run-docker.sock", "status": "skipped", "snapshot": None,
         "message": "/run/docker.sock is a bind mount of a socket"}]))
    assert "web-run-docker.sock" not in text


def test_failure_keeps_earlier_last_success():
    first = metrics_text(summary())
    failed = summary("failed", [{"volume": "pgdata", "status": "failed"}], finished=1_800_090_000)
    got = samples(metrics_text(failed, first))
    run = (("backup_job", "db"),)
    pg = (("backup_job", "db"), ("volume", "pgdata"))
    assert got[("volbackup_run_success", run)] == 0
    assert got[("volbackup_run_timestamp_seconds", run)] == 1_800_090_000
    assert got[("volbackup_last_success_timestamp_seconds", run)] == 1_800_000_000
    assert got[("volbackup_volume_success", pg)] == 0
    assert got[("volbackup_volume_last_success_timestamp_seconds", pg)] == 1_800_000_000
    assert ("volbackup_volume_bytes", pg) not in got


# -- Schedule.run --------------------------------------------------------------------------

class Hook(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    Hook.received, Hook.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook?token=secret"
    server.shutdown()


@pytest.fixture
def repo(repo_dir):
    return Repository.open(str(repo_dir), writable=True)


def fake_backup(repo, volume="pgdata", fail=False, locked=True):
    """What ops.backup returns: one snapshot added (or a failed outcome)."""
    def run():
        if locked:
            assert [lock.kind for lock in locking.list_locks(repo.backend)] == ["shared"]
        if fail:
            return BackupResult(repo.describe(), [VolumeBackup(volume, "failed").failure(
                EngineError("engine went away"))])
        snapshot = add(repo, volume, datetime.now(timezone.utc), host=locking.socket.gethostname(),
                       suffix=locking.secrets.token_hex(2))
        return BackupResult(repo.describe(), [VolumeBackup(volume, "ok", snapshot, bytes=10,
                                                           stored_bytes=3)])
    return run


def test_run_locks_backs_up_prunes_and_reports(repo, tmp_path, hook):
    for _ in range(3):
        fake_backup(repo, locked=False)()
    metrics = tmp_path / "m" / "db.prom"
    metrics.parent.mkdir()
    said, warned = [], []
    schedule = Schedule("db", Rules(last=2), metrics_file=str(metrics), notify_url=hook,
                        notify="always", warn=warned.append, say=said.append)
    result = schedule.run(repo, fake_backup(repo))
    assert result.volumes[0].status == "ok" and warned == []
    assert len(repo.snapshots().snapshots) == 2 and said == ["prune: 2 kept, 2 removed"]
    assert locking.list_locks(repo.backend) == []
    got = samples(metrics.read_text())
    assert got[("volbackup_run_success", (("backup_job", "db"),))] == 1
    assert [p.name for p in metrics.parent.iterdir()] == ["db.prom"]  # no temp file left
    (kind, body), = Hook.received
    assert kind == "application/json" and body["status"] == "ok" and body["prune"]["removed"] == 2


def test_failed_backup_is_reported_and_not_pruned(repo, hook):
    for _ in range(3):
        fake_backup(repo, locked=False)()
    warned = []
    schedule = Schedule("db", Rules(last=1), notify_url=hook, warn=warned.append)
    result = schedule.run(repo, fake_backup(repo, fail=True))
    with pytest.raises(EngineError):
        schedule.raise_for_failures(result)
    assert len(repo.snapshots().snapshots) == 3
    (_, body), = Hook.received
    assert body["status"] == "failed" and body["exit_code"] == 7 and body["prune"] is None
    assert "engine went away" in body["message"]


def test_notification_failure_only_warns(repo, hook):
    Hook.status = 500
    warned = []
    Schedule("db", notify_url=hook, notify="always", warn=warned.append).run(repo, fake_backup(repo))
    assert len(warned) == 1 and "HTTP 500" in warned[0] and "secret" not in warned[0]
    warned.clear()
    Schedule("db", notify_url="http://127.0.0.1:9/none", notify="always",
             warn=warned.append).run(repo, fake_backup(repo))
    assert "failed" in warned[0]


def test_success_is_not_notified_by_default(repo, hook):
    Schedule("db", notify_url=hook).run(repo, fake_backup(repo))
    assert Hook.received == []


def test_locked_repository_is_reported(repo, tmp_path):
    held = locking.acquire(repo.backend, locking.EXCLUSIVE, 0)
    metrics = tmp_path / "db.prom"
    with pytest.raises(RepositoryLocked):
        Schedule("db", lock_wait=0, metrics_file=str(metrics)).run(repo, fake_backup(repo))
    held.release()
    assert samples(metrics.read_text())[("volbackup_run_success", (("backup_job", "db"),))] == 0


def test_an_error_from_outside_volbackup_is_a_failed_run(repo, tmp_path, hook):
    """Disk full (an OSError no layer translated) escaping the backup: the run is reported
    failed (metrics, notification with the default --notify failure), not ok."""
    metrics = tmp_path / "db.prom"
    metrics.write_text('volbackup_last_success_timestamp_seconds{backup_job="db"} 1000\n')

    def disk_full():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Schedule("db", Rules(last=1), metrics_file=str(metrics), notify_url=hook).run(
            repo, disk_full)
    got = samples(metrics.read_text())
    run = (("backup_job", "db"),)
    assert got[("volbackup_run_success", run)] == 0
    assert got[("volbackup_last_success_timestamp_seconds", run)] == 1000
    (_, body), = Hook.received
    assert body["status"] == "failed" and body["exit_code"] == 1
    assert body["message"] == "unexpected OSError: [Errno 28] No space left on device"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_run_is_reported_as_interrupted(repo, hook, stop):
    def interrupted():
        raise stop()

    with pytest.raises(stop):
        Schedule("db", notify_url=hook).run(repo, interrupted)
    (_, body), = Hook.received
    assert (body["status"], body["exit_code"], body["message"]) == ("failed", 130, "interrupted")


def test_a_bad_notify_url_in_the_config_is_never_echoed(tmp_path):
    for value in ('"ftp://hooks.example.com/services/SECRET"',
                  '"hooks.example.com/services/SECRET"', '["https://h/SECRET"]'):
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, GOOD.replace('notify_url = "https://hooks.example.com/x"',
                                        f"notify_url = {value}"))
        assert "'notify_url'" in str(caught.value) and "SECRET" not in str(caught.value)


@pytest.mark.parametrize("ahead", [timedelta(days=365), timedelta(minutes=4)])
def test_a_run_never_prunes_the_snapshot_it_made(repo, hook, ahead):
    """A snapshot of this host dated ahead (clock skew, a crafted manifest) used to be
    `last 1`, and `backup --prune --keep-last 1` removed the snapshot it had just made. A
    year ahead it is future-dated (kept, not counted, a warning); 4 minutes ahead it is
    within the tolerance and counts, and the new snapshot is kept as made by this run."""
    host = locking.socket.gethostname()
    other = add(repo, "pgdata", datetime.now(timezone.utc) + ahead, host=host, suffix="f00d")
    warned = []
    schedule = Schedule("db", Rules(last=1), notify_url=hook, notify="always",
                        warn=warned.append)
    result = schedule.run(repo, fake_backup(repo))
    made = result.volumes[0].snapshot
    assert sorted(m.snapshot for m in repo.snapshots().snapshots) == sorted([made, other])
    (_, body), = Hook.received
    assert body["status"] == "ok" and body["prune"]["removed"] == 0
    if ahead > timedelta(minutes=5):
        assert len(warned) == 1 and other in warned[0] and "not counted" in warned[0]
        assert body["prune"]["future_dated"] == [other]
    else:
        assert warned == [] and body["prune"]["future_dated"] == []


def test_a_job_whose_repository_cannot_be_opened_has_the_same_summary(tmp_path, repo):
    """Its summary (what the metrics file and notification get) is built by `summary`, the
    one builder: same keys as a run's, named by the repository URL."""
    from volbackup.runner.run import run_jobs

    jobs = load(tmp_path, f'''
[jobs.db]
repository = "{tmp_path / 'missing'}"
volumes = ["pgdata"]
''')
    result = run_jobs(lambda: None, jobs)
    unopened, = result.jobs
    schedule = Schedule("db")
    schedule.run(repo, fake_backup(repo))
    ran, = schedule.summaries
    assert list(unopened) == list(ran)
    assert (unopened["status"], unopened["exit_code"], unopened["repository"]) == (
        "failed", result.errors[0][1].exit_code, str(tmp_path / "missing"))
    assert unopened["started"] == unopened["finished"] and unopened["seconds"] == 0.0
    assert unopened["volumes"] == [] and unopened["prune"] is None

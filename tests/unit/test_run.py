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

from tests.unit.chunkrepos import chunked_repo
from tests.unit.test_prune import add
from volbackup.errors import ConfigError, EngineError, RepositoryError, RepositoryLocked
from volbackup.ops.backup import BackupResult, VolumeBackup
from volbackup.ops.report import metrics_text
from volbackup.repo import locking
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.runner import config
from volbackup.runner.run import Schedule
from volbackup.runner.run import summary as run_summary

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


def test_the_files_cache_counts_are_metrics_where_it_ran():
    cache = {"parent": "pgdata@x", "files_read": 3, "bytes_read": 4096, "files_reused": 97,
             "bytes_reused": 10 << 20, "problem": None}
    volumes = [{"volume": "pgdata", "status": "ok", "bytes": 1, "stored_bytes": 1,
                "seconds": 1.0, "files_cache": cache},
               {"volume": "other", "status": "ok", "bytes": 1, "stored_bytes": 1,
                "seconds": 1.0, "files_cache": None}]
    got = samples(metrics_text(summary(volumes=volumes)))
    pg = (("backup_job", "db"), ("volume", "pgdata"))
    assert [got[(f"volbackup_volume_{n}", pg)] for n in (
        "files_read", "read_bytes", "files_reused", "reused_bytes")] == [3, 4096, 97, 10 << 20]
    other = (("backup_job", "db"), ("volume", "other"))
    assert ("volbackup_volume_files_read", other) not in got


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



def test_previous_stored_size_is_carried_for_a_jump_alert():
    """`volbackup_volume_previous_stored_bytes`: the stored size of the volume's last
    snapshot before this run, from the previous file, kept across a failed run."""
    pg = (("backup_job", "db"), ("volume", "pgdata"))
    first = metrics_text(summary())
    assert ("volbackup_volume_previous_stored_bytes", pg) not in samples(first)  # no history
    grown = summary(volumes=[{"volume": "pgdata", "status": "ok", "bytes": 9000,
                              "stored_bytes": 900, "seconds": 3.0}])
    second = metrics_text(grown, first)
    got = samples(second)
    assert got[("volbackup_volume_stored_bytes", pg)] == 900
    assert got[("volbackup_volume_previous_stored_bytes", pg)] == 300
    failed = metrics_text(summary("failed", [{"volume": "pgdata", "status": "failed"}]), second)
    got = samples(failed)
    assert ("volbackup_volume_stored_bytes", pg) not in got
    assert got[("volbackup_volume_previous_stored_bytes", pg)] == 900
    after = samples(metrics_text(summary(), failed))
    assert after[("volbackup_volume_stored_bytes", pg)] == 300
    assert after[("volbackup_volume_previous_stored_bytes", pg)] == 900


def test_previous_stored_size_ignores_other_jobs_and_bad_lines():
    pg = (("backup_job", "db"), ("volume", "pgdata"))
    earlier = ('volbackup_volume_stored_bytes{backup_job="dbx",volume="pgdata"} 5\n'
               'volbackup_volume_stored_bytes{backup_job="db",volume="pgdata"} lots\n')
    assert ("volbackup_volume_previous_stored_bytes", pg) not in samples(
        metrics_text(summary(), earlier))


def test_lock_metrics_only_when_the_locks_are_known():
    run = (("backup_job", "db"),)
    got = samples(metrics_text({**summary(), "locks": {"count": 2, "oldest_age_seconds": 7200.5}}))
    assert got[("volbackup_repository_locks", run)] == 2
    assert got[("volbackup_repository_oldest_lock_age_seconds", run)] == 7200.5
    none = samples(metrics_text({**summary(), "locks": {"count": 0, "oldest_age_seconds": 0}}))
    assert none[("volbackup_repository_oldest_lock_age_seconds", run)] == 0
    unknown = metrics_text({**summary(), "locks": None})
    assert "volbackup_repository" not in unknown


def test_oldest_lock_age_reads_start_times_as_untrusted():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

    def lock(started):
        return locking.LockInfo("locks/x.json", "shared", "h", 1, "", started, started)

    def age(*started):
        return run_summary("db", "/r", now, 1.0, None, None, None, finished=now,
                           locks=[lock(s) for s in started])["locks"]

    assert age() == {"count": 0, "oldest_age_seconds": 0}
    assert age("2026-12-01T09:00:00Z", "2026-12-01T11:00:00Z") == {
        "count": 2, "oldest_age_seconds": 3 * 3600}
    # unreadable, without a zone, in the future (at the calendar's end): no age
    assert age("", "soon", "2026-12-01T01:00:00", "2027-01-01T00:00:00Z",
               "9999-12-31T23:59:59-23:59")["oldest_age_seconds"] == 0
    assert run_summary("db", "/r", now, 1.0, None, None, None, finished=now)["locks"] is None


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
    schedule = Schedule("db", Rules(last=2), metrics_file=str(metrics), notify_urls=[hook],
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
    schedule = Schedule("db", Rules(last=1), notify_urls=[hook], warn=warned.append)
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
    Schedule("db", notify_urls=[hook], notify="always", warn=warned.append).run(
        repo, fake_backup(repo))
    assert len(warned) == 1 and "HTTP 500" in warned[0] and "secret" not in warned[0]
    warned.clear()
    Schedule("db", notify_urls=["http://127.0.0.1:9/none"], notify="always",
             warn=warned.append).run(repo, fake_backup(repo))
    assert "failed" in warned[0]


def test_success_is_not_notified_by_default(repo, hook):
    Schedule("db", notify_urls=[hook]).run(repo, fake_backup(repo))
    assert Hook.received == []


def test_locked_repository_is_reported(repo, tmp_path):
    held = locking.acquire(repo.backend, locking.EXCLUSIVE, 0)
    metrics = tmp_path / "db.prom"
    with pytest.raises(RepositoryLocked):
        Schedule("db", lock_wait=0, metrics_file=str(metrics)).run(repo, fake_backup(repo))
    held.release()
    got = samples(metrics.read_text())
    assert got[("volbackup_run_success", (("backup_job", "db"),))] == 0
    assert got[("volbackup_repository_locks", (("backup_job", "db"),))] == 1   # the holder's


def test_a_lock_held_for_hours_is_in_the_metrics(repo, tmp_path):
    """A run that hangs elsewhere keeps refreshing its lock: the lock is live, and old."""
    held = locking.acquire(repo.backend, locking.SHARED, 0, "backup")
    try:
        info = held.info
        info.started = (datetime.now(timezone.utc) - timedelta(hours=5)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        repo.backend.write_bytes(info.key, info.to_json())
        metrics = tmp_path / "db.prom"
        Schedule("db", metrics_file=str(metrics)).run(repo, fake_backup(repo, locked=False))
    finally:
        held.release()
    got = samples(metrics.read_text())
    run = (("backup_job", "db"),)
    assert got[("volbackup_repository_locks", run)] == 1   # not counting the run's own
    assert 5 * 3600 <= got[("volbackup_repository_oldest_lock_age_seconds", run)] < 5 * 3600 + 60


def test_locks_that_cannot_be_listed_only_warn(repo, tmp_path, monkeypatch):
    """The lock metrics are left out, the run's own result stays ok."""
    def unreachable():
        raise RepositoryError("cannot list locks/: connection reset")

    monkeypatch.setattr(repo, "locks", unreachable)
    metrics, warned = tmp_path / "db.prom", []
    schedule = Schedule("db", metrics_file=str(metrics), warn=warned.append)
    result = schedule.run(repo, fake_backup(repo))
    assert result.volumes[0].status == "ok" and schedule.summaries[0]["status"] == "ok"
    assert warned == ["cannot list the repository's locks for the metrics: "
                      "cannot list locks/: connection reset"]
    assert schedule.summaries[0]["locks"] is None
    text = metrics.read_text()
    assert "volbackup_run_success" in text and "volbackup_repository" not in text


def test_an_error_from_outside_volbackup_is_a_failed_run(repo, tmp_path, hook):
    """Disk full (an OSError no layer translated) escaping the backup: the run is reported
    failed (metrics, notification with the default --notify failure), not ok."""
    metrics = tmp_path / "db.prom"
    metrics.write_text('volbackup_last_success_timestamp_seconds{backup_job="db"} 1000\n')

    def disk_full():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Schedule("db", Rules(last=1), metrics_file=str(metrics), notify_urls=[hook]).run(
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
        Schedule("db", notify_urls=[hook]).run(repo, interrupted)
    (_, body), = Hook.received
    assert (body["status"], body["exit_code"], body["message"]) == ("failed", 130, "interrupted")


def test_a_bad_notify_url_in_the_config_is_never_echoed(tmp_path):
    for value in ('"ftp://hooks.example.com/services/SECRET"',
                  '"hooks.example.com/services/SECRET"', '["https://h/x", "nope://SECRET"]',
                  '["https://h/x", 42]', '[]', '"slack://"'):
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
    schedule = Schedule("db", Rules(last=1), notify_urls=[hook], notify="always",
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


# -- copy_to: the snapshots a run made, copied to a second repository ----------------------


def test_copy_to_keys(tmp_path):
    (job,) = load(tmp_path, '[jobs.a]\nrepository = "/r"\nall = true\ncopy_to = "s3://b/x"\n'
                            'copy_to_key_file = "/k"\n')
    assert (job.copy_to, job.copy_to_key_file) == ("s3://b/x", "/k")
    for text, words in (('copy_to = ""', "non-empty string"),
                        ('copy_to_key_file = "/k"', "goes with copy_to")):
        with pytest.raises(ConfigError, match=words):
            load(tmp_path, f'[jobs.a]\nrepository = "/r"\nall = true\n{text}\n')


def test_a_run_copies_what_it_made_and_only_that(tmp_path, hook):
    from tests.unit.chunkrepos import backup, restored, volume_tar

    source, target = chunked_repo(tmp_path / "source"), chunked_repo(tmp_path / "target")
    older = backup(source, volume_tar(3, size=50_000))
    made = []

    def do_backup():
        made.append(backup(source, volume_tar(4, size=100_000)))
        return BackupResult(source.describe(), [VolumeBackup("pgdata", "ok", made[0].snapshot)])

    said = []
    schedule = Schedule("db", notify_urls=[hook], notify="always", say=said.append,
                        copy_to=lambda: Repository.open(str(tmp_path / "target"), writable=True))
    schedule.raise_for_failures(schedule.run(source, do_backup))
    assert [m.snapshot for m in target.snapshots().snapshots] == [made[0].snapshot]
    assert older.snapshot not in {m.snapshot for m in target.snapshots().snapshots}
    assert restored(target, target.load(made[0].snapshot)) == restored(source, made[0])
    (_, body), = Hook.received
    assert body["status"] == "ok" and body["copy"]["copied"] == 1 and body["copy"]["failed"] == 0
    assert body["copy"]["target"] == str(tmp_path / "target")
    assert any(line.startswith("copy: 1 copied") for line in said)


def test_a_failed_copy_fails_the_run_after_the_backup(repo, tmp_path, hook):
    """The fake backup's archive is not zstd: the copy fails, the snapshot stays made."""
    chunked_repo(tmp_path / "target")
    warned = []
    schedule = Schedule("db", notify_urls=[hook], warn=warned.append,
                        copy_to=lambda: Repository.open(str(tmp_path / "target"), writable=True))
    result = schedule.run(repo, fake_backup(repo))
    with pytest.raises(Exception) as caught:
        schedule.raise_for_failures(result)
    assert caught.value.exit_code == 6
    (_, body), = Hook.received
    assert body["status"] == "failed" and body["copy"]["failed"] == 1
    assert any("copy of pgdata@" in w for w in warned)
    assert len(repo.snapshots().snapshots) == 1
    assert list((tmp_path / "target").glob("snapshots/*/*.json")) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    uninitialised = Schedule("db", copy_to=lambda: Repository.open(str(empty), writable=True))
    with pytest.raises(Exception, match="not a repository yet"):
        uninitialised.raise_for_failures(uninitialised.run(repo, fake_backup(repo)))
    missing = Schedule("db", copy_to=lambda: Repository.open(str(tmp_path / "none")))
    with pytest.raises(Exception, match="does not exist"):
        missing.raise_for_failures(missing.run(repo, fake_backup(repo)))

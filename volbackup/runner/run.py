"""Scheduled runs: lock, back up, prune, report. Used by `volbackup run` and `backup --prune`.

`Schedule.run(repo, do_backup)` wraps one backup call: it takes the repository's shared
lock for the backup, applies the keep rules (under the exclusive lock) when every volume
succeeded, then writes the metrics file and sends the notification, whatever happened,
before it returns the backup result or raises the run's error. Reporting never fails a run:
a problem with the metrics file or the notification is passed to `warn`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from volbackup import __version__
from volbackup.errors import PartialFailure, VolbackupError, as_error
from volbackup.ops import backup as backup_ops
from volbackup.ops import prune as prune_ops
from volbackup.ops import report
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.repo import locking
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.repo.sealing import Secrets
from volbackup.runner.config import Job
from volbackup.timefmt import utc_iso

JSON_VERSION = 1


@dataclass
class Schedule:
    job: str = "backup"
    rules: Rules | None = None           # prune after the backup when set
    allow_remove_newest: bool = False
    lock_wait: float = 60.0
    metrics_file: str | None = None
    notify_url: str | None = None
    notify: str = "failure"              # or "always"
    warn: Callable[[str], None] = lambda message: None
    say: Callable[[str], None] = lambda message: None
    summaries: list[dict] = field(default_factory=list)
    prune_error: VolbackupError | None = None

    def run(self, repo: Repository, do_backup: Callable[[], "backup_ops.BackupResult"]):
        """Lock, back up, prune, report. Returns the backup result without raising for
        failed volumes; call `raise_for_failures(result)` after rendering it."""
        started, clock = datetime.now(timezone.utc), time.monotonic()
        result = pruned = error = None
        self.prune_error = None
        try:
            with repo.lock(locking.SHARED, self.lock_wait, "backup", self._broke):
                result = do_backup()
            if self.rules and not self.rules.empty and not any(v.failed for v in result.volumes):
                pruned = self._prune(repo, result)
            elif self.rules and result.volumes:
                self.say("prune: skipped, not every volume was backed up")
            error = _first_error(result) or self.prune_error
        except BaseException as e:  # whatever stopped the run, it is reported as failed
            error = e
            raise
        finally:
            self._report(summary(self.job, repo.describe(), started,
                                 time.monotonic() - clock, result, pruned, error))
        return result

    def _prune(self, repo: Repository, result):
        made = {v.snapshot for v in result.volumes if v.snapshot and not v.failed}
        try:
            options = prune_ops.PruneOptions(
                self.rules, volumes=sorted({v.volume for v in result.volumes}),
                host=socket.gethostname(), allow_remove_newest=self.allow_remove_newest,
                lock_wait=self.lock_wait,
                protected=made)  # never what this run just made, whatever the clocks say
            pruned = prune_ops.prune(repo, options, on_break=self._broke)
        except Exception as e:
            self.prune_error = as_error(e)
            self.warn(f"prune failed: {self.prune_error}")
            return None
        for warning in pruned.warnings:
            self.warn(warning)
        self.say(f"prune: {len(pruned.snapshots) - len(pruned.removed)} kept, "
                 f"{len(pruned.removed)} removed")
        try:
            pruned.raise_for_failures()
        except VolbackupError as e:
            self.prune_error = e
            self.warn(str(e))
        return pruned

    def raise_for_failures(self, result) -> None:
        """The backup's failures first, then the prune's."""
        result.raise_for_failures()
        if self.prune_error is not None:
            raise self.prune_error

    def _broke(self, lock, why: str) -> None:
        self.warn(f"broke a stale lock ({lock.describe()}): {why}")

    def _report(self, data: dict) -> None:
        self.summaries.append(data)
        if self.metrics_file:
            try:
                report.write_metrics(self.metrics_file, data)
            except OSError as e:
                self.warn(f"cannot write the metrics file {self.metrics_file}: {e.strerror or e}")
        if self.notify_url and (self.notify == "always" or data["status"] != "ok"):
            problem = report.notify(self.notify_url, data)
            if problem:
                self.warn(f"{problem} (the run's own result is unchanged)")


def _first_error(result) -> VolbackupError | None:
    try:
        result.raise_for_failures()
    except VolbackupError as e:
        return e
    return None


def summary(job: str, repository: str, started: datetime, seconds: float, result, pruned,
            error: BaseException | None, finished: datetime | None = None) -> dict:
    """The JSON run summary, the one place it is built: what the metrics file and the
    notification are made from, also for a job whose repository could not be opened."""
    finished = finished or datetime.now(timezone.utc)
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        code, message = 130, "interrupted"
    elif error is not None:
        error = as_error(error)
        code, message = error.exit_code, str(error)
    else:
        code, message = 0, None
    return {
        "volbackup_json": JSON_VERSION, "command": "run", "job": job,
        "repository": repository, "host": socket.gethostname(),
        "tool_version": __version__, "status": "ok" if code == 0 else "failed",
        "exit_code": code, "message": message, "started": utc_iso(started),
        "finished": utc_iso(finished), "finished_unix": round(finished.timestamp(), 3),
        "seconds": round(seconds, 3),
        "volumes": [v.as_dict() for v in result.volumes] if result else [],
        "prune": None if pruned is None else {
            "kept": len(pruned.snapshots) - len(pruned.removed), "removed": len(pruned.removed),
            "freed_bytes": pruned.freed_bytes, "problems": pruned.problems,
            "future_dated": pruned.future_dated},
    }


@dataclass
class RunResult:
    jobs: list[dict]                              # one summary per job
    errors: list[tuple[str, VolbackupError]]      # (job, error) of the jobs that failed

    def raise_for_failures(self) -> None:
        if len(self.errors) == 1 and len(self.jobs) == 1:
            raise self.errors[0][1]
        if self.errors:
            names = ", ".join(name for name, _ in self.errors)
            if len(self.errors) < len(self.jobs):
                raise PartialFailure(f"{len(self.errors)} of {len(self.jobs)} jobs failed: {names}")
            raise VolbackupError(f"all {len(self.jobs)} jobs failed: {names}")


def run_jobs(engine_factory: Callable[[], object], jobs: list[Job],
             progress: ProgressFactory = no_progress,
             warn: Callable[[str], None] = lambda m: None,
             say: Callable[[str], None] = lambda m: None) -> RunResult:
    """Run each job in turn (a failing one does not stop the next)."""
    result = RunResult([], [])
    engine = None
    for job in jobs:
        schedule = Schedule(job.name, job.keep, job.allow_remove_newest, job.lock_wait,
                            job.metrics_file, job.notify_url, job.notify, warn, say)
        try:
            secrets = Secrets(job.key_file) if job.key_file else Secrets.from_env()
            repo = Repository.open(job.repository, writable=True, secrets=secrets)
        except Exception as e:
            error = as_error(e)
            result.errors.append((job.name, error))
            schedule._report(_unopened(job, error))
            result.jobs.extend(schedule.summaries)
            continue

        def do_backup():
            nonlocal engine
            engine = engine or engine_factory()
            return backup_ops.backup(engine, repo, job.volumes, job.container, job.level,
                                     progress, selection=job.selection, quiesce=job.quiesce,
                                     stop_timeout=job.stop_timeout, retries=job.retries,
                                     use_direct=job.direct, jobs=job.parallel,
                                     exclude_paths=job.exclude_paths)

        try:
            schedule.raise_for_failures(schedule.run(repo, do_backup))
        except Exception as e:  # reported by Schedule.run; the next job still runs
            result.errors.append((job.name, as_error(e)))
        result.jobs.extend(schedule.summaries)
    return result


def _unopened(job: Job, error: VolbackupError) -> dict:
    """The summary of a job whose repository could not be opened: named by its URL."""
    now = datetime.now(timezone.utc)
    return summary(job.name, job.repository, now, 0.0, None, None, error, finished=now)

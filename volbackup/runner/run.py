"""Scheduled runs: lock, back up, prune, copy, report. Used by `volbackup run` and `backup --prune`.

`Schedule.run(repo, do_backup)` wraps one backup call: it takes the repository's shared
lock for the backup, applies the keep rules (under the exclusive lock) when every volume
succeeded, copies the snapshots it made to a second repository (`copy_to`), then writes
the metrics file and sends the notification, whatever happened, before it returns the
backup result or raises the run's error. Reporting never fails a run: a problem with the
metrics file or the notification is passed to `warn`.
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
from volbackup.ops import copy as copy_ops
from volbackup.ops import prune as prune_ops
from volbackup.ops import notify, report
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.repo import locking
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.repo.sealing import Secrets
from volbackup.runner.config import Job
from volbackup.timefmt import parse_utc_iso, utc_iso

JSON_VERSION = 1


@dataclass
class Schedule:
    job: str = "backup"
    rules: Rules | None = None           # prune after the backup when set
    allow_remove_newest: bool = False
    lock_wait: float = 60.0
    metrics_file: str | None = None
    notify_urls: list[str] = field(default_factory=list)  # https:// POST or apprise URLs
    notify: str = "failure"              # or "always"
    warn: Callable[[str], None] = lambda message: None
    say: Callable[[str], None] = lambda message: None
    progress: ProgressFactory = no_progress  # of the prune
    summaries: list[dict] = field(default_factory=list)
    prune_error: VolbackupError | None = None
    copy_to: Callable[[], Repository] | None = None   # opens the second repository
    copy_error: VolbackupError | None = None

    def run(self, repo: Repository, do_backup: Callable[[], "backup_ops.BackupResult"]):
        """Lock, back up, prune, report. Returns the backup result without raising for
        failed volumes; call `raise_for_failures(result)` after rendering it."""
        started, clock = datetime.now(timezone.utc), time.monotonic()
        result = pruned = copied = error = None
        self.prune_error = self.copy_error = None
        try:
            with repo.lock(locking.SHARED, self.lock_wait, "backup", self._broke):
                result = do_backup()
            if self.rules and not self.rules.empty and not any(v.failed for v in result.volumes):
                pruned = self._prune(repo, result)
            elif self.rules and result.volumes:
                self.say("prune: skipped, not every volume was backed up")
            if self.copy_to is not None:
                copied = self._copy(repo, result)
            error = _first_error(result) or self.prune_error or self.copy_error
        except BaseException as e:  # whatever stopped the run, it is reported as failed
            error = e
            raise
        finally:
            self._report(summary(self.job, repo.describe(), started,
                                 time.monotonic() - clock, result, pruned, error, copied,
                                 locks=self._locks_left(repo)))
        return result

    def _locks_left(self, repo: Repository) -> list[locking.LockInfo] | None:
        """The repository's locks once this run has released its own: a lock that stays
        for hours is a hung run elsewhere, or a lock no run may break."""
        try:
            return repo.locks()
        except Exception as e:  # reporting never fails a run
            self.warn(f"cannot list the repository's locks for the metrics: {as_error(e)}")
            return None

    def _copy(self, repo: Repository, result):
        """Copy the snapshots this run made (not older ones: the second repository may
        keep fewer, by its own prune) to the second repository."""
        made = [v.snapshot for v in result.volumes if v.snapshot and not v.failed]
        if not made:
            return None
        try:
            target = self.copy_to()
            copied = copy_ops.copy(repo, target, copy_ops.Choice(made), self.lock_wait,
                                   on_break=self._broke)
        except Exception as e:
            self.copy_error = as_error(e)
            self.warn(f"copy failed: {self.copy_error}")
            return None
        sent = sum(o.bytes_sent for o in copied.snapshots)
        self.say(f"copy: {sum(o.status == 'copied' for o in copied.snapshots)} copied to "
                 f"{copied.target} ({sent} bytes stored)")
        try:
            copied.raise_for_failures()
        except VolbackupError as e:
            self.copy_error = e
            for o in copied.snapshots:
                if o.failed:
                    self.warn(f"copy of {o.snapshot} failed: {o.message}")
        return copied

    def _prune(self, repo: Repository, result):
        made = {v.snapshot for v in result.volumes if v.snapshot and not v.failed}
        try:
            options = prune_ops.PruneOptions(
                self.rules, volumes=sorted({v.volume for v in result.volumes}),
                host=socket.gethostname(), allow_remove_newest=self.allow_remove_newest,
                lock_wait=self.lock_wait,
                protected=made)  # never what this run just made, whatever the clocks say
            pruned = prune_ops.prune(repo, options, on_break=self._broke,
                                     progress=self.progress)
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
        """The backup's failures first, then the prune's, then the copy's."""
        result.raise_for_failures()
        if self.prune_error is not None:
            raise self.prune_error
        if self.copy_error is not None:
            raise self.copy_error

    def _broke(self, lock, why: str) -> None:
        self.warn(f"broke a stale lock ({lock.describe()}): {why}")

    def _report(self, data: dict) -> None:
        self.summaries.append(data)
        if self.metrics_file:
            try:
                report.write_metrics(self.metrics_file, data)
            except OSError as e:
                self.warn(f"cannot write the metrics file {self.metrics_file}: {e.strerror or e}")
        if self.notify_urls and (self.notify == "always" or data["status"] != "ok"):
            for problem in notify.notify(self.notify_urls, data):
                self.warn(f"{problem} (the run's own result is unchanged)")


def _first_error(result) -> VolbackupError | None:
    try:
        result.raise_for_failures()
    except VolbackupError as e:
        return e
    return None


def summary(job: str, repository: str, started: datetime, seconds: float, result, pruned,
            error: BaseException | None, copied=None, finished: datetime | None = None,
            locks: list[locking.LockInfo] | None = None) -> dict:
    """The JSON run summary, the one place it is built: what the metrics file and the
    notification are made from, also for a job whose repository could not be opened.
    `locks`: those left in the repository at the end (None: not known)."""
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
            "future_dated": pruned.future_dated, "unauthentic": pruned.unauthentic},
        "locks": None if locks is None else {
            "count": len(locks), "oldest_age_seconds": _oldest_age(locks, finished)},
        "copy": None if copied is None else {
            "target": copied.target,
            "copied": sum(o.status == "copied" for o in copied.snapshots),
            "skipped": sum(o.status == "skipped" for o in copied.snapshots),
            "failed": sum(o.failed for o in copied.snapshots),
            "bytes_sent": sum(o.bytes_sent for o in copied.snapshots)},
    }


def _oldest_age(locks: list[locking.LockInfo], now: datetime) -> float:
    """Seconds since the oldest lock started; 0 without locks. A lock is untrusted input:
    one whose start time cannot be read does not count, one from the future counts as 0."""
    ages = [0.0]
    for lock in locks:
        try:
            begun = parse_utc_iso(lock.started)
            ages.append(max(0.0, round((now - begun).total_seconds(), 3)))
        except (ValueError, TypeError, OverflowError):
            continue
    return max(ages)


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
                            job.metrics_file, job.notify_urls, job.notify, warn, say,
                            progress, copy_to=_opener(job))
        try:
            secrets = (Secrets(job.key_file, Secrets.from_env().identity_file) if job.key_file
                       else Secrets.from_env())
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
            options = backup_ops.BackupOptions(
                level=job.level, quiesce=job.quiesce, stop_timeout=job.stop_timeout,
                retries=job.retries, use_direct=job.direct, jobs=job.parallel,
                exclude_paths=job.exclude_paths, read_all=job.read_all)
            return backup_ops.backup(engine, repo, job.volumes, job.container,
                                     selection=job.selection, options=options,
                                     progress=progress)

        try:
            schedule.raise_for_failures(schedule.run(repo, do_backup))
        except Exception as e:  # reported by Schedule.run; the next job still runs
            result.errors.append((job.name, as_error(e)))
        result.jobs.extend(schedule.summaries)
    return result


def _opener(job: Job) -> Callable[[], Repository] | None:
    """How a job opens its second repository, if it has one (when the copy begins)."""
    if not job.copy_to:
        return None
    target = job.copy_to
    return lambda: Repository.open(target, writable=True,
                                   secrets=Secrets(key_file=job.copy_to_key_file))


def _unopened(job: Job, error: VolbackupError) -> dict:
    """The summary of a job whose repository could not be opened: named by its URL."""
    now = datetime.now(timezone.utc)
    return summary(job.name, job.repository, now, 0.0, None, None, error, None, finished=now)

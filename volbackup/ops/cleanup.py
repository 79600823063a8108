"""Find and remove the unfinished writes of killed runs: S3 multipart uploads and the temp
files of a directory repository (`Repository.unfinished_writes`).

Neither is ever a snapshot, yet both take space (an upload's parts are billed as storage
but belong to no object, so nothing else ever shows or removes them). A write younger than
`older_than` may belong to a run that is still going (on this host or another), so it is
left alone; a temp file is removed sooner, once TEMP_QUIET has passed since its last write
and its writer's pid is not running on this host and in this pid namespace (the same
rule as helpers and locks, processes.run_is_over). `cleanup` owns this; `prune` calls
`remove_unfinished` too, with its own `--leftover-age`, under its exclusive lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

from volbackup.errors import VolbackupError, as_error
from volbackup.processes import run_at_place_is_over
from volbackup.repo.repository import Repository, UnfinishedWrite
from volbackup.repo.retention import format_duration
from volbackup.timefmt import utc_iso

TEMP_QUIET = timedelta(minutes=10)
TOO_YOUNG = "too young"


class Status(str, Enum):
    """What became of a snapshot or leftover in `prune` and `cleanup` (the JSON `status`)."""

    KEPT = "kept"
    REMOVED = "removed"
    WOULD_REMOVE = "would remove"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


GONE = (Status.REMOVED, Status.WOULD_REMOVE)


@dataclass
class LeftoverOutcome:
    key: str
    upload_id: str | None   # an upload's id; None for a temp file
    started: str            # UTC, ISO 8601 with Z: an upload's start, a temp file's last write
    age_seconds: int
    bytes: int | None       # stored so far
    status: Status
    message: str | None = None
    kind: str = "upload"    # "upload" or "temp"
    reason: str | None = None  # why kept or removed, for people

    def as_dict(self) -> dict:
        return {**self.__dict__, "status": self.status.value}


@dataclass
class CleanupResult:
    repository: str
    dry_run: bool
    older_than_seconds: float
    leftovers: list[LeftoverOutcome]

    @property
    def removed_bytes(self) -> int:
        return sum(o.bytes or 0 for o in self.leftovers if o.status in GONE)

    def raise_for_failures(self) -> None:
        failed = [o for o in self.leftovers if o.status == Status.FAILED]
        if failed:
            raise VolbackupError(f"{len(failed)} of {len(self.leftovers)} leftovers could not be "
                                 f"removed: {failed[0].message}")


def cleanup(repo: Repository, older_than: float = 86400, dry_run: bool = False,
            now: datetime | None = None) -> CleanupResult:
    now = now or datetime.now(timezone.utc)
    return CleanupResult(repo.describe(), dry_run, older_than,
                         remove_unfinished(repo, timedelta(seconds=older_than), dry_run, now))


def remove_unfinished(repo: Repository, older_than: timedelta, dry_run: bool, now: datetime,
                      volumes: set[str] | None = None) -> list[LeftoverOutcome]:
    """Judge every unfinished write (of `volumes` only, when given) and remove the abandoned
    ones; one that cannot be removed is failed, the next is still tried."""
    outcomes = []
    for write in repo.unfinished_writes():
        if volumes is not None and write.volume not in volumes:
            continue
        age = now - write.since
        outcome = LeftoverOutcome(write.key, write.upload_id, utc_iso(write.since),
                                  max(0, int(age.total_seconds())), write.size, Status.REMOVED,
                                  kind=write.kind, reason=_abandoned(write, age, older_than))
        if outcome.reason is None:
            outcome.status, outcome.reason = Status.KEPT, TOO_YOUNG
        elif dry_run:
            outcome.status = Status.WOULD_REMOVE
        else:
            try:
                repo.remove_unfinished(write)
            except Exception as e:  # any error: this one failed, the next is still tried
                outcome.status, outcome.message = Status.FAILED, str(as_error(e))
        outcomes.append(outcome)
    return outcomes


def _abandoned(write: UnfinishedWrite, age: timedelta, older_than: timedelta) -> str | None:
    """Why `write` belongs to a run that is over, or None while it may still be going."""
    if age >= older_than:
        return f"{'started' if write.kind == 'upload' else 'last written'} over " \
               f"{format_duration(older_than)} ago"
    if write.pid is not None and age >= TEMP_QUIET \
            and run_at_place_is_over(write.place, write.pid):
        return (f"its writer, pid {write.pid}, is not running and it was not written for "
                f"{format_duration(TEMP_QUIET)}")
    return None

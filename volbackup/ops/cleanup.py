"""Find and remove what killed runs left in a repository: unfinished S3 multipart uploads.

Their parts are billed as storage but belong to no object, so nothing else ever shows or
removes them. An upload younger than `older_than` may belong to a backup that is still
running (on this host or another), so it is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from volbackup.errors import VolbackupError
from volbackup.manifest import utc_iso
from volbackup.repository import Repository


@dataclass
class LeftoverOutcome:
    key: str
    upload_id: str
    started: str            # UTC, ISO 8601 with Z
    age_seconds: int
    bytes: int | None       # stored in its parts so far
    status: str             # "removed", "would remove", "kept (too young)", "failed"
    message: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CleanupResult:
    repository: str
    dry_run: bool
    older_than_seconds: float
    leftovers: list[LeftoverOutcome]

    @property
    def removed_bytes(self) -> int:
        return sum(o.bytes or 0 for o in self.leftovers if o.status in ("removed", "would remove"))

    def raise_for_failures(self) -> None:
        failed = [o for o in self.leftovers if o.status == "failed"]
        if failed:
            raise VolbackupError(f"{len(failed)} of {len(self.leftovers)} leftovers could not be "
                                 f"removed: {failed[0].message}")


def cleanup(repo: Repository, older_than: float = 86400, dry_run: bool = False,
            now: datetime | None = None) -> CleanupResult:
    now = now or datetime.now(timezone.utc)
    outcomes = []
    for left in repo.leftovers():
        age = now - left.started
        outcome = LeftoverOutcome(
            left.key, left.ident, utc_iso(left.started),
            max(0, int(age.total_seconds())), left.size, "removed")
        if age < timedelta(seconds=older_than):
            outcome.status = "kept (too young)"
        elif dry_run:
            outcome.status = "would remove"
        else:
            try:
                repo.remove_leftover(left)
            except VolbackupError as e:
                outcome.status, outcome.message = "failed", str(e)
        outcomes.append(outcome)
    return CleanupResult(repo.describe(), dry_run, older_than, outcomes)

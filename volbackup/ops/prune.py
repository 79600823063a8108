"""Apply a retention policy to a repository, and remove what interrupted runs left behind.

Under an exclusive repository lock: decide with volbackup.retention, then for each
snapshot to remove delete its manifest first (the snapshot is gone) and its archive after
(a failure there leaves an unreferenced archive, which the next prune removes). Then remove
unreferenced archives (no manifest) whose stamp is older than `leftover_age`, and, in a
directory repository, temp files of killed writes: those not modified for `leftover_age`,
or not modified for TEMP_QUIET whose writer's pid is dead on this host.
A volume with an unreadable manifest is left alone and reported.

`protected` snapshot ids (those the calling run just made: `backup --prune`, `run`) are
never removed. A snapshot dated in the future (clock skew, or a crafted manifest) is kept,
not counted by the rules, and reported in `future_dated` and `warnings`
(volbackup.retention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Collection

from volbackup import locking, retention
from volbackup.errors import VolbackupError, as_error
from volbackup.manifest import Manifest, utc_iso
from volbackup.processes import pid_alive
from volbackup.repository import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, PREFIX, Repository

TEMP_QUIET = timedelta(minutes=10)
DEFAULT_LEFTOVER_AGE = 6 * 3600.0


@dataclass
class SnapshotDecision:
    snapshot: str
    volume: str
    host: str
    created: str
    keep: bool
    reasons: list[str]
    status: str               # "kept", "removed", "would remove", "failed"
    stored_bytes: int = 0
    message: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LeftoverRemoval:
    key: str
    kind: str                 # "archive" (no manifest) or "temp" (unfinished write)
    age_seconds: int
    bytes: int
    status: str               # "removed", "would remove", "kept (too young)", "failed"
    message: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PruneResult:
    repository: str
    dry_run: bool
    rules: str
    snapshots: list[SnapshotDecision]
    leftovers: list[LeftoverRemoval] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # volumes left alone, and why
    future_dated: list[str] = field(default_factory=list)  # snapshot ids (kept, not counted)
    warnings: list[str] = field(default_factory=list)   # for stderr; not failures

    @property
    def removed(self) -> list[SnapshotDecision]:
        return [d for d in self.snapshots if d.status in ("removed", "would remove")]

    @property
    def freed_bytes(self) -> int:
        return (sum(d.stored_bytes for d in self.removed)
                + sum(o.bytes for o in self.leftovers if o.status in ("removed", "would remove")))

    def raise_for_failures(self) -> None:
        failed = [d.message for d in self.snapshots if d.status == "failed"]
        failed += [o.message for o in self.leftovers if o.status == "failed"]
        failed += self.problems
        if failed:
            raise VolbackupError(f"prune: {len(failed)} problem(s), the first: {failed[0]}")


def prune(repo: Repository, rules: retention.Rules, volumes: list[str] | None = None,
          host: str | None = None, by_host: bool = True, allow_remove_newest: bool = False,
          dry_run: bool = False, leftover_age: float = DEFAULT_LEFTOVER_AGE,
          lock_wait: float = 60, on_break=lambda lock, why: None,
          now: datetime | None = None, protected: Collection[str] = ()) -> PruneResult:
    if rules.empty:
        raise ValueError("prune needs at least one keep rule")
    if dry_run:  # reads only: no lock, works on a read-only repository
        return _prune(repo, rules, volumes, host, by_host, allow_remove_newest, True,
                      leftover_age, now, protected)
    with locking.locked(repo.backend, locking.EXCLUSIVE, lock_wait, "prune", on_break):
        return _prune(repo, rules, volumes, host, by_host, allow_remove_newest, False,
                      leftover_age, now, protected)


def _prune(repo, rules, volumes, host, by_host, allow_remove_newest, dry_run, leftover_age,
           now, protected) -> PruneResult:
    now = now or datetime.now(timezone.utc)  # read once the lock is held
    listing = repo.snapshots(host=host)
    wanted = set(volumes) if volumes else None
    damaged = {p.volume for p in listing.problems}
    problems = [f"volume {p.volume} left alone: {p.message}" for p in listing.problems
                if wanted is None or p.volume in wanted]
    manifests = {m.snapshot: m for m in listing.snapshots
                 if (wanted is None or m.volume in wanted) and m.volume not in damaged}
    snaps = [retention.Snap(m.snapshot, m.volume, _created(m), m.host) for m in manifests.values()]
    decisions = retention.decide(snaps, rules, now, by_host, allow_remove_newest,
                                 set(protected)) if snaps else []
    result = PruneResult(repo.describe(), dry_run, rules.describe(), [], [], problems)
    for d in decisions:
        m = manifests[d.snap.id]
        if d.future:
            result.future_dated.append(m.snapshot)
            result.warnings.append(
                f"snapshot {m.snapshot} is dated {utc_iso(d.snap.created)}, after this host's "
                f"clock ({utc_iso(now)}): kept, and not counted by the keep rules (another "
                f"host's clock ahead, or a wrong manifest?)")
        out = SnapshotDecision(m.snapshot, m.volume, m.host, m.created, d.keep, d.reasons,
                               "kept" if d.keep else ("would remove" if dry_run else "removed"),
                               m.stored_bytes)
        if not d.keep and not dry_run:
            _remove(repo, m, out)
        result.snapshots.append(out)
    if host is None or wanted is not None:  # leftovers have no host: only by volume
        result.leftovers = _leftovers(repo, wanted, dry_run, timedelta(seconds=leftover_age), now)
    return result


def _created(m: Manifest) -> datetime:
    return datetime.fromisoformat(m.created.replace("Z", "+00:00")).astimezone(timezone.utc)


def _remove(repo: Repository, m: Manifest, out: SnapshotDecision) -> None:
    try:
        repo.backend.delete(repo.manifest_key(m.snapshot))
    except Exception as e:  # any error: this snapshot failed, the next is still decided
        out.status, out.message = "failed", f"{m.snapshot}: {as_error(e)}"
        return
    try:
        repo.backend.delete(repo.archive_key(m))
    except Exception as e:
        out.status = "failed"
        out.message = (f"{m.snapshot}: removed, but its archive is left for the next prune: "
                       f"{as_error(e)}")


def _leftovers(repo: Repository, wanted: set[str] | None, dry_run: bool, age: timedelta,
               now: datetime) -> list[LeftoverRemoval]:
    out = []
    blobs = list(repo.backend.list(PREFIX))
    manifests = {b.key[:-len(MANIFEST_SUFFIX)] for b in blobs if b.key.endswith(MANIFEST_SUFFIX)}
    for blob in blobs:
        if not blob.key.endswith(ARCHIVE_SUFFIX) or blob.key[:-len(ARCHIVE_SUFFIX)] in manifests:
            continue
        volume, _, name = blob.key[len(PREFIX):].partition("/")
        if wanted is not None and volume not in wanted:
            continue
        try:
            started = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            continue  # not named by volbackup: not ours to remove
        old_enough = now - started >= age
        out.append(_removal(repo.backend.delete, blob.key, blob.key, "archive", now - started,
                            blob.size, old_enough, dry_run))
    for temp in repo.backend.temp_files():
        volume = temp.key[len(PREFIX):].split("/", 1)[0] if temp.key.startswith(PREFIX) else None
        if wanted is not None and volume not in wanted:
            continue
        quiet = now - temp.modified
        dead = temp.pid is not None and not pid_alive(temp.pid)
        old_enough = quiet >= age or (dead and quiet >= TEMP_QUIET)
        out.append(_removal(repo.backend.remove_temp, temp, temp.key, "temp", quiet, temp.size,
                            old_enough, dry_run))
    return out


def _removal(remove, target, key: str, kind: str, age: timedelta, size: int, old_enough: bool,
             dry_run: bool) -> LeftoverRemoval:
    out = LeftoverRemoval(key, kind, max(0, int(age.total_seconds())), size, "removed")
    if not old_enough:
        out.status = "kept (too young)"
    elif dry_run:
        out.status = "would remove"
    else:
        try:
            remove(target)
        except Exception as e:
            out.status, out.message = "failed", f"{key}: {as_error(e)}"
    return out

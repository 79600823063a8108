"""Apply a retention policy to a repository, and remove what interrupted runs left behind.

Under an exclusive repository lock: decide with volbackup.repo.retention, then for each
snapshot to remove delete its manifest first (the snapshot is gone) and its archive or
chunk list after (a failure there leaves an orphan, which the next prune removes). Then
remove orphaned archives and chunk lists (no manifest) whose stamp is older than
`leftover_age`, and unfinished writes (S3 multipart uploads, temp files of a directory
repository) by the rule of `cleanup`, which owns them (volbackup.ops.cleanup), with
`leftover_age` for its age. In a chunked repository, last, the chunks that no chunk list
names any more, and are older than `leftover_age`, are swept (volbackup.repo.sweep).
A volume with an unreadable manifest is left alone and reported.

A packed repository is pruned under the prune lock instead, which lets backups run: its
sweep plans, waits for the backups that could have seen the old index (up to
`wait_for_backups`) and checks again before it deletes (volbackup.repo.packsweep); a
leftover must also be older than every run that holds a lock.

An encrypted repository is pruned only with its key (else KeyProblem, exit 17, before
anything is read): the rules count only the snapshots whose MAC checks out. A manifest that
fails (planted or altered by a writer without the key) is neither counted nor removed: it
is reported in `unauthentic` and `warnings`, and the prune then fails with exit 6.

`protected` snapshot ids (those the calling run just made: `backup --prune`, `run`) are
never removed. A snapshot dated in the future (clock skew, or a crafted manifest) is kept,
not counted by the rules, and reported in `future_dated` and `warnings`
(volbackup.repo.retention).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Collection

from volbackup.errors import IntegrityError, KeyProblem, VolbackupError, as_error, reworded
from volbackup.ops.cleanup import GONE, TOO_YOUNG, Status, remove_unfinished
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.repo import locking, retention
from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository
from volbackup.repo.pruneplan import Waiting
from volbackup.repo.sweep import ChunkSweep
from volbackup.timefmt import parse_utc_iso, utc_iso

DEFAULT_LEFTOVER_AGE = 6 * 3600.0
NO_RULE = "no rule keeps it"


@dataclass(frozen=True)
class PruneOptions:
    """What to prune and how; `prune --help` describes each."""

    rules: retention.Rules
    volumes: Collection[str] | None = None   # None or empty: every volume
    host: str | None = None                  # only the snapshots made on this host
    by_host: bool = True                     # decide per (host, volume), not per volume
    allow_remove_newest: bool = False
    dry_run: bool = False
    leftover_age: float = DEFAULT_LEFTOVER_AGE  # seconds
    lock_wait: float = 60.0                  # seconds
    protected: Collection[str] = ()          # snapshot ids never removed
    wait_for_backups: float = 600.0          # seconds (packed repositories)


@dataclass
class SnapshotDecision:
    snapshot: str
    volume: str
    host: str
    created: str
    keep: bool
    reasons: list[str]        # the rules that keep it
    status: Status
    stored_bytes: int = 0
    message: str | None = None  # what went wrong, when failed

    @property
    def reason(self) -> str:
        """For people: the rules that keep it, or NO_RULE."""
        return ", ".join(self.reasons) if self.keep else NO_RULE

    def as_dict(self) -> dict:
        return {**self.__dict__, "status": self.status.value, "reason": self.reason}


@dataclass
class LeftoverRemoval:
    key: str
    kind: str                 # "archive" (no manifest), "temp" or "upload" (unfinished write)
    age_seconds: int
    bytes: int | None         # None: an upload whose size the store did not say
    status: Status
    message: str | None = None
    reason: str | None = None  # for people: why kept ("too young") or removed

    def as_dict(self) -> dict:
        return {**self.__dict__, "status": self.status.value}


@dataclass
class PruneResult:
    repository: str
    dry_run: bool
    rules: str
    snapshots: list[SnapshotDecision]
    leftovers: list[LeftoverRemoval] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # volumes left alone, and why
    future_dated: list[str] = field(default_factory=list)  # snapshot ids (kept, not counted)
    # encrypted repository: manifests whose MAC failed (left alone, not counted)
    unauthentic: list[dict] = field(default_factory=list)  # {volume, snapshot, message}
    warnings: list[str] = field(default_factory=list)   # for stderr; not failures
    chunks: ChunkSweep | None = None                    # a chunked repository's sweep

    @property
    def removed(self) -> list[SnapshotDecision]:
        return [d for d in self.snapshots if d.status in GONE]

    @property
    def freed_bytes(self) -> int:
        if self.chunks is not None:  # a snapshot's stored_bytes are shared: count chunks
            return self.chunks.removed_bytes + sum(
                o.bytes or 0 for o in self.leftovers if o.status in GONE)
        return (sum(d.stored_bytes for d in self.removed)
                + sum(o.bytes or 0 for o in self.leftovers if o.status in GONE))

    def raise_for_failures(self) -> None:
        failed = [d.message for d in self.snapshots if d.status == Status.FAILED]
        failed += [o.message for o in self.leftovers if o.status == Status.FAILED]
        failed += self.problems
        if self.chunks is not None:
            failed += self.chunks.problems
        if failed:
            raise VolbackupError(f"prune: {len(failed)} problem(s), the first: {failed[0]}")
        if self.unauthentic:
            raise IntegrityError(
                f"prune: {len(self.unauthentic)} manifest(s) not authentic, left alone and "
                f"not counted: {self.unauthentic[0]['message']}")


def prune(repo: Repository, options: PruneOptions,
          on_break: Callable[[locking.LockInfo, str], None] = lambda lock, why: None,
          now: datetime | None = None, progress: ProgressFactory = no_progress,
          sleep: Callable[[float], None] = time.sleep,
          monotonic: Callable[[], float] = time.monotonic) -> PruneResult:
    """Apply `options`; `now` (default: the clock, read once the lock is held) is for tests,
    and so are `sleep` and `monotonic` (how a packed repository's prune waits for
    backups). `progress`: the bytes of the archives, then of the chunks, being removed."""
    if options.rules.empty:
        raise ValueError("prune needs at least one keep rule")
    try:
        repo.check_secrets(reading=False)
    except KeyProblem as e:
        raise reworded(e, f"{e} (prune decides only on snapshots whose MAC it has "
                          f"checked)") from None
    waiting = Waiting(options.wait_for_backups, sleep, monotonic, on_break)
    if options.dry_run:  # reads only: no lock, works on a read-only repository
        return _prune(repo, options, now, progress, waiting)
    # A packed repository's prune lets backups run: it plans, waits for the backups
    # that could have seen the old index, and checks again (volbackup.repo.pruneplan).
    kind = locking.PRUNE if repo.layout.packed else locking.EXCLUSIVE
    with repo.lock(kind, options.lock_wait, "prune", on_break):
        return _prune(repo, options, now, progress, waiting)


def _prune(repo: Repository, options: PruneOptions, now: datetime | None,
           progress: ProgressFactory, waiting: Waiting) -> PruneResult:
    now = now or datetime.now(timezone.utc)  # read once the lock is held
    dry_run = options.dry_run
    listing = repo.snapshots(host=options.host)
    wanted = set(options.volumes) if options.volumes else None
    damaged = {p.volume for p in listing.problems}
    problems = [f"volume {p.volume} left alone: {p.message}" for p in listing.problems
                if wanted is None or p.volume in wanted]
    manifests = {m.snapshot: m for m in listing.snapshots
                 if (wanted is None or m.volume in wanted) and m.volume not in damaged}
    snaps = [retention.Snap(m.snapshot, m.volume, _created(m), m.host) for m in manifests.values()]
    rules = options.rules
    decisions = retention.decide(snaps, rules, now, options.by_host,
                                 options.allow_remove_newest,
                                 set(options.protected)) if snaps else []
    result = PruneResult(repo.describe(), dry_run, rules.describe(), [], [], problems)
    for p in listing.unauthentic:
        if wanted is None or p.volume in wanted:
            result.unauthentic.append({"volume": p.volume, "snapshot": p.snapshot,
                                       "message": p.message})
            result.warnings.append(f"{p.message}: left alone, and not counted by the keep "
                                   f"rules")
    # An archive's stored bytes are its size; in a chunked repository the sweep is the
    # long part, and a snapshot's stored bytes (shared chunks) say nothing of its removal.
    doomed = sum(manifests[d.snap.id].stored_bytes for d in decisions if not d.keep)
    bar = (progress("removing snapshots", doomed) if doomed and not dry_run
           and not repo.layout.chunked else nullcontext(lambda n: None))
    with bar as update:
        for d in decisions:
            _decide(repo, d, manifests[d.snap.id], result, now, dry_run, update)
    age = timedelta(seconds=options.leftover_age)
    if options.host is None or wanted is not None:  # leftovers have no host: only by volume
        result.leftovers = _leftovers(repo, wanted, dry_run, age, _leftover_now(repo, now, age))
    if repo.layout.chunked:
        # Last: what the removed snapshots and leftovers alone held (every volume's lists
        # count, so a prune of some volumes never takes what others use).
        result.chunks = repo.sweep_chunks(age, now, dry_run,
                                          _would_go(repo, manifests, result), progress,
                                          waiting)
        result.warnings += getattr(result.chunks, "notes", [])
    return result


def _leftover_now(repo: Repository, now: datetime, age: timedelta) -> datetime:
    """The time leftovers are judged at. Under the prune lock backups run meanwhile: a
    leftover must be older than `age` and than every run holding a lock (a long backup's
    temp file, or its chunk list before the manifest, is not one)."""
    if not repo.layout.packed or repo.layout.held is None:
        return now
    since = repo.oldest_other_lock()
    return now if since is None else min(now, since + age)


def _decide(repo: Repository, d, m: Manifest, result: PruneResult, now: datetime,
            dry_run: bool, update: Callable[[int], None]) -> None:
    if d.future:
        result.future_dated.append(m.snapshot)
        result.warnings.append(
            f"snapshot {m.snapshot} is dated {utc_iso(d.snap.created)}, after this host's "
            f"clock ({utc_iso(now)}): kept, and not counted by the keep rules (another "
            f"host's clock ahead, or a wrong manifest?)")
    status = Status.KEPT if d.keep else (Status.WOULD_REMOVE if dry_run else Status.REMOVED)
    out = SnapshotDecision(m.snapshot, m.volume, m.host, m.created, d.keep, d.reasons,
                           status, m.stored_bytes)
    if not d.keep and not dry_run:
        _remove(repo, m, out)
        update(m.stored_bytes)
    result.snapshots.append(out)


def _would_go(repo: Repository, manifests: dict[str, Manifest], result: PruneResult
              ) -> list[str]:
    """The chunk lists a dry run would have removed: the sweep counts them as gone."""
    keys = [key for d in result.snapshots
            if d.status == Status.WOULD_REMOVE and manifests[d.snapshot].chunked
            for key in repo.reference_keys(manifests[d.snapshot])]
    return keys + [o.key for o in result.leftovers
                   if o.status == Status.WOULD_REMOVE and o.kind == "archive"]


def _created(m: Manifest) -> datetime:
    return parse_utc_iso(m.created).astimezone(timezone.utc)


def _remove(repo: Repository, m: Manifest, out: SnapshotDecision) -> None:
    try:
        repo.remove_manifest(m.snapshot)
    except Exception as e:  # any error: this snapshot failed, the next is still decided
        out.status, out.message = Status.FAILED, f"{m.snapshot}: {as_error(e)}"
        return
    try:
        repo.remove_archive(m)
    except Exception as e:
        out.status = Status.FAILED
        out.message = (f"{m.snapshot}: removed, but its archive is left for the next prune: "
                       f"{as_error(e)}")


def _leftovers(repo: Repository, wanted: set[str] | None, dry_run: bool, age: timedelta,
               now: datetime) -> list[LeftoverRemoval]:
    out = []
    for orphan in repo.orphans():
        if wanted is not None and orphan.volume not in wanted:
            continue
        old = now - orphan.started
        out.append(LeftoverRemoval(orphan.key, "archive", max(0, int(old.total_seconds())),
                                   orphan.size, Status.REMOVED))
        if old < age:
            out[-1].status, out[-1].reason = Status.KEPT, TOO_YOUNG
            continue
        out[-1].reason = f"no manifest, started over {retention.format_duration(age)} ago"
        if dry_run:
            out[-1].status = Status.WOULD_REMOVE
            continue
        try:
            repo.remove_orphan(orphan)
        except Exception as e:
            out[-1].status, out[-1].message = Status.FAILED, f"{orphan.key}: {as_error(e)}"
    for o in remove_unfinished(repo, age, dry_run, now, wanted):
        out.append(LeftoverRemoval(o.key, o.kind, o.age_seconds, o.bytes, o.status,
                                   o.message and f"{o.key}: {o.message}", o.reason))
    return out

"""`volbackup doctor`: will tonight's backup work, and if not, why not.

Each check says ok, warning or problem, with a one-line reason and what to do. A
problem is something that makes a backup fail (the engine or the repository out of
reach, a repository that cannot be written); a warning is worth knowing but a backup
still works (a stale lock the next run breaks, leftovers, a clock that disagrees with
the repository). Nothing is changed, except a probe blob written and removed at once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from volbackup.docker import direct
from volbackup.docker.engine import Engine
from volbackup.docker.facts import PODMAN
from volbackup.errors import NotReady, VolbackupError, as_error
from volbackup.ops.cleanup import GONE, remove_unfinished
from volbackup.repo.manifest import parse_created
from volbackup.repo.repository import Repository
from volbackup.repo.sealing import Secrets

OK, WARNING, PROBLEM = "ok", "warning", "problem"
CLOCK_TOLERANCE = timedelta(minutes=5)
MIN_FREE = 64 << 20             # a repository with less than this free is full
ABANDONED_AFTER = timedelta(hours=24)  # cleanup's default --older-than


@dataclass
class Check:
    name: str
    status: str             # OK, WARNING or PROBLEM
    reason: str
    action: str | None = None   # what to do about it (None: nothing)
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DoctorReport:
    repository: str | None
    checks: list[Check]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == PROBLEM]

    def raise_for_problems(self) -> None:
        if self.problems:
            first = self.problems[0]
            raise NotReady(f"{len(self.problems)} problem(s) would make a backup fail; "
                           f"{first.name}: {first.reason}")


def doctor(repo_url: str | None, connect: Callable[[], Engine], now: datetime,
           secrets: Secrets | None = None) -> DoctorReport:
    """Every check, in the order a backup meets them; `connect` reaches the engine, `now`
    is this host's clock (UTC)."""
    checks: list[Check] = []
    engine, sizes, area = _engine_checks(connect, checks)
    largest = max(((n, s) for n, s in sizes.items() if s is not None),
                  key=lambda item: item[1], default=None)
    repo = None
    if repo_url is None:
        checks.append(Check("repository", WARNING, "none given: only the engine was checked",
                            "give -r REPO (or set VOLBACKUP_REPO)"))
    else:
        repo = _repository_check(repo_url, secrets, checks)
    if repo is not None:
        for name, judge in (("repository space", lambda: _repo_space(repo, largest)),
                            ("clock", lambda: _clock(repo, now)),
                            ("locks", lambda: _locks(repo, now)),
                            ("unfinished writes", lambda: _unfinished(repo, now))):
            checks.append(_guarded(name, judge))
    if engine is not None:
        checks.append(_guarded("volume area space", lambda: _area_space(area, largest)))
        checks.append(_guarded("helpers", lambda: _helpers(engine)))
    return DoctorReport(repo.describe() if repo is not None else repo_url, checks)


def _guarded(name: str, judge: Callable[[], Check]) -> Check:
    """`judge()`, or a problem saying why it could not judge."""
    try:
        check = judge()
    except Exception as e:  # any error: this check failed, the others still run
        return Check(name, PROBLEM, str(as_error(e)))
    check.name = name
    return check


def _engine_checks(connect: Callable[[], Engine], checks: list[Check]
                   ) -> tuple[Engine | None, dict[str, int | None], str | None]:
    """The engine and direct-path checks; (engine, volume sizes, the engine's volume
    directory when it is this host's)."""
    try:
        engine = connect()
        facts = engine.facts()
    except VolbackupError as e:
        checks.append(Check("engine", PROBLEM, str(e),
                            "start the engine, or point DOCKER_HOST at it"))
        checks.append(Check("direct path", WARNING, "not checked: no engine"))
        return None, {}, None
    mode = ("rootless" if facts.rootless else "user-namespace remapping" if facts.userns_remap
            else "rootful, no user-namespace remapping")
    checks.append(Check("engine", OK, f"{facts.product} {facts.version} (API "
                        f"{facts.api_version}) at {engine.where}, {mode}",
                        details={"product": facts.product, "version": facts.version,
                                 "api_version": facts.api_version,
                                 "rootless": facts.rootless, "userns_remap": facts.userns_remap,
                                 "data_root": facts.data_root}))
    area = _volume_area(facts.data_root)
    lacking = direct.missing(engine, area)
    if lacking and facts.product == PODMAN:
        checks.append(Check("direct path", PROBLEM, "not available (lacks "
                            + ", ".join(lacking) + "), and Podman's archive endpoint gives "
                            "every file the helper's owner: volumes cannot be backed up",
                            "run volbackup as root on the Podman host, with GNU tar "
                            "(rootless Podman: as its user, inside `podman unshare`)",
                            details={"available": False, "missing": lacking}))
    elif lacking:
        checks.append(Check("direct path", OK, "not available (lacks " + ", ".join(lacking)
                            + "): volumes are read through the engine, which is slower",
                            "run volbackup as root on the engine's host, with GNU tar, "
                            "for the direct path" if lacking != ["a local engine"] else None,
                            details={"available": False, "missing": lacking}))
    else:
        checks.append(Check("direct path", OK, "available: local volumes are read with GNU "
                            "tar on this host", details={"available": True, "missing": []}))
    try:
        sizes = engine.volume_sizes()
    except VolbackupError:
        sizes = {}
    return engine, sizes, engine.local_directory(area) if area else None


def _volume_area(data_root: str) -> str | None:
    return direct.volume_area(data_root)


def _repository_check(url: str, secrets: Secrets | None, checks: list[Check]
                      ) -> Repository | None:
    try:
        repo = Repository.open(url, secrets=secrets)
        repo.require_repository()
    except VolbackupError as e:
        checks.append(Check("repository", PROBLEM, str(e),
                            "create it (a directory, or a bucket), or fix -r and the "
                            "credentials"))
        return None
    try:
        repo.probe_write()
        repo.check_secrets(reading=False)
    except VolbackupError as e:
        checks.append(Check("repository", PROBLEM, str(e),
                            "fix its permissions, free space or key, or give another -r"))
        return repo
    if not repo.layout.chunked:
        what = "archive layout (no config; `volbackup init` makes a packed one)"
        details = {"layout": "archive", "format_version": None, "encrypted": False}
    else:
        encrypted = repo.config.encrypted
        what = (f"{repo.layout.name}, format {repo.config.format_version}, "
                + ("encrypted" if encrypted else "not encrypted"))
        details = {"layout": repo.layout.name, "format_version": repo.config.format_version,
                   "encrypted": encrypted}
    checks.append(Check("repository", OK, f"{repo.describe()}: reachable, writable, {what}",
                        details=details))
    return repo


def _space(free: int, largest: tuple[str, int] | None) -> dict:
    return {"free_bytes": free, "largest_volume": largest[0] if largest else None,
            "largest_volume_bytes": largest[1] if largest else None}


def _repo_space(repo: Repository, largest: tuple[str, int] | None) -> Check:
    free = repo.free_space()
    if free is None:
        return Check("", OK, "not applicable: this store cannot say how much space is free")
    details = _space(free, largest)
    if free < MIN_FREE:
        return Check("", PROBLEM, f"{_mib(free)} free: the repository is full",
                     "free space, or `volbackup prune` old snapshots", details)
    if largest and free < largest[1]:
        return Check("", WARNING, f"{_mib(free)} free, less than volume {largest[0]} "
                     f"({_mib(largest[1])}) before compression",
                     "free space, or `volbackup prune` old snapshots", details)
    return Check("", OK, f"{_mib(free)} free" + (
        f", more than the largest volume ({largest[0]}, {_mib(largest[1])})" if largest
        else ""), details=details)


def _area_space(area: str | None, largest: tuple[str, int] | None) -> Check:
    if area is None:
        return Check("", OK, "not measured: the engine's volume area is not this host's "
                     "(remote engine, another mount namespace or user-namespace remapping)")
    fs = os.statvfs(area)
    free = fs.f_bavail * fs.f_frsize
    details = {"path": area, **_space(free, largest)}
    if largest and free < largest[1]:
        return Check("", WARNING, f"{_mib(free)} free in {area}, less than volume "
                     f"{largest[0]} ({_mib(largest[1])}): restoring it beside the others "
                     f"would not fit", "free space on the engine's data root", details)
    return Check("", OK, f"{_mib(free)} free in {area}", details=details)


def _clock(repo: Repository, now: datetime) -> Check:
    listing = repo.snapshots()
    if not listing.snapshots:
        return Check("", OK, "no snapshots yet to compare with")
    newest = listing.snapshots[-1]
    ahead = parse_created(newest.created) - now
    details = {"newest_snapshot": newest.snapshot, "newest_created": newest.created,
               "ahead_seconds": int(ahead.total_seconds())}
    if ahead > CLOCK_TOLERANCE:
        return Check("", WARNING, f"snapshot {newest.snapshot} was made {_duration(ahead)} "
                     f"in the future by this host's clock (host {newest.host})",
                     "set the clocks right (NTP): retention and stale-lock rules compare "
                     "times across hosts", details)
    return Check("", OK, f"newest snapshot {newest.snapshot} is not in the future",
                 details=details)


def _locks(repo: Repository, now: datetime) -> Check:
    locks = repo.locks()
    if not locks:
        return Check("", OK, "no locks")
    details = {"locks": [{"key": lock.key, "kind": lock.kind, "host": lock.host,
                          "pid": lock.pid, "started": lock.started,
                          "stale": lock.stale_reason(now)} for lock in locks]}
    newer = [lock for lock in locks if lock.newer]
    if newer:
        return Check("", PROBLEM, newer[0].describe(), "upgrade volbackup, or `volbackup "
                     "unlock --all` once that run is over", details)
    stale = [(lock, why) for lock in locks if (why := lock.stale_reason(now))]
    if stale:
        lock, why = stale[0]
        return Check("", WARNING, f"{len(stale)} stale lock(s): {lock.describe()} ({why})",
                     "the next run breaks it; `volbackup unlock` does it now", details)
    exclusive = [lock for lock in locks if lock.kind == "exclusive"]
    if exclusive:
        return Check("", WARNING, f"held: {exclusive[0].describe()}", "a backup waits for it "
                     "(--lock-wait) and fails with exit 11 if it is still held", details)
    pruning = [lock for lock in locks if lock.kind == "prune"]
    if pruning:     # a packed repository's prune: backups run beside it
        return Check("", OK, f"held: {pruning[0].describe()}; {len(locks) - len(pruning)} "
                     f"shared lock(s) of running backups", details=details)
    return Check("", OK, f"{len(locks)} shared lock(s) of running backups", details=details)


def _unfinished(repo: Repository, now: datetime) -> Check:
    writes = remove_unfinished(repo, ABANDONED_AFTER, dry_run=True, now=now)
    abandoned = [w for w in writes if w.status in GONE]
    details = {"abandoned": len(abandoned), "in_progress": len(writes) - len(abandoned),
               "abandoned_bytes": sum(w.bytes or 0 for w in abandoned)}
    if abandoned:
        return Check("", WARNING, f"{len(abandoned)} unfinished write(s) of killed runs "
                     f"({_mib(details['abandoned_bytes'])}), e.g. {abandoned[0].key}",
                     f"`volbackup cleanup -r {repo.describe()}` removes them", details)
    if writes:
        return Check("", OK, f"{len(writes)} write(s) in progress", details=details)
    return Check("", OK, "none", details=details)


def _helpers(engine: Engine) -> Check:
    found = engine.helpers_left()
    stale = [name for name, is_stale in found if is_stale]
    details = {"stale": stale, "in_use": [name for name, is_stale in found if not is_stale]}
    if stale:
        return Check("", WARNING, f"{len(stale)} helper(s) left by runs that are over: "
                     + ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else ""),
                     "the next backup removes them (or `docker rm` them)", details)
    if found:
        return Check("", OK, f"{len(found)} helper(s) of runs still going", details=details)
    return Check("", OK, "none left behind", details=details)


def _mib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"

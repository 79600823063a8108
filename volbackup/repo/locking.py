"""Repository locks: shared (backup), exclusive (prune of an archive or chunked
repository) and prune (prune of a packed repository), on top of any Backend.

Each run writes its own lock blob `locks/<stamp>-<random>.json` (host, pid, pid namespace,
kind, start and refresh times), then lists `locks/`. If it sees a conflicting lock that is
not stale, it removes its own, waits, and tries again until `wait` seconds have passed;
then it raises RepositoryLocked. Shared locks conflict only with exclusive ones; a prune
lock conflicts with exclusive and prune locks, not with shared ones: a packed repository's
prune lets backups run and waits for them itself (volbackup.repo.pruneplan).

Why this is safe without compare-and-swap: every run writes before it lists. Of two runs,
the one that lists second sees the other's lock, so two conflicting runs can never both go
on (backends are read-after-write consistent: a local directory, and S3 since 2020).
Lock names are unique per run, so breaking a stale lock never removes a live one.

A lock is stale when its pid is dead on this host (same host name and pid namespace) or
when it was not refreshed for STALE_AFTER. A lock whose `format_version` is higher than
FORMAT_VERSION was written by a newer volbackup whose rules this one cannot know: it is
live until `unlock --all` removes it, never broken as stale. A holder refreshes its lock every REFRESH_EVERY
from a background thread, so a long backup's lock never looks stale. Clocks of the hosts
sharing a repository must agree within a few minutes.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from volbackup import __version__
from volbackup.errors import LockLost, RepositoryError, RepositoryLocked
from volbackup.processes import pid_namespace, run_is_over
from volbackup.repo.backends import Backend, BadEntry, BlobNotFound
from volbackup.signals import held, main_thread_only
from volbackup.timefmt import parse_utc_iso, utc_iso

PREFIX = "locks/"
REFRESH_EVERY = timedelta(minutes=5)
STALE_AFTER = timedelta(minutes=30)
SHARED, EXCLUSIVE, PRUNE = "shared", "exclusive", "prune"
# The lock blob's format. A newer volbackup that changes what a lock means raises it and
# keeps `format_version` readable as a top-level JSON integer.
FORMAT_VERSION = 1


def _now() -> datetime:
    return datetime.now(timezone.utc)


_pid_namespace = pid_namespace


@dataclass
class LockInfo:
    key: str
    kind: str
    host: str
    pid: int
    pid_namespace: str
    started: str
    refreshed: str
    command: str = ""
    tool_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def newer(self) -> bool:
        """Written by a newer volbackup: its holder's rules are unknown here."""
        return self.format_version > FORMAT_VERSION

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["key"]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> "LockInfo":
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            version = data.get("format_version", 1)
            if type(version) is not int or version < 1:
                raise ValueError(version)
            if version > FORMAT_VERSION:
                return cls._newer(key, data, version)
            return cls(key=key, kind=str(data["kind"]), host=str(data["host"]),
                       pid=int(data["pid"]), pid_namespace=str(data.get("pid_namespace", "")),
                       started=str(data["started"]), refreshed=str(data["refreshed"]),
                       command=str(data.get("command", "")),
                       tool_version=str(data.get("tool_version", "")))
        except (ValueError, KeyError, TypeError, RecursionError):
            # Unreadable (damaged, or not ours): exclusive, and stale at once.
            return cls(key, EXCLUSIVE, "?", 0, "", "", "", "unreadable lock")

    @classmethod
    def _newer(cls, key: str, data: dict, version: int) -> "LockInfo":
        """A lock of a newer format: what can be read of it, for messages; exclusive, so
        that it blocks every run, whatever kind its writer meant."""
        def text(name: str) -> str:
            value = data.get(name)
            return value if isinstance(value, str) else ""

        pid = data.get("pid")
        return cls(key, EXCLUSIVE, text("host") or "?", pid if type(pid) is int else 0, "",
                   text("started"), text("refreshed"), text("command"), text("tool_version"),
                   version)

    def describe(self) -> str:
        if self.newer:
            return (f"lock of format {self.format_version} (this volbackup reads format "
                    f"{FORMAT_VERSION}) written by volbackup {self.tool_version or '?'} on host "
                    f"{self.host}, started {self.started or '?'}: a newer volbackup's lock is "
                    f"never broken as stale; upgrade, or remove it with `volbackup unlock --all` "
                    f"once its run is over")
        return (f"{self.kind} lock of pid {self.pid} on host {self.host}"
                + (f" ({self.command})" if self.command else "")
                + f", started {self.started or '?'}")

    def stale_reason(self, now: datetime | None = None) -> str | None:
        """Why this lock may be broken, or None while its holder may still be running."""
        if self.newer:
            return None  # its holder may refresh it, or judge it, by rules unknown here
        now = now or _now()
        # A lock without a pid namespace ("", older versions) is judged by age only.
        if run_is_over(self.host, self.pid_namespace, self.pid):
            return f"pid {self.pid} is not running on this host"
        try:
            refreshed = parse_utc_iso(self.refreshed)
        except ValueError:
            return "it is unreadable"
        if now - refreshed > STALE_AFTER:
            return f"not refreshed since {self.refreshed} (over {int(STALE_AFTER.total_seconds() // 60)} min)"
        return None


def list_locks(backend: Backend) -> list[LockInfo]:
    """Every lock; one that is not a regular file or is too large reads as unreadable
    (exclusive and stale, so it can be broken: removing a symlink never follows it)."""
    found = []
    for info in backend.list(PREFIX):
        if info.key.endswith("/"):
            continue  # a directory under locks/ is not a lock
        try:
            raw = b"" if info.error else backend.read_bytes(info.key)
        except BlobNotFound:
            continue  # released while listing
        except BadEntry:
            raw = b""
        found.append(LockInfo.from_json(info.key, raw))
    return found


def conflict(a: str, b: str) -> bool:
    """Whether locks of kinds `a` and `b` exclude each other."""
    return EXCLUSIVE in (a, b) or a == b == PRUNE


def _conflicts(mine: LockInfo, others: list[LockInfo]) -> list[LockInfo]:
    return [o for o in others if o.key != mine.key and conflict(mine.kind, o.kind)]


class Lock:
    """A held lock; `release()` removes it. Refreshed in the background while held."""

    def __init__(self, backend: Backend, info: LockInfo):
        self.backend, self.info = backend, info
        self.lost = False       # found gone: never written again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="volbackup-lock", daemon=True)

    def _refresh(self) -> None:
        main_thread_only()  # Ctrl-C goes to the main thread (volbackup.signals)
        while not self._stop.wait(REFRESH_EVERY.total_seconds()):
            self.info.refreshed = utc_iso(_now())
            try:
                # A lock broken as stale is not written back: its run has lost it, and a
                # prune may count on that (`confirm`).
                if not self._present():
                    return
                self.backend.write_bytes(self.info.key, self.info.to_json())
            except RepositoryError:
                pass  # tried again next time; the lock goes stale only after STALE_AFTER

    def _present(self) -> bool:
        if not self.lost:
            try:
                self.backend.read_bytes(self.info.key)
            except BlobNotFound:
                self.lost = True
        return not self.lost

    def confirm(self) -> None:
        """Raise LockLost unless this lock is still in the repository (a backup asks
        before it indexes its packs and after it writes a manifest: docs/design.md,
        "Write ordering"). What is left of the race with a refresh is said there."""
        if not self._present():
            raise LockLost(f"the lock of this run ({self.info.key}) was removed from "
                           f"repository {self.backend.describe()} (broken as stale?): "
                           f"run again")

    def release(self) -> None:
        with held():  # a Ctrl-C during the release waits for it: no lock left behind
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()
            self.backend.delete(self.info.key)


def acquire(backend: Backend, kind: str, wait: float, command: str = "",
            on_break: Callable[[LockInfo, str], None] = lambda lock, why: None,
            sleep: Callable[[float], None] = time.sleep,
            monotonic: Callable[[], float] = time.monotonic) -> Lock:
    """Take a lock of `kind` (SHARED, EXCLUSIVE or PRUNE), waiting up to `wait` seconds
    (measured by `monotonic`, which tests replace together with `sleep`)."""
    if kind not in (SHARED, EXCLUSIVE, PRUNE):
        raise ValueError(kind)
    deadline = monotonic() + wait
    delay = 0.2
    while True:
        now = _now()
        info = LockInfo(f"{PREFIX}{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(6)}.json",
                        kind, socket.gethostname(), os.getpid(), _pid_namespace(), utc_iso(now),
                        utc_iso(now), command, __version__)
        backend.write_bytes(info.key, info.to_json())
        try:
            blocking = []
            for other in _conflicts(info, list_locks(backend)):
                why = other.stale_reason()
                if why:
                    backend.delete(other.key)
                    on_break(other, why)
                else:
                    blocking.append(other)
        except BaseException:
            backend.delete(info.key)
            raise
        if not blocking:
            lock = Lock(backend, info)
            lock._thread.start()
            return lock
        backend.delete(info.key)
        left = deadline - monotonic()
        if left <= 0:
            raise RepositoryLocked(
                f"repository {backend.describe()} is locked: {blocking[0].describe()}"
                + (f" (gave up after {wait:g}s)" if wait else "")
                + ("" if blocking[0].newer
                   else "; if that run is gone, `volbackup unlock` breaks stale locks"))
        sleep(min(left, delay * random.uniform(0.5, 1.5)))
        delay = min(delay * 2, 5.0)


@contextmanager
def locked(backend: Backend, kind: str, wait: float, command: str = "",
           on_break: Callable[[LockInfo, str], None] = lambda lock, why: None) -> Iterator[Lock]:
    lock = acquire(backend, kind, wait, command, on_break)
    try:
        yield lock
    finally:
        lock.release()


def unlock(backend: Backend, remove_all: bool = False) -> list[tuple[LockInfo, str | None]]:
    """Remove stale locks (every lock with `remove_all`): (lock, why removed or None if kept)."""
    out = []
    for lock in list_locks(backend):
        why = "removed with --all" if remove_all else lock.stale_reason()
        if why:
            backend.delete(lock.key)
        out.append((lock, why))
    return out

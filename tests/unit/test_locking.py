"""Repository locks on a directory backend: conflicts, waiting, stale locks, unlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from volbackup.errors import RepositoryLocked
from volbackup.repo import locking
from volbackup.repo.backends import LocalBackend
from volbackup.timefmt import utc_iso


@pytest.fixture
def backend(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    return LocalBackend(root)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(backend, kind="exclusive", pid=None, refreshed=None, host=None, name="planted"):
    """A lock of another run, written as that run would."""
    info = locking.LockInfo(f"locks/{name}.json", kind, host or locking.socket.gethostname(),
                            pid or 1, locking._pid_namespace(), "2027-01-01T00:00:00Z",
                            refreshed or utc_iso(locking._now()), "test")
    backend.write_bytes(info.key, info.to_json())
    return info


def lock_keys(backend):
    return [i.key for i in backend.list("locks/")]


def test_shared_locks_coexist_and_release(backend):
    a = locking.acquire(backend, locking.SHARED, 0)
    b = locking.acquire(backend, locking.SHARED, 0)
    assert len(lock_keys(backend)) == 2
    a.release()
    b.release()
    assert lock_keys(backend) == []


def test_lock_records_host_pid_and_times(backend):
    with locking.locked(backend, locking.EXCLUSIVE, 0, "prune") as lock:
        data = json.loads(backend.read_bytes(lock.info.key))
    assert data["pid"] == locking.os.getpid() and data["host"] == locking.socket.gethostname()
    assert data["kind"] == "exclusive" and data["command"] == "prune"
    assert data["started"].endswith("Z") and data["refreshed"].endswith("Z")


@pytest.mark.parametrize("held,wanted", [("exclusive", "shared"), ("shared", "exclusive"),
                                         ("exclusive", "exclusive")])
def test_conflicting_lock_fails_with_its_exit_code(backend, held, wanted):
    plant(backend, held, pid=locking.os.getpid())   # a live pid on this host
    with pytest.raises(RepositoryLocked) as caught:
        locking.acquire(backend, wanted, 0)
    assert caught.value.exit_code == 11
    assert f"{held} lock of pid {locking.os.getpid()}" in str(caught.value)
    assert lock_keys(backend) == ["locks/planted.json"]  # ours is gone again


def test_waits_for_a_lock_to_be_released(backend):
    held = locking.acquire(backend, locking.EXCLUSIVE, 0)
    threading.Timer(0.5, held.release).start()
    started = time.monotonic()
    with locking.locked(backend, locking.SHARED, 10):
        assert time.monotonic() - started >= 0.4


def test_gives_up_after_the_wait(backend):
    """An injected clock: the wait is exactly what was asked for, whatever the machine's load."""
    plant(backend, pid=locking.os.getpid())
    clock = [100.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    with pytest.raises(RepositoryLocked, match="gave up after 30s"):
        locking.acquire(backend, locking.SHARED, 30, sleep=sleep, monotonic=lambda: clock[0])
    assert len(slept) > 3  # it tried again, backing off, before giving up
    assert sum(slept) == pytest.approx(30)  # the last sleep is cut to the deadline
    assert all(0 < s <= 5 * 1.5 for s in slept)  # backoff capped
    assert lock_keys(backend) == ["locks/planted.json"]  # none of its attempts left behind


def test_lock_of_a_dead_pid_on_this_host_is_broken(backend):
    stale = plant(backend, pid=dead_pid())
    broken = []
    with locking.locked(backend, locking.EXCLUSIVE, 0, on_break=lambda lock, why: broken.append(why)):
        assert stale.key not in lock_keys(backend)
    assert broken and "is not running on this host" in broken[0]


def test_lock_of_another_host_is_broken_only_when_old(backend):
    plant(backend, pid=dead_pid(), host="elsewhere")
    with pytest.raises(RepositoryLocked):
        locking.acquire(backend, locking.SHARED, 0)
    old = utc_iso(datetime.now(timezone.utc) - locking.STALE_AFTER - timedelta(seconds=5))
    plant(backend, pid=dead_pid(), host="elsewhere", refreshed=old)
    with locking.locked(backend, locking.SHARED, 0):
        pass


def test_unreadable_lock_is_stale(backend):
    backend.write_bytes("locks/junk.json", b"{not json")
    with locking.locked(backend, locking.EXCLUSIVE, 0):
        assert "locks/junk.json" not in lock_keys(backend)


def test_holder_refreshes_its_lock(backend, monkeypatch):
    monkeypatch.setattr(locking, "REFRESH_EVERY", timedelta(seconds=0.1))
    with locking.locked(backend, locking.SHARED, 0) as lock:
        first = json.loads(backend.read_bytes(lock.info.key))["refreshed"]
        lock.info.refreshed = "2000-01-01T00:00:00Z"  # refresh writes the time anew
        time.sleep(0.5)
        assert json.loads(backend.read_bytes(lock.info.key))["refreshed"] >= first


def test_exclusive_locks_never_overlap(backend):
    holders, overlaps = [], []

    def worker():
        for _ in range(3):
            with locking.locked(backend, locking.EXCLUSIVE, 30):
                holders.append(1)
                if len(holders) > 1:
                    overlaps.append(1)
                time.sleep(0.01)
                holders.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and lock_keys(backend) == []


def test_unlock_removes_stale_locks_and_keeps_live_ones(backend):
    live = plant(backend, pid=locking.os.getpid(), name="live")
    plant(backend, pid=dead_pid(), name="dead")
    result = {lock.key: why for lock, why in locking.unlock(backend)}
    assert result[live.key] is None and "not running" in result["locks/dead.json"]
    assert lock_keys(backend) == [live.key]
    assert [why for _, why in locking.unlock(backend, remove_all=True)] == ["removed with --all"]
    assert lock_keys(backend) == []


def test_lock_that_is_a_symlink_fifo_or_huge_is_stale_and_never_followed(backend, tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    backend.write_bytes("locks/huge.json", b" " * (2 << 20))
    backend.write_bytes("locks/deep.json", b"[" * 200_000)
    os.symlink(target, backend.root / "locks" / "link.json")
    os.mkfifo(backend.root / "locks" / "fifo.json")
    assert {lock.command for lock in locking.list_locks(backend)} == {"unreadable lock"}
    with locking.locked(backend, locking.EXCLUSIVE, 0):
        assert not any(n in k for k in lock_keys(backend) for n in ("huge", "deep", "link", "fifo"))
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("body", [
    # a newer volbackup's lock, dead pid and long unrefreshed by this version's rules
    {"kind": "shared", "host": "HOST", "pid": "DEAD", "pid_namespace": "NS",
     "started": "2020-01-01T00:00:00Z", "refreshed": "2020-01-01T00:00:00Z",
     "command": "backup", "tool_version": "9.0.0"},
    # one whose fields this version cannot read at all
    {"payload": "c2VhbGVk"},
])
def test_a_lock_of_a_newer_format_is_live_and_only_unlock_all_removes_it(backend, body):
    """Such a lock was read as unreadable or by today's rules, and broken as stale: a newer
    volbackup's run would lose its lock to an older one."""
    body = {k: {"HOST": locking.socket.gethostname(), "DEAD": dead_pid(),
                "NS": locking._pid_namespace()}.get(v, v) for k, v in body.items()}
    backend.write_bytes("locks/newer.json", json.dumps({**body, "format_version": 99}).encode())
    lock, = locking.list_locks(backend)
    assert lock.newer and lock.stale_reason() is None and lock.kind == locking.EXCLUSIVE
    for kind in (locking.SHARED, locking.EXCLUSIVE):
        with pytest.raises(RepositoryLocked) as caught:
            locking.acquire(backend, kind, 0)
        assert "lock of format 99 (this volbackup reads format 1)" in str(caught.value)
        assert "never broken as stale" in str(caught.value)
        assert "unlock --all" in str(caught.value)
    assert [(lock.key, why) for lock, why in locking.unlock(backend)] == [("locks/newer.json", None)]
    assert lock_keys(backend) == ["locks/newer.json"]
    assert [why for _, why in locking.unlock(backend, remove_all=True)] == ["removed with --all"]
    assert lock_keys(backend) == []


@pytest.mark.parametrize("version", ["2", 0, True, None, 1.5])
def test_a_lock_with_a_malformed_format_version_is_unreadable(backend, version):
    plant(backend, pid=locking.os.getpid())
    data = json.loads(backend.read_bytes("locks/planted.json"))
    backend.write_bytes("locks/planted.json", json.dumps({**data, "format_version": version}).encode())
    assert [lock.command for lock in locking.list_locks(backend)] == ["unreadable lock"]


def test_own_locks_carry_the_format_version(backend):
    with locking.locked(backend, locking.SHARED, 0) as lock:
        assert json.loads(backend.read_bytes(lock.info.key))["format_version"] == 1

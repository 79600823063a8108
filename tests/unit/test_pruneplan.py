"""Prune of a packed repository while backups run (volbackup.repo.pruneplan, packsweep):
the prune lock, plans and their MACs, the wait for the locks that existed (a fake clock),
backups ignoring doomed packs, the rescue of packs a new snapshot needs, a killed prune's
plan carried out by the next, and a backup whose lock was broken."""

from __future__ import annotations

import hashlib
import hmac
import os
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone

import pytest

from tests.unit.chunkrepos import backup, chunked_repo, restored, volume_tar
from tests.unit.test_locking import dead_pid, plant
from volbackup.errors import LockLost, RepositoryLocked
from volbackup.ops.prune import PruneOptions, prune
from volbackup.repo import locking, packsweep, pruneplan
from volbackup.repo import repository as repository_module
from volbackup.repo.backends import LocalBackend
from volbackup.repo.config import PACKED
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.timefmt import utc_iso

AGO = datetime.now(timezone.utc) - timedelta(days=3)
OLD, NEW = volume_tar(seed=1, size=1 << 20), volume_tar(seed=2, size=1 << 20)


class Clock:
    """monotonic and sleep for the code that waits: time passes only when it sleeps;
    `on_sleep(n)` runs at the n-th sleep (what other runs do meanwhile)."""

    def __init__(self, on_sleep=lambda n: None):
        self.now, self.sleeps, self.on_sleep = 0.0, [], on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


def never_sleeps() -> Clock:
    def fail(n):
        raise AssertionError("prune waited")
    return Clock(fail)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def two(root):
    """pgdata: an old snapshot (OLD) and a newer one (NEW): keep-last 1 dooms OLD's packs."""
    repo = chunked_repo(root, seed=1, layout=PACKED)
    old = backup(repo, OLD, when=AGO)
    new = backup(repo, NEW, when=AGO + timedelta(days=1))
    return old, new


def pruned(root, clock: Clock, wait: float = 60, leftover_age: float = 0, **options):
    return prune(Repository.open(str(root)),
                 PruneOptions(Rules(last=1), leftover_age=leftover_age, wait_for_backups=wait,
                              **options),
                 sleep=clock.sleep, monotonic=clock.monotonic)


def writer(root, stack: ExitStack) -> Repository:
    """Another host's backup: its shared lock taken, its index loaded (now)."""
    repo = Repository.open(str(root))
    stack.enter_context(repo.lock(locking.SHARED, 0, "backup"))
    repo.blobs.index()
    return repo


def pack_files(root) -> set[str]:
    return {p.name for p in (root / "packs").rglob("*/*")}


def plan_files(root) -> list[str]:
    return sorted(p.name for p in (root / "prune").iterdir()) if (root / "prune").exists() \
        else []


def reads_back(root, manifest, tar) -> bool:
    repo = Repository.open(str(root))
    return restored(repo, repo.reveal(repo.load(manifest.snapshot))) == tar


def stop_at(monkeypatch, step: str) -> None:
    """A kill of prune at `step` (KeyboardInterrupt: the lock is released, the rest left)."""
    def pause(name):
        if name == step:
            raise KeyboardInterrupt(step)
    monkeypatch.setattr(packsweep, "pause", pause)


# -- the prune lock


def test_a_prune_lock_excludes_prunes_and_exclusive_locks_but_not_backups(tmp_path):
    backend = LocalBackend(tmp_path)
    held = locking.acquire(backend, locking.PRUNE, 0)
    locking.acquire(backend, locking.SHARED, 0).release()       # a backup runs beside it
    for kind in (locking.PRUNE, locking.EXCLUSIVE):
        with pytest.raises(RepositoryLocked):
            locking.acquire(backend, kind, 0)
    held.release()
    shared = locking.acquire(backend, locking.SHARED, 0)
    locking.acquire(backend, locking.PRUNE, 0).release()
    shared.release()


def test_a_prune_of_a_packed_repository_runs_beside_a_backup_and_a_chunked_one_does_not(
        root, tmp_path, two):
    with ExitStack() as stack:
        writer(root, stack)
        with pytest.raises(RepositoryLocked):
            chunked = chunked_repo(tmp_path / "chunked", seed=1)
            with chunked.lock(locking.SHARED, 0, "backup"):
                prune(chunked, PruneOptions(Rules(last=1), lock_wait=0))
        result = pruned(root, Clock(lambda n: stack.close()))
    assert result.chunks.plan and result.chunks.problems == [] and result.removed


# -- plans


def keyed(key: bytes):
    return lambda label, data: hmac.new(key, label + data, hashlib.sha256).digest()


def test_a_plan_round_trips_and_one_forged_or_altered_is_ignored_and_named(tmp_path):
    backend = LocalBackend(tmp_path)
    mac = keyed(b"k" * 32)
    plan = pruneplan.Plan(pruneplan.new_name(datetime.now(timezone.utc)), "locks/x.json",
                          "2026-12-07T00:00:00Z", ["ab" * 32], ["index/" + "cd" * 32])
    pruneplan.write_plan(backend, plan, mac)
    (found,) = pruneplan.read_plans(backend, mac).plans
    assert (found.doomed, found.superseded, found.rescued) == (plan.doomed, plan.superseded,
                                                               None)
    assert pruneplan.read_plans(backend, mac).doomed() == {bytes.fromhex("ab" * 32)}
    pruneplan.write_checked(backend, plan, ["ab" * 32], [], mac)
    checked = pruneplan.read_plans(backend, mac)
    assert checked.plans[0].rescued == ["ab" * 32] and checked.doomed() == frozenset()
    # a writer without the key: nothing it writes dooms a pack
    forged = pruneplan.read_plans(backend, keyed(b"o" * 32))
    assert forged.plans == [] and "not authentic" in forged.problems[0]
    raw = backend.read_bytes(plan.key)
    backend.write_bytes(plan.key, raw.replace(b"ab" * 32, b"ef" * 32))
    altered = pruneplan.read_plans(backend, mac)
    assert altered.plans == [] and altered.doomed() == frozenset()
    backend.write_bytes(plan.key, b"no mac here")
    backend.write_bytes("prune/junk", b"")
    bad = pruneplan.read_plans(backend, mac)
    assert bad.plans == [] and len(bad.problems) == 2


def test_a_plan_with_names_that_are_not_pack_ids_is_refused(tmp_path):
    backend = LocalBackend(tmp_path)
    mac = keyed(b"")
    plan = pruneplan.Plan(pruneplan.new_name(datetime.now(timezone.utc)), "locks/x.json",
                          "t", ["../../config"], [])
    pruneplan.write_plan(backend, plan, mac)
    found = pruneplan.read_plans(backend, mac)
    assert found.plans == [] and "doomed" in found.problems[0]


# -- waiting for the locks that existed (a fake clock)


def test_the_wait_ends_when_the_locks_that_existed_are_released(tmp_path):
    backend = LocalBackend(tmp_path)
    mine = locking.acquire(backend, locking.PRUNE, 0)
    running = locking.acquire(backend, locking.SHARED, 0)
    later = []

    def meanwhile(n):
        if n == 3:      # a new backup starts (it has read the plan), the old one ends
            later.append(locking.acquire(backend, locking.SHARED, 0))
            running.release()

    clock = Clock(meanwhile)
    held = pruneplan.wait_for_locks(backend, mine.info.key,
                                    pruneplan.Waiting(60, clock.sleep, clock.monotonic))
    assert held == [] and len(clock.sleeps) == 3       # not waiting for the new one
    assert clock.sleeps == [0.5, 1.0, 2.0]
    later[0].release()
    mine.release()


def test_the_wait_gives_up_after_its_time_and_names_the_locks_still_held(tmp_path):
    backend = LocalBackend(tmp_path)
    running = locking.acquire(backend, locking.SHARED, 0, "backup")
    clock = Clock()
    held = pruneplan.wait_for_locks(backend, "", pruneplan.Waiting(30, clock.sleep,
                                                                   clock.monotonic))
    assert [h.key for h in held] == [running.info.key] and clock.now == 30
    assert max(clock.sleeps) == 5.0
    running.release()


def test_a_stale_lock_is_broken_not_waited_for(tmp_path):
    backend = LocalBackend(tmp_path)
    stale = plant(backend, "shared", pid=dead_pid())
    broken = []
    held = pruneplan.wait_for_locks(backend, "", pruneplan.Waiting(
        60, never_sleeps().sleep, lambda: 0.0, lambda lock, why: broken.append(lock.key)))
    assert held == [] and broken == [stale.key] and list(backend.list("locks/")) == []


# -- the protocol


def test_a_backup_that_counted_on_a_doomed_pack_has_it_rescued(root, two):
    old, new = two
    doomed = pack_files(root)
    with ExitStack() as stack:
        late = writer(root, stack)      # loaded the index before the plan
        made = []

        def meanwhile(n):   # while prune waits: the backup stores OLD again, and ends
            if n == 1:
                made.append(backup(late, OLD, volume="other"))
                stack.close()

        result = pruned(root, Clock(meanwhile))
    (snapshot,) = made
    sweep = result.chunks
    assert snapshot.new_chunks == 0            # every blob found in packs prune had doomed
    assert sweep.problems == [] and sweep.rescued >= 1
    assert reads_back(root, snapshot, OLD) and reads_back(root, new, NEW)
    assert plan_files(root) == []
    assert pack_files(root) >= doomed         # OLD is used again: every pack rescued


def test_a_backup_that_starts_after_the_plan_stores_the_doomed_blobs_again(root, two):
    """The wait times out (a backup still runs): the plan stays, exit 0; a backup that
    starts then ignores the doomed packs; the next prune carries the plan out."""
    old, new = two
    with ExitStack() as stack:
        writer(root, stack)              # a backup that runs past the wait
        result = pruned(root, Clock(), wait=30)
        sweep = result.chunks
        result.raise_for_failures()      # not a failure
        assert sweep.waiting_for and any("next prune" in w for w in result.warnings)
        assert len(plan_files(root)) == 1 and sweep.packs_repacked + len(
            pruneplan.read_plans(LocalBackend(root), lambda label, data: b"").plans[0].doomed
        ) >= 1
        assert sweep.packs_removed == sweep.removed_bytes == result.freed_bytes == 0
        with ExitStack() as later:
            after = backup(writer(root, later), OLD, volume="late")
        assert after.new_chunks > 0.9 * old.new_chunks  # none taken from a doomed pack
    again = pruned(root, never_sleeps())
    assert again.chunks.adopted == 1 and again.chunks.problems == []
    assert plan_files(root) == [] and again.chunks.packs_removed >= 1
    assert reads_back(root, after, OLD) and reads_back(root, new, NEW)
    assert pruned(root, never_sleeps()).chunks.packs_removed == 0


def test_a_prune_killed_after_its_plan_is_finished_by_the_next_with_a_rescue(
        root, two, monkeypatch):
    old, new = two
    stop_at(monkeypatch, "prune-planned")
    with ExitStack() as stack:
        late = writer(root, stack)
        with pytest.raises(KeyboardInterrupt):
            pruned(root, Clock())
        assert len(plan_files(root)) == 1
        snapshot = backup(late, OLD, volume="other")     # counted on doomed packs
    monkeypatch.undo()
    result = pruned(root, never_sleeps())
    assert result.chunks.adopted == 1 and result.chunks.rescued >= 1
    assert result.chunks.problems == [] and plan_files(root) == []
    assert reads_back(root, snapshot, OLD) and reads_back(root, new, NEW)


def test_a_prune_killed_after_its_check_deletes_without_waiting_again(root, two, monkeypatch):
    old, new = two
    before = pack_files(root)
    stop_at(monkeypatch, "prune-checked")
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    assert {p.split(".")[1] for p in plan_files(root)} == {"checked", "json"}
    assert pack_files(root) >= before           # nothing deleted yet
    monkeypatch.undo()
    with ExitStack() as stack:
        writer(root, stack)                     # a backup runs: the plan is checked already
        result = pruned(root, never_sleeps())
    assert result.chunks.adopted == 1 and result.chunks.packs_removed >= 1
    assert plan_files(root) == [] and not pack_files(root) >= before
    assert reads_back(root, new, NEW)


def test_a_prune_killed_while_deleting_is_finished_by_the_next(root, two, monkeypatch):
    old, new = two
    stop_at(monkeypatch, "prune-deleting")      # the old index objects gone, packs not
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    assert reads_back(root, new, NEW)
    monkeypatch.undo()
    result = pruned(root, never_sleeps())
    assert result.chunks.adopted == 1 and result.chunks.packs_removed >= 1
    assert plan_files(root) == [] and reads_back(root, new, NEW)
    assert pruned(root, never_sleeps()).chunks.packs_removed == 0


def test_a_reader_tries_a_copy_outside_a_doomed_pack_first(root, two):
    old, new = two
    repo = Repository.open(str(root))
    blob = next(repo.blobs.index().entries())[0]
    where = repo.blobs.index().all_locations(blob)[0].pack
    pruneplan.write_plan(repo.backend, pruneplan.Plan(
        pruneplan.new_name(datetime.now(timezone.utc)), "", "t", [where.hex], []),
        repo.blobs.cipher.mac)
    repo.blobs.forget()
    index = repo.blobs.index()
    assert not index.has(blob) and index.locations(blob)[0].pack == where   # only copy
    assert reads_back(root, new, NEW) and reads_back(root, old, OLD)        # readers go on


# -- a backup whose lock was broken


def test_a_backup_whose_lock_was_broken_removes_its_manifest_and_fails(root, two,
                                                                      monkeypatch):
    def broken(step):
        if step == "before-manifest":
            for held in (root / "locks").iterdir():
                held.unlink()           # broken as stale by a prune, the backup unaware
    monkeypatch.setattr(repository_module, "pause", broken)
    with ExitStack() as stack:
        repo = writer(root, stack)
        with pytest.raises(LockLost):
            backup(repo, OLD, volume="other")
    assert not (root / "snapshots" / "other").exists() or not list(
        (root / "snapshots" / "other").glob("*.json"))


def test_a_backup_whose_lock_is_gone_writes_no_index_object(root, two):
    index_before = set((root / "index").iterdir())
    with ExitStack() as stack:
        repo = writer(root, stack)
        for held in (root / "locks").iterdir():
            held.unlink()
        with pytest.raises(LockLost):
            backup(repo, volume_tar(seed=9, size=1 << 18), volume="other")
    assert set((root / "index").iterdir()) == index_before


def test_a_lock_broken_as_stale_is_not_written_back_by_its_refresher(tmp_path, monkeypatch):
    monkeypatch.setattr(locking, "REFRESH_EVERY", timedelta(milliseconds=10))
    backend = LocalBackend(tmp_path)
    held = locking.acquire(backend, locking.SHARED, 0)
    backend.delete(held.info.key)
    held._thread.join(timeout=30)
    assert not held._thread.is_alive() and held.lost
    assert list(backend.list("locks/")) == []
    with pytest.raises(LockLost):
        held.confirm()


def test_a_prune_whose_lock_was_broken_deletes_nothing(root, two, monkeypatch):
    before = pack_files(root)

    def broken(step):
        if step == "prune-checked":
            for held in (root / "locks").iterdir():
                held.unlink()           # broken as stale while this prune was suspended
    monkeypatch.setattr(packsweep, "pause", broken)
    with pytest.raises(LockLost):
        pruned(root, Clock())
    assert pack_files(root) >= before and len(plan_files(root)) == 2   # plan and marker
    monkeypatch.undo()
    assert pruned(root, never_sleeps()).chunks.adopted == 1 and plan_files(root) == []


# -- leftovers while backups run


def test_what_a_running_backup_left_so_far_is_not_a_leftover(root, two):
    """A list without a manifest and a pack no index names, both older than
    --leftover-age but younger than a backup that still runs: kept until it ends."""
    backend = LocalBackend(root)
    started = datetime.now(timezone.utc) - timedelta(days=2)
    running = locking.LockInfo(
        "locks/running.json", locking.SHARED, locking.socket.gethostname(), locking.os.getpid(),
        locking._pid_namespace(), utc_iso(started), utc_iso(datetime.now(timezone.utc)), "backup")
    backend.write_bytes(running.key, running.to_json())
    repo = Repository.open(str(root))
    repo.blobs.save(b"x" * 5000, 3)
    repo.blobs.flush_packs()            # its pack, not indexed yet (no flush)
    (pack,) = pack_files(root) - indexed(root)
    day_ago = (started + timedelta(days=1)).timestamp()
    for path in (root / "packs").rglob(pack):
        os.utime(path, (day_ago, day_ago))
    lists = root / "snapshots" / "pgdata"
    orphan = lists / f"{(started + timedelta(days=1)).strftime('%Y%m%dT%H%M%SZ')}-dead.chunks"
    orphan.write_text("")
    result = pruned(root, Clock(), wait=0, leftover_age=3600)
    assert orphan.exists() and pack in pack_files(root)
    assert {o.key: o.reason for o in result.leftovers}[
        f"snapshots/pgdata/{orphan.name}"] == "too young"
    backend.delete(running.key)         # the backup is over
    again = pruned(root, never_sleeps(), leftover_age=3600)
    assert not orphan.exists() and pack not in pack_files(root)
    assert again.chunks.unindexed_removed == 1


def indexed(root) -> set[str]:
    repo = Repository.open(str(root))
    return {info.hex for info in repo.blobs.index().packs}


def test_a_blob_with_a_copy_outside_the_doomed_packs_counts_as_stored():
    from volbackup.repo.packindex import BlobIndex, PackInfo, decode, encode
    plain = lambda label, data: b""     # noqa: E731
    doomed, kept = PackInfo(b"d" * 32, 1 << 20, 0), PackInfo(b"k" * 32, 1 << 20, 0)
    both, alone = b"b" * 32, b"a" * 32
    _, raw = encode([(doomed, [(both, 0, 100, 200), (alone, 100, 100, 200)]),
                     (kept, [(both, 0, 100, 200)])], plain)
    index = BlobIndex([decode(raw, plain, "test")])
    index.doomed = frozenset({doomed.id})
    assert index.has(both) and not index.has(alone) and not index.has(b"n" * 32)
    assert [loc.pack for loc in index.locations(both)] == [kept, doomed]
    index.add(PackInfo(b"n" * 32, 1 << 20, 0), [(alone, 0, 100, 200)])
    assert index.has(alone)             # stored again by this run


def test_a_checked_save_does_not_count_on_a_sound_copy_in_a_doomed_pack(root):
    """save(verify_existing): the copy a writer may count on is damaged, the only sound
    one is in a doomed pack: the blob is stored again (the doomed pack may go before
    this run's snapshot is written)."""
    repo = chunked_repo(root, seed=1, layout=PACKED)
    data = os.urandom(5000)

    def saved(*besides: bytes):
        """`besides` first: another pack than the first run's (a pack's name is its bytes)."""
        with repo.lock(locking.SHARED, 0, "backup"):
            for other in besides:
                repo.blobs.save(other, 3)
            done = repo.blobs.save(data, 3, verify_existing=True)
            repo.blobs.flush()
            return done

    first = saved()
    (damaged,) = _locations(root, first.id)
    path = root / "packs" / damaged.pack.hex[:2] / damaged.pack.hex
    body = bytearray(path.read_bytes())
    body[damaged.offset + 10] ^= 0xFF
    path.write_bytes(bytes(body))
    again = saved(b"a" * 100)
    assert again.replaced                       # a second copy, sound, in a pack of its own
    (sound,) = [loc for loc in _locations(root, first.id) if loc.pack != damaged.pack]
    pruneplan.write_plan(repo.backend, pruneplan.Plan(
        pruneplan.new_name(datetime.now(timezone.utc)), "", "t", [sound.pack.hex], []),
        repo.blobs.cipher.mac)
    third = saved(b"b" * 100)
    assert third.written and third.replaced     # not the doomed copy: stored a third time
    assert len(_locations(root, first.id)) == 3


def _locations(root, blob_id: str):
    repo = Repository.open(str(root))
    return repo.blobs.index().all_locations(bytes.fromhex(blob_id))


def test_a_snapshot_read_while_a_running_prune_removes_it_names_that_prune(root, two):
    """A restore (which takes no lock) of a snapshot a prune removes meanwhile: the
    prune that is running is named by its prune lock, as an exclusive one is."""
    from volbackup.errors import RemovedWhileRead

    old, new = two
    repo = Repository.open(str(root))
    manifest = repo.resolve(old.snapshot)   # listed, as restore does, then read
    lock = locking.acquire(repo.backend, locking.PRUNE, 0, "prune")
    try:
        repo.remove_manifest(old.snapshot)
        for pack in (root / "packs").rglob("*/*"):
            pack.unlink()                   # what the prune deletes, by hand
        with pytest.raises(RemovedWhileRead) as raised:
            for _ in repo.unpacker(manifest).chunks():
                pass
    finally:
        lock.release()
    assert "by a prune that is running (prune lock of pid" in str(raised.value)


def test_a_reader_whose_index_predates_a_repack_loads_it_again(root):
    """A restore holds no lock: a prune may repack the packs it is about to read. A pack
    found gone makes the store load the index again (once per pack) before it reports a
    blob missing; a pack that stays missing is still reported."""
    from volbackup.errors import ChunkMissing

    repo = chunked_repo(root, seed=1, layout=PACKED)
    shared = volume_tar(seed=3, size=1 << 20)
    backup(repo, volume_tar(seed=4, size=1 << 19), when=AGO)
    new = backup(repo, shared, when=AGO + timedelta(days=1))
    reader = Repository.open(str(root))
    manifest = reader.reveal(reader.load(new.snapshot))
    before = {loc.pack.hex for _, loc in reader.blobs.index().entries()}   # loaded now
    result = pruned(root, never_sleeps())
    assert result.chunks.packs_repacked >= 1 and not before <= pack_files(root)
    assert restored(reader, manifest) == shared
    for pack in (root / "packs").rglob("*/*"):
        pack.unlink()
    with pytest.raises(ChunkMissing, match="its pack .* is gone"):
        restored(reader, manifest)


def test_a_backup_after_the_plan_never_remakes_a_doomed_pack_under_its_name(
        root, monkeypatch):
    """A backup that starts after the plan stores the doomed blobs again; in a plain
    repository the same blobs in the same order made the same pack bytes, so the same
    pack name, which the prune then deleted under the backup. Each pack has a nonce now."""
    import tarfile

    from tests.unit.tars import end_of_members, make_tar
    from volbackup.stream.archive import END_MARKER

    repo = chunked_repo(root, seed=1, layout=PACKED)
    first = backup(repo, OLD, when=AGO)
    top = tarfile.TarInfo("./")
    top.type, top.mode = tarfile.DIRTYPE, 0o700
    unlike = make_tar([(top, b""), (tarfile.TarInfo("./other"), os.urandom(300 << 10))])
    backup(repo, unlike[:end_of_members(unlike) + END_MARKER], when=AGO + timedelta(days=1))
    stop_at(monkeypatch, "prune-checked")       # plan and marker written, nothing deleted
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    doomed = set(pruneplan.read_plans(LocalBackend(root), lambda label, data: b"")
                 .plans[0].doomed)
    monkeypatch.undo()
    before = set((root / "index").iterdir())
    with ExitStack() as stack:
        again = backup(writer(root, stack), OLD, volume="again")
    (made,) = set((root / "index").iterdir()) - before      # the backup's index object
    store = Repository.open(str(root)).blobs
    store.index()
    written = {p.hex() for p in store.loaded.packs_of[f"index/{made.name}"]}
    assert again.new_chunks >= first.new_chunks - 1 and len(doomed) >= 2   # as new
    assert not doomed & written                 # none has a doomed pack's name
    result = pruned(root, never_sleeps())
    assert result.chunks.adopted == 1 and result.chunks.packs_removed >= 2
    assert reads_back(root, again, OLD)


def test_packs_of_the_same_records_have_other_names():
    from volbackup.repo import packs
    from volbackup.repo.crypto import PlainChunks

    def made() -> tuple[str, bytes]:
        builder = packs.PackBuilder(packs.DATA_PACK, PlainChunks().mac)
        builder.add(b"i" * 32, "data", b"stored", 10, packs.NO_SLOT)
        builder.add_nonce()
        return builder.finish()

    (one, body), (two, _) = made(), made()
    assert one != two
    size = len(body)
    tail = body[-packs.TAIL_BYTES:]
    length, flags = packs.parse_tail(tail, size, "pack")
    trailer = packs.parse_trailer(body[size - packs.TAIL_BYTES - length:size - packs.TAIL_BYTES],
                                  size, flags, PlainChunks().mac, "pack")
    assert len(trailer.slots) == 1 and trailer.records[0].slot == packs.NO_SLOT  # readable


def test_repair_index_after_a_killed_prune_drops_its_plan(root, two, monkeypatch):
    """A plan names index objects and packs of the index repair-index replaces: its new
    index objects name the doomed packs too, and a prune that carried the plan out
    would leave them naming deleted packs. So repair-index drops the plans (under its
    exclusive lock no backup counts on them); the next prune judges those packs again."""
    from volbackup.ops.repair import RepairIndexOptions, repair_index

    old, new = two
    stop_at(monkeypatch, "prune-planned")
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    monkeypatch.undo()
    assert len(plan_files(root)) == 1
    repaired = repair_index(Repository.open(str(root)), RepairIndexOptions())
    assert repaired.plans_dropped == 1 and plan_files(root) == []
    result = pruned(root, never_sleeps())
    assert result.chunks.problems == [] and result.chunks.adopted == 0
    assert result.chunks.packs_removed >= 1
    assert reads_back(root, new, NEW)
    again = pruned(root, never_sleeps())
    assert again.chunks.problems == [] and again.chunks.packs_removed == 0


def test_repair_index_says_it_dropped_a_plan(root, two, monkeypatch):
    from tests.conftest import run_cli

    stop_at(monkeypatch, "prune-planned")
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    monkeypatch.undo()
    result = run_cli("repair-index", "-r", str(root))
    assert result.code == 0, result.stderr
    assert "1 plan(s) of killed prunes dropped" in result.stdout and plan_files(root) == []


def test_a_copy_into_the_repository_after_the_plan_sends_the_doomed_chunks_again(
        root, two, tmp_path, monkeypatch):
    """copy's paths (save_stored of a list snapshot's chunks; the checked saves of the
    stream a tree snapshot goes through): a blob the target holds only in doomed packs
    counts as missing, so it is stored again (not "replaced": held with wrong bytes); the
    snapshot copied back reads after the plan is carried out."""
    from volbackup.ops import copy as copy_ops

    old, new = two
    side = chunked_repo(tmp_path / "side", seed=1)
    away = copy_ops.copy(Repository.open(str(root)), side, copy_ops.Choice([old.snapshot]))
    assert [o.status for o in away.snapshots] == ["copied"]
    stop_at(monkeypatch, "prune-checked")       # OLD removed, its packs doomed
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    monkeypatch.undo()
    (back,) = copy_ops.copy(side, Repository.open(str(root)),
                            copy_ops.Choice([old.snapshot])).snapshots
    assert back.status == "copied" and back.chunks_sent >= old.new_chunks - 5
    assert back.chunks_replaced == 0             # missing, not held with wrong bytes
    clock = never_sleeps()
    result = prune(Repository.open(str(root)),
                   PruneOptions(Rules(last=2), leftover_age=0, wait_for_backups=60),
                   sleep=clock.sleep, monotonic=clock.monotonic)
    assert result.chunks.adopted == 1 and result.chunks.packs_removed >= 1
    assert reads_back(root, old, OLD) and reads_back(root, new, NEW)


def test_a_reload_keeps_the_packs_this_run_wrote_and_not_yet_indexed(root, two):
    from volbackup.errors import ChunkMissing

    old, new = two
    repo = Repository.open(str(root))
    with repo.lock(locking.SHARED, 0, "backup"):
        store = repo.blobs
        blob, loc = next(store.index().entries())
        mine = store.save(b"written by this run, not indexed yet" * 100, 3)
        store.flush_packs()                     # its pack is written; no index object yet
        (root / "packs" / loc.pack.hex[:2] / loc.pack.hex).unlink()
        with pytest.raises(ChunkMissing):
            store.load(blob.hex(), loc.plain)   # gone: the index is loaded again, once
        assert store.index().has(bytes.fromhex(mine.id))
        assert store.load(mine.id, mine.length)[0].startswith(b"written by this run")
        store.forget()


def test_a_reader_asked_for_a_blob_indexed_after_its_load_loads_the_index_again(root, two):
    """prune walks the trees of manifests it lists after its index was loaded (a backup
    beside it indexes, then writes its manifest): a blob the index lacks loads it again,
    once; one nobody stored is still missing."""
    from volbackup.errors import ChunkMissing

    reader = Repository.open(str(root))
    reader.blobs.index()                         # loaded now
    writer_repo = Repository.open(str(root))
    with writer_repo.lock(locking.SHARED, 0, "backup"):
        later = writer_repo.blobs.save(b"indexed after the reader loaded" * 50, 3)
        writer_repo.blobs.flush()
    assert reader.blobs.load(later.id, later.length)[0].startswith(b"indexed after")
    with pytest.raises(ChunkMissing, match="no index entry"):
        reader.blobs.load("ab" * 32, 10)


# -- verify --packs: the plans it finds


def test_verify_packs_reports_a_pending_plan_and_a_later_prune_finishes_it(
        root, two, monkeypatch):
    from tests.conftest import run_cli
    from volbackup.ops.snapshots import verify_packs

    stop_at(monkeypatch, "prune-planned")
    with pytest.raises(KeyboardInterrupt):
        pruned(root, Clock())
    monkeypatch.undo()
    (name,) = {p.split(".")[0] for p in plan_files(root)}
    found = verify_packs(Repository.open(str(root)))
    assert found.prune_plans == [name] and found.doomed_packs >= 1
    assert found.problems == []                 # pending is not damage
    cli = run_cli("verify", "--packs", "-r", str(root))
    assert cli.code == 0, cli.stderr
    assert f"1 prune plans pending ({found.doomed_packs} packs to delete: a later prune " \
        f"finishes them)" in cli.stdout
    assert pruned(root, never_sleeps()).chunks.adopted == 1
    done = verify_packs(Repository.open(str(root)))
    assert done.prune_plans == [] and done.doomed_packs == 0 and done.problems == []


def test_verify_packs_reports_a_plan_whose_mac_fails(tmp_path):
    import json

    from tests.conftest import run_cli
    from tests.unit.test_encryption import age_identity
    from volbackup.ops.snapshots import verify_packs
    from volbackup.repo.config import RepoConfig
    from volbackup.repo.sealing import Secrets

    root, key_file = tmp_path / "repo", tmp_path / "repo.key"
    root.mkdir()
    Repository.init(str(root), config=RepoConfig.new(avg_size=4096, layout=PACKED),
                    encrypt_to=[age_identity(tmp_path / "id")], key_file=str(key_file))
    repo = Repository.open(str(root), secrets=Secrets(key_file=str(key_file)))
    backup(repo, OLD)
    plan = pruneplan.Plan(pruneplan.new_name(datetime.now(timezone.utc)), "locks/x.json",
                          "2026-12-07T00:00:00Z", ["ab" * 32], [])
    pruneplan.write_plan(repo.backend, plan, keyed(b"not the key" * 3))   # no key: forged
    found = verify_packs(Repository.open(str(root), secrets=Secrets(key_file=str(key_file))))
    assert found.prune_plans == [] and found.doomed_packs == 0
    assert len(found.problems) == 1 and plan.name in found.problems[0]
    assert "not authentic" in found.problems[0]
    cli = run_cli("verify", "--packs", "-r", str(root), "--key-file", str(key_file), "--json")
    assert cli.code == 6 and "Traceback" not in cli.stderr
    packs = json.loads(cli.stdout)["packs"]
    assert packs["prune_plans"] == [] and "not authentic" in packs["problems"][0]

"""`prune` on a directory repository of small fake snapshots (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.unit.manifests import make_manifest
from volbackup.cli import main
from volbackup.errors import IntegrityError, RepositoryLocked, VolbackupError
from volbackup.ops.prune import PruneOptions, prune
from volbackup.repo import locking
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def add(repo: Repository, volume: str, when: datetime, host: str = "host1", suffix="0001") -> str:
    snapshot = f"{volume}@{when.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"
    repo.backend.write_bytes(f"snapshots/{volume}/{Repository.archive_name(snapshot)}", b"z" * 300)
    repo.commit(make_manifest(snapshot, when.isoformat(timespec="milliseconds")
                              .replace("+00:00", "Z"), host=host))
    return snapshot


@pytest.fixture
def repo(repo_dir):
    return Repository.open(str(repo_dir), writable=True)


def daily(repo, volume="pgdata", days=5, end: datetime = NOW, **kw) -> list[str]:
    return [add(repo, volume, end - timedelta(days=d), **kw) for d in range(days)][::-1]


def keys(repo_dir) -> list[str]:
    return sorted(p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file())


def test_removes_manifest_and_archive_of_what_no_rule_keeps(repo, repo_dir):
    ids = daily(repo)
    result = prune(repo, PruneOptions(Rules(last=2)), now=NOW)
    assert [(d.snapshot, d.status) for d in result.snapshots] == [
        (ids[4], "kept"), (ids[3], "kept"), (ids[2], "removed"), (ids[1], "removed"),
        (ids[0], "removed")]
    assert result.snapshots[0].reasons == ["last 1"]
    assert [m.snapshot for m in repo.snapshots().snapshots] == ids[3:]
    assert len(keys(repo_dir)) == 4 and result.freed_bytes == 900


def test_dry_run_deletes_nothing_and_takes_no_lock(repo, repo_dir):
    daily(repo)
    held = locking.acquire(repo.backend, locking.EXCLUSIVE, 0)  # by "another run"
    before = keys(repo_dir)
    result = prune(repo, PruneOptions(Rules(last=1), dry_run=True), now=NOW)
    assert [d.status for d in result.snapshots].count("would remove") == 4
    assert keys(repo_dir) == before
    held.release()


def test_waits_for_the_lock_then_fails(repo):
    daily(repo, days=2)
    held = locking.acquire(repo.backend, locking.SHARED, 0)  # a backup is running
    with pytest.raises(RepositoryLocked):
        prune(repo, PruneOptions(Rules(last=1), lock_wait=0.3), now=NOW)
    assert len(repo.snapshots().snapshots) == 2
    held.release()


def test_filters_and_groups(repo):
    a = daily(repo, "a", 3)
    b = daily(repo, "b", 3)
    other = add(repo, "a", NOW + timedelta(minutes=1), host="host2")  # within the tolerance
    result = prune(repo, PruneOptions(Rules(last=1), volumes=["a"]), now=NOW)
    kept = sorted(d.snapshot for d in result.snapshots if d.keep)
    assert kept == sorted([a[-1], other])  # per host: host1's newest survives host2's
    assert len(repo.snapshots("b").snapshots) == 3
    result = prune(repo, PruneOptions(Rules(last=1), host="host2"), now=NOW)
    assert [d.snapshot for d in result.snapshots] == [other]
    result = prune(repo, PruneOptions(Rules(last=1), by_host=False, dry_run=True), now=NOW)
    assert sorted(d.snapshot for d in result.snapshots if d.keep) == sorted([other, b[-1]])


def test_newest_survives_within_unless_allowed(repo):
    ids = daily(repo, days=2)
    old_now = NOW + timedelta(days=60)
    result = prune(repo, PruneOptions(Rules(within=timedelta(days=1))), now=old_now)
    assert [d.reasons for d in result.snapshots if d.keep] == [["newest"]]
    assert [m.snapshot for m in repo.snapshots().snapshots] == [ids[-1]]
    prune(repo, PruneOptions(Rules(within=timedelta(days=1)), allow_remove_newest=True),
          now=old_now)
    assert repo.snapshots().snapshots == []


def test_volume_with_an_unreadable_manifest_is_left_alone(repo, repo_dir):
    daily(repo, "a", 3)
    daily(repo, "b", 3)
    (repo_dir / "snapshots" / "a" / "20000101T000000Z-dead.json").write_text("{broken")
    result = prune(repo, PruneOptions(Rules(last=1)), now=NOW)
    assert len(repo.snapshots("a").snapshots) == 3 and len(repo.snapshots("b").snapshots) == 1
    assert result.problems and "volume a left alone" in result.problems[0]
    with pytest.raises(Exception, match="left alone"):
        result.raise_for_failures()


def test_unreferenced_archives_are_removed_once_old(repo, repo_dir):
    daily(repo, days=1)
    old = "snapshots/pgdata/20261120T000000Z-beef.tar.zst"
    young = f"snapshots/pgdata/{(NOW - timedelta(minutes=5)).strftime('%Y%m%dT%H%M%SZ')}-cafe.tar.zst"
    foreign = "snapshots/pgdata/notes.tar.zst"
    for key in (old, young, foreign):
        repo.backend.write_bytes(key, b"x" * 10)
    result = prune(repo, PruneOptions(Rules(last=1)), now=NOW)
    assert {o.key: (o.status, o.reason) for o in result.leftovers} == {
        old: ("removed", "no manifest, started over 6h ago"), young: ("kept", "too young")}
    assert old not in keys(repo_dir) and young in keys(repo_dir) and foreign in keys(repo_dir)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_writes(repo, repo_dir):
    daily(repo, days=1)
    folder = repo_dir / "snapshots" / "pgdata"
    quiet = time.time() - 3600
    dead_quiet = folder / f".x.tar.zst.tmp-{dead_pid()}-ab12"
    dead_busy = folder / f".y.tar.zst.tmp-{dead_pid()}-ab12"
    live_quiet = folder / f".z.tar.zst.tmp-{os.getpid()}-ab12"
    for path in (dead_quiet, dead_busy, live_quiet):
        path.write_bytes(b"t" * 7)
    os.utime(dead_quiet, (quiet, quiet))
    os.utime(live_quiet, (quiet, quiet))
    result = prune(repo, PruneOptions(Rules(last=1), leftover_age=6 * 3600))
    status = {o.key.rsplit("/", 1)[1]: (o.status, o.reason) for o in result.leftovers}
    assert status[dead_busy.name] == status[live_quiet.name] == ("kept", "too young")
    assert status[dead_quiet.name][0] == "removed" and "is not running" in status[dead_quiet.name][1]
    assert set(status) == {dead_quiet.name, dead_busy.name, live_quiet.name}
    assert not dead_quiet.exists() and dead_busy.exists() and live_quiet.exists()
    prune(repo, PruneOptions(Rules(last=1), leftover_age=1800))
    assert not live_quiet.exists()  # quiet for longer than the leftover age


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refuses_without_a_keep_rule(capsys, repo_dir):
    code, _, err = run(capsys, "prune", "-r", str(repo_dir))
    assert code == 2 and "at least one --keep-* rule" in err


def test_cli_json_names_every_snapshot_and_why(capsys, repo, repo_dir):
    # The CLI prunes against the real clock: the snapshots are dated relative to it.
    ids = daily(repo, days=3, end=datetime.now(timezone.utc) - timedelta(minutes=1))
    code, out, _ = run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1",
                       "--keep-within", "36h", "--dry-run", "--json")
    data = json.loads(out)
    assert code == 0 and data["command"] == "prune" and data["dry_run"] is True
    assert data["rules"] == "last 1, within 1d12h" or data["rules"].startswith("last 1, within")
    by_id = {s["snapshot"]: s for s in data["snapshots"]}
    assert set(by_id) == set(ids)
    assert by_id[ids[0]]["keep"] is False and by_id[ids[0]]["status"] == "would remove"
    assert "within" in ", ".join(by_id[ids[1]]["reasons"])
    assert set(by_id[ids[2]]) >= {"snapshot", "volume", "host", "created", "keep", "reasons",
                                  "status", "stored_bytes", "message", "reason"}
    assert by_id[ids[0]]["reason"] == "no rule keeps it"
    assert by_id[ids[2]]["reason"] == ", ".join(by_id[ids[2]]["reasons"])


def test_cli_unlock(capsys, repo, repo_dir):
    locking.acquire(repo.backend, locking.EXCLUSIVE, 0)
    code, out, err = run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1",
                         "--lock-wait", "0")
    assert code == 11 and "is locked: exclusive lock of pid" in err
    code, out, _ = run(capsys, "unlock", "-r", str(repo_dir))
    assert code == 0 and "kept (its run may still be going" in out
    code, out, _ = run(capsys, "unlock", "-r", str(repo_dir), "--all", "--json")
    assert code == 0 and json.loads(out)["locks"][0]["removed"] is True
    assert run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1")[0] == 0


@pytest.mark.parametrize("field,value", [("created", "29/11/2026"), ("host", 7),
                                         ("created", "2026-11-29T03:15:00")])
def test_one_bad_manifest_is_a_problem_of_its_volume_only(repo, repo_dir, field, value):
    """A non-ISO `created` crashed prune for the whole repository."""
    daily(repo, "a", 3)
    daily(repo, "b", 3)
    bad = json.loads(make_manifest("a@20261201T000000Z-bad0").to_json())
    bad[field] = value
    (repo_dir / "snapshots" / "a" / "20261201T000000Z-bad0.json").write_text(json.dumps(bad))
    result = prune(repo, PruneOptions(Rules(last=1)), now=NOW)
    assert len(repo.snapshots("a").snapshots) == 3 and len(repo.snapshots("b").snapshots) == 1
    assert len(result.problems) == 1 and "volume a left alone" in result.problems[0]
    assert f"invalid {field}" in result.problems[0]


def test_a_future_dated_snapshot_is_kept_reported_and_not_counted(repo):
    ids = daily(repo, days=2)
    future = add(repo, "pgdata", NOW + timedelta(days=400), suffix="f00d")
    result = prune(repo, PruneOptions(Rules(last=1)), now=NOW)
    assert [(d.snapshot, d.status, d.reasons) for d in result.snapshots] == [
        (future, "kept", ["dated in the future"]), (ids[1], "kept", ["last 1"]),
        (ids[0], "removed", [])]
    assert result.future_dated == [future]
    warning, = result.warnings
    assert future in warning and "not counted by the keep rules" in warning
    result.raise_for_failures()  # a warning, not a failure


def test_protected_snapshots_are_never_removed(repo):
    ids = daily(repo, days=3)
    result = prune(repo, PruneOptions(Rules(last=1), protected={ids[0]}), now=NOW)
    assert {d.snapshot: d.status for d in result.snapshots} == {
        ids[2]: "kept", ids[1]: "removed", ids[0]: "kept"}


def test_cli_reports_a_future_dated_snapshot(capsys, repo, repo_dir):
    now = datetime.now(timezone.utc)
    present = add(repo, "pgdata", now - timedelta(minutes=1))
    future = add(repo, "pgdata", now + timedelta(days=30), suffix="f00d")
    code, out, err = run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["future_dated"] == [future]
    assert {s["snapshot"]: s["status"] for s in data["snapshots"]} == {
        future: "kept", present: "kept"}
    assert f"warning: snapshot {future} is dated" in err


def test_an_error_from_outside_volbackup_fails_one_removal_and_prune_goes_on(repo):
    """An OSError no layer translated (EIO, a bug) while deleting one manifest: that snapshot
    is failed, the others are still removed, and prune exits 1 naming it."""
    ids = daily(repo, days=4)
    delete = repo.backend.delete

    def flaky(key):
        if key == repo.manifest_key(ids[2]):  # the first one to remove (newest first)
            raise OSError(5, "Input/output error")
        delete(key)

    repo.backend.delete = flaky
    result = prune(repo, PruneOptions(Rules(last=1)), now=NOW)
    status = {d.snapshot: (d.status, d.message) for d in result.snapshots}
    assert status[ids[2]] == ("failed", f"{ids[2]}: unexpected OSError: [Errno 5] "
                                        "Input/output error")
    assert status[ids[1]][0] == status[ids[0]][0] == "removed"
    with pytest.raises(VolbackupError, match="Input/output error"):
        result.raise_for_failures()


def test_cli_text_and_json_of_leftovers(capsys, repo, repo_dir):
    """The status is one of four machine values; why a leftover is kept is its `reason`
    (it was the status "kept (too young)"). The text lines read as before."""
    add(repo, "pgdata", datetime.now(timezone.utc) - timedelta(minutes=1))
    young = f"snapshots/pgdata/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-cafe.tar.zst"
    old = "snapshots/pgdata/20261120T000000Z-beef.tar.zst"
    for key in (young, old):
        repo.backend.write_bytes(key, b"x" * 10)
    code, out, _ = run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1", "--dry-run")
    assert code == 0
    assert f"{young}: kept (too young) (archive left by an interrupted run, 10 B)" in out
    assert f"{old}: would remove (archive left by an interrupted run, 10 B)" in out
    code, out, _ = run(capsys, "prune", "-r", str(repo_dir), "--keep-last", "1", "--json")
    left = {o["key"]: o for o in json.loads(out)["leftovers"]}
    assert (left[young]["status"], left[young]["reason"]) == ("kept", "too young")
    assert (left[old]["status"], left[old]["kind"]) == ("removed", "archive")
    assert set(left[old]) == {"key", "kind", "age_seconds", "bytes", "status", "message",
                              "reason"}


class Recorder:
    """A progress factory that records each bar: [label, total, bytes updated]."""

    def __init__(self):
        self.bars: list[list] = []

    def __call__(self, label, total):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            self.bars.append([label, total, 0])
            yield lambda n: self.bars[-1].__setitem__(2, self.bars[-1][2] + n)
        return bar()


def test_prune_reports_the_archive_bytes_it_removes(repo):
    daily(repo)
    progress = Recorder()
    result = prune(repo, PruneOptions(Rules(last=2)), now=NOW, progress=progress)
    assert progress.bars == [["removing snapshots", 900, 900]] == [
        ["removing snapshots", result.freed_bytes, result.freed_bytes]]
    nothing = Recorder()
    prune(repo, PruneOptions(Rules(last=2)), now=NOW, progress=nothing)
    dry = Recorder()
    daily(repo, "other")
    prune(repo, PruneOptions(Rules(last=2), dry_run=True), now=NOW, progress=dry)
    assert nothing.bars == [] and dry.bars == []  # no bar without anything to remove


# -- an encrypted repository: only snapshots whose MAC checks out count


def _plant(root, genuine_id: str, when: datetime, suffix: str, plain: bool = False) -> str:
    """What a writer without the key can do: a manifest under a new id dated `when`, made
    from a genuine one (MAC no longer matching) or a plain one; no data of its own."""
    volume = genuine_id.split("@")[0]
    snapshot = f"{volume}@{when.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"
    created = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    stamp = genuine_id.split("@")[1]
    data = json.loads((root / "snapshots" / volume / f"{stamp}.json").read_text())
    if plain:
        data = make_manifest(snapshot, created, volume=volume, host=data["host"]).to_dict()
    data.update(snapshot=snapshot, created=created)
    (root / "snapshots" / volume / f"{snapshot.split('@')[1]}.json").write_text(json.dumps(data))
    return snapshot


@pytest.fixture
def planted(tmp_path):
    """An encrypted repository with three genuine daily snapshots and two planted ones
    dated after them: (root, key file, genuine ids oldest first, planted ids)."""
    from tests.unit.chunkrepos import backup, volume_tar
    from tests.unit.test_encryption import age_identity, encrypted_repo

    key_file, root = tmp_path / "repo.key", tmp_path / "repo"
    repo = encrypted_repo(root, [age_identity(tmp_path / "id.txt")], key_file)
    genuine = [backup(repo, volume_tar(seed=i, size=20_000),
                      when=datetime.now(timezone.utc) - timedelta(days=3 - i)).snapshot
               for i in range(3)]
    soon = datetime.now(timezone.utc) - timedelta(minutes=1)
    forged = [_plant(root, genuine[0], soon, "f0f0"),
              _plant(root, genuine[0], soon - timedelta(minutes=1), "f1f1", plain=True)]
    return root, key_file, genuine, forged


def _ids(root) -> set[str]:
    return {f"{p.parent.name}@{p.stem}" for p in root.glob("snapshots/*/*.json")}


def test_prune_of_an_encrypted_repository_counts_only_authentic_snapshots(planted):
    """Planted manifests dated after the genuine ones took `--keep-last 2`, and prune
    removed every genuine snapshot."""
    from tests.unit.test_encryption import opened

    root, key_file, genuine, forged = planted
    result = prune(opened(root, key_file=key_file),
                   PruneOptions(Rules(last=2), leftover_age=0))
    assert {d.snapshot for d in result.snapshots} == set(genuine)
    assert [d.snapshot for d in result.removed] == [genuine[0]]
    assert _ids(root) == set(genuine[1:]) | set(forged)  # planted ones left alone
    assert sorted(u["snapshot"] for u in result.unauthentic) == sorted(forged)
    assert all(u["volume"] == "pgdata" for u in result.unauthentic)
    assert any("not authentic" in u["message"] for u in result.unauthentic)
    assert any("not encrypted" in u["message"] for u in result.unauthentic)
    assert len([w for w in result.warnings if "left alone" in w]) == 2
    with pytest.raises(IntegrityError, match="2 manifest.s. not authentic"):
        result.raise_for_failures()


def test_prune_of_an_encrypted_repository_without_its_key_is_refused(planted, capsys):
    root, key_file, genuine, forged = planted
    before = _ids(root)
    for extra in ((), ("--dry-run",)):
        code, out, err = run(capsys, "prune", "-r", str(root), "--keep-last", "1", *extra)
        assert code == 17 and "--key-file" in err and "MAC" in err, err
        assert len(err.strip().splitlines()) == 1 and not out
    assert _ids(root) == before and not list(root.glob("locks/*"))


def test_cli_prune_and_list_report_the_unauthentic_manifests(planted, capsys):
    root, key_file, genuine, forged = planted
    code, out, err = run(capsys, "list", "-r", str(root), "--json", "--key-file", str(key_file))
    listed = json.loads(out)
    assert code == 0 and listed["authenticated"] is True
    assert [s["snapshot"] for s in listed["snapshots"]] == genuine
    assert sorted(u["snapshot"] for u in listed["unauthentic"]) == sorted(forged)
    assert err.count("not authentic") + err.count("not encrypted") == 2
    code, out, _ = run(capsys, "list", "-r", str(root), "--json")  # no key: all, unchecked
    assert code == 0 and json.loads(out)["authenticated"] is False
    assert len(json.loads(out)["snapshots"]) == 5

    code, out, err = run(capsys, "prune", "-r", str(root), "--keep-last", "1", "--json",
                         "--key-file", str(key_file))
    data = json.loads(out)
    assert code == 6, err
    assert sorted(u["snapshot"] for u in data["unauthentic"]) == sorted(forged)
    assert {s["snapshot"]: s["status"] for s in data["snapshots"]} == {
        genuine[0]: "removed", genuine[1]: "removed", genuine[2]: "kept"}
    assert "not authentic, left alone and not counted" in err.strip().splitlines()[-1]
    assert _ids(root) == {genuine[2], *forged}


def test_the_newest_snapshot_is_not_quietly_an_older_one_than_a_planted_manifest(planted):
    """`restore VOLUME` with the key: a planted manifest newer than every authentic one is
    said (exit 6, both named), not skipped in silence nor taken."""
    from tests.unit.test_encryption import opened

    root, key_file, genuine, forged = planted
    repo = opened(root, key_file=key_file)
    with pytest.raises(IntegrityError, match=f"{forged[0]} is not authentic.*newest authentic "
                                             f"one is {genuine[-1]}"):
        repo.resolve("pgdata")
    assert repo.resolve(genuine[-1]).snapshot == genuine[-1]
    for snapshot in forged:  # the operator removed them (by id: a genuine id may end in f...)
        volume, stamp = snapshot.split("@")
        (root / "snapshots" / volume / f"{stamp}.json").unlink()
    assert repo.resolve("pgdata").snapshot == genuine[-1]


def test_an_archive_pruned_between_listing_and_reading_is_said_so(repo):
    """Archive layout: the snapshot listed (restore resolves it), then a prune holding its
    lock removes it, then the read opens the archive: not "archive ... is missing" (5)."""
    from volbackup.errors import RemovedWhileRead

    ids = daily(repo, days=2, end=datetime.now(timezone.utc))
    manifest = repo.resolve(ids[0])
    with repo.lock(locking.EXCLUSIVE, 0, "prune"):
        repo.remove_manifest(manifest.snapshot)
        repo.remove_archive(manifest)
        with pytest.raises(RemovedWhileRead, match=f"snapshot {ids[0]} was removed .* by a "
                                                   f"prune that is running .*archive .* is "
                                                   f"missing") as raised:
            repo.unpacker(manifest).drain()
    assert raised.value.exit_code == 20

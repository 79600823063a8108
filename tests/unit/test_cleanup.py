"""`cleanup` decides by age; removal failures are reported per leftover."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from volbackup.errors import RepositoryError, VolbackupError
from volbackup.ops.cleanup import cleanup
from volbackup.processes import place
from volbackup.repo.backends import Leftover, LocalBackend, UnfinishedUploads
from volbackup.repo.repository import Repository

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


class FakeBackend(LocalBackend, UnfinishedUploads):
    def __init__(self, root, leftovers, broken=()):
        super().__init__(root)
        self.left, self.broken, self.removed = list(leftovers), set(broken), []

    def leftovers(self):
        return list(self.left)

    def remove_leftover(self, leftover):
        if leftover.key in self.broken:
            raise RepositoryError(f"cannot abort {leftover.key}")
        self.removed.append(leftover.key)


def _left(key, hours, size=100):
    return Leftover(key, f"id-{key}", NOW - timedelta(hours=hours), size)


def test_only_old_uploads_are_removed(tmp_path):
    backend = FakeBackend(tmp_path, [_left("a", 30), _left("b", 1), _left("c", 25, None)])
    result = cleanup(Repository(backend), older_than=24 * 3600, now=NOW)
    assert [(o.key, o.status, o.reason) for o in result.leftovers] == [
        ("a", "removed", "started over 1d ago"), ("b", "kept", "too young"),
        ("c", "removed", "started over 1d ago")]
    assert [o.as_dict()["status"] for o in result.leftovers] == ["removed", "kept", "removed"]
    assert backend.removed == ["a", "c"] and result.removed_bytes == 100
    assert result.leftovers[0].started == "2026-11-28T06:00:00Z"
    assert result.leftovers[0].age_seconds == 30 * 3600
    result.raise_for_failures()


def test_dry_run_removes_nothing(tmp_path):
    backend = FakeBackend(tmp_path, [_left("a", 30), _left("b", 0)])
    result = cleanup(Repository(backend), older_than=0, dry_run=True, now=NOW)
    assert [o.status for o in result.leftovers] == ["would remove", "would remove"]
    assert backend.removed == [] and result.removed_bytes == 200


def test_a_failed_removal_is_reported_and_the_rest_goes_on(tmp_path):
    backend = FakeBackend(tmp_path, [_left("a", 30), _left("b", 30)], broken={"a"})
    result = cleanup(Repository(backend), older_than=0, now=NOW)
    assert [o.status for o in result.leftovers] == ["failed", "removed"]
    with pytest.raises(VolbackupError, match="1 of 2 leftovers could not be removed: cannot abort a"):
        result.raise_for_failures()


def test_a_local_repository_has_no_leftovers(tmp_path):
    assert cleanup(Repository(LocalBackend(tmp_path)), older_than=0).leftovers == []


def test_temp_files_of_a_directory_repository_are_unfinished_writes_too(tmp_path):
    """`cleanup` said a directory repository had no leftovers; its temp files were only
    removed by `prune`. Same rule as there: old, or quiet for 10 min with a dead pid."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "snapshots" / "pgdata"
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    files = {}
    here = place()
    elsewhere = "00000000" if here != "00000000" else "11111111"  # another host or namespace
    for name, pid, minutes, where in (
            ("old", os.getpid(), 25 * 60, ""), ("young", os.getpid(), 60, ""),
            ("dead", dead.pid, 11, ""), ("busy", dead.pid, 1, ""),
            ("deadhere", dead.pid, 11, f"{here}-"),
            ("deadelsewhere", dead.pid, 11, f"{elsewhere}-")):
        files[name] = folder / f".{name}.tar.zst.tmp-{pid}-{where}ab12"
        files[name].write_bytes(b"t" * 4)
        quiet = (now - timedelta(minutes=minutes)).timestamp()
        os.utime(files[name], (quiet, quiet))
    result = cleanup(Repository(LocalBackend(tmp_path)), older_than=24 * 3600, now=now)
    got = {o.key.rsplit("/", 1)[1].split(".")[1]: (o.kind, o.status, o.upload_id, o.bytes)
           for o in result.leftovers}
    assert got == {"old": ("temp", "removed", None, 4), "young": ("temp", "kept", None, 4),
                   "dead": ("temp", "removed", None, 4), "busy": ("temp", "kept", None, 4),
                   "deadhere": ("temp", "removed", None, 4),
                   # a pid of another host or pid namespace says nothing here: age only
                   "deadelsewhere": ("temp", "kept", None, 4)}
    assert {n for n, path in files.items() if path.exists()} == {"young", "busy",
                                                                  "deadelsewhere"}
    assert result.removed_bytes == 12
    result.raise_for_failures()


def test_a_temp_file_names_its_writer_and_where_its_pid_means_it(tmp_path):
    backend = LocalBackend(tmp_path)
    with backend.open_write("snapshots/v/x.tar.zst") as writer:
        writer.write(b"data")
        (temp,) = backend.temp_files()
        assert (temp.pid, temp.place) == (os.getpid(), place())
    assert backend.temp_files() == []


def test_prune_removes_old_uploads_through_the_same_operation(tmp_path):
    from volbackup.ops.prune import PruneOptions, prune
    from volbackup.repo.retention import Rules

    backend = FakeBackend(tmp_path, [_left("snapshots/a/x", 7), _left("snapshots/b/y", 7),
                                     _left("snapshots/a/z", 5)])
    result = prune(Repository(backend), PruneOptions(Rules(last=1), volumes=["a"]), now=NOW)
    assert [(o.key, o.kind, o.status, o.reason) for o in result.leftovers] == [
        ("snapshots/a/x", "upload", "removed", "started over 6h ago"),
        ("snapshots/a/z", "upload", "kept", "too young")]
    assert backend.removed == ["snapshots/a/x"] and result.freed_bytes == 100


def test_cli_cleanup_of_a_directory_repository(tmp_path, capsys):
    import json

    from volbackup.cli import main

    folder = tmp_path / "snapshots" / "pgdata"
    folder.mkdir(parents=True)
    (folder / ".a.tar.zst.tmp-1-ab12").write_bytes(b"t" * 4)
    assert main(["cleanup", "-r", str(tmp_path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("snapshots/pgdata/.a.tar.zst.tmp-1-ab12: kept (too young), last written ")
    assert "1 unfinished write(s); would free 0 B" in err
    assert main(["cleanup", "-r", str(tmp_path), "--older-than", "0", "--json"]) == 0
    left, = json.loads(capsys.readouterr().out)["leftovers"]
    assert (left["kind"], left["status"], left["upload_id"], left["bytes"]) == (
        "temp", "removed", None, 4)
    assert not (folder / ".a.tar.zst.tmp-1-ab12").exists()

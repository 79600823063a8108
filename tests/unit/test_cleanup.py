"""`cleanup` decides by age; removal failures are reported per leftover."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from volbackup.backends import Leftover, LocalBackend
from volbackup.errors import RepositoryError, VolbackupError
from volbackup.ops.cleanup import cleanup
from volbackup.repository import Repository

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


class FakeBackend(LocalBackend):
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
    assert [(o.key, o.status) for o in result.leftovers] == [
        ("a", "removed"), ("b", "kept (too young)"), ("c", "removed")]
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

"""raise_for_failures: how per-volume outcomes add up to one exit code."""

from __future__ import annotations

import errno
import os

import pytest

from volbackup.errors import (IntegrityError, NotFound, PartialFailure, Unexpected,
                             VolbackupError)
from volbackup.ops.outcome import Outcome, raise_for_failures


def ok(volume: str) -> Outcome:
    return Outcome(volume, "ok")


def failed(volume: str, error: VolbackupError | None = None) -> Outcome:
    return Outcome(volume, "ok").failure(error or IntegrityError(f"{volume} is corrupt"))


@pytest.mark.parametrize("outcomes", [[], [ok("a")], [ok("a"), ok("b")],
                                      [ok("a"), Outcome("b", "skipped", message="in use")]])
def test_nothing_failed_raises_nothing(outcomes):
    raise_for_failures(outcomes, "backups")


@pytest.mark.parametrize("error", [NotFound("no volume a"), IntegrityError("bad sha256"),
                                   VolbackupError("other")])
def test_single_failure_raises_its_own_error(error):
    with pytest.raises(type(error)) as caught:
        raise_for_failures([failed("a", error)], "restores")
    assert caught.value is error
    assert caught.value.exit_code == error.exit_code


def test_some_failed_is_a_partial_failure():
    outcomes = [ok("a"), failed("b"), Outcome("c", "skipped"), failed("d", NotFound("gone"))]
    with pytest.raises(PartialFailure) as caught:
        raise_for_failures(outcomes, "restores")
    assert caught.value.exit_code == 3
    assert str(caught.value) == "2 of 4 restores failed: b, d"


def test_all_of_several_failed_exits_1():
    with pytest.raises(VolbackupError) as caught:
        raise_for_failures([failed("a"), failed("b", NotFound("gone"))], "backups")
    assert type(caught.value) is VolbackupError
    assert caught.value.exit_code == 1
    assert "all 2 backups failed" in str(caught.value)


def test_failure_records_the_error():
    outcome = failed("a", NotFound("no volume a"))
    assert outcome.failed and outcome.status == "failed" and outcome.message == "no volume a"
    assert outcome.as_dict()["exit_code"] == 4 and "error" not in outcome.as_dict()
    assert ok("b").as_dict() == {"volume": "b", "status": "ok", "snapshot": None,
                                 "message": None, "exit_code": 0}


def test_an_error_from_outside_the_tree_becomes_a_failure_with_exit_code_1():
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/backups/x.tar.zst")
    outcome = Outcome("a", "ok").failure(disk_full)
    assert outcome.failed and isinstance(outcome.error, Unexpected)
    assert outcome.error.exit_code == 1 and outcome.error.__cause__ is disk_full
    assert outcome.message == ("unexpected OSError: [Errno 28] No space left on device: "
                               "'/srv/backups/x.tar.zst'")
    assert outcome.as_dict()["exit_code"] == 1
    with pytest.raises(PartialFailure):
        raise_for_failures([outcome, ok("b")], "volumes")

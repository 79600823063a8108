"""errors.reworded: an error says more, and stays what it was (class, exit code, payload)."""

from __future__ import annotations

import pytest

from volbackup.errors import (PartialFailure, RepositoryError, TargetNotEmpty, Unexpected,
                              reworded)


@pytest.mark.parametrize("error", [
    RepositoryError("cannot write locks/x.json: Read-only file system"),
    TargetNotEmpty("volume t exists and is not empty"),
    Unexpected(OSError(28, "No space left on device")),   # takes an error, not a message
    PartialFailure("1 of 2 volumes failed", result="the result"),
], ids=lambda e: type(e).__name__)
def test_reworded_keeps_class_exit_code_and_payload(error):
    again = reworded(error, f"volume v was not replaced ({error}); nothing was removed")
    assert type(again) is type(error) and again.exit_code == error.exit_code
    assert str(again) == f"volume v was not replaced ({error}); nothing was removed"
    assert getattr(again, "result", None) == getattr(error, "result", None)
    assert str(error) not in ("", str(again))  # the original is left as it was

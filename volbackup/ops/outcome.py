"""Per-volume outcomes of a multi-volume run, and the exit they add up to."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Protocol

from volbackup.errors import PartialFailure, VolbackupError, as_error


class ProgressFactory(Protocol):
    """Makes one progress reporter per volume: `with progress(label, total) as update:`."""

    def __call__(self, label: str, total: int | None) -> ContextManager[Callable[[int], None]]: ...


@contextmanager
def no_progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass
class Outcome:
    volume: str
    status: str                      # "ok", "restored", "skipped", "failed"
    snapshot: str | None = None
    message: str | None = None
    error: VolbackupError | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def failure(self, error: BaseException) -> "Outcome":
        """Failed with `error`; one from outside our tree (disk full, a bug) is wrapped, so
        every error becomes a failed outcome with a message and an exit code."""
        self.error = as_error(error)
        self.status, self.message = "failed", str(self.error)
        return self

    def as_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "error"}
        data["exit_code"] = self.error.exit_code if self.error else 0
        return data


def raise_for_failures(outcomes: list[Outcome], what: str,
                       name: Callable[[Outcome], str] | None = None) -> None:
    """One failure alone raises itself; a mix raises PartialFailure; all failed, exit 1.
    The failed are named by volume, or by `name` (which names them in every case)."""
    failed = [o for o in outcomes if o.failed]
    if not failed:
        return
    if len(outcomes) == 1:
        raise failed[0].error
    names = ", ".join((name or (lambda o: o.volume))(o) for o in failed)
    if len(failed) < len(outcomes):
        raise PartialFailure(f"{len(failed)} of {len(outcomes)} {what} failed: {names}")
    raise VolbackupError(f"all {len(outcomes)} {what} failed" + (f": {names}" if name else ""))

"""Checks shared by the option objects of the ops (BackupOptions, RestoreOptions,
MigrateOptions): each object checks its own values when it is made, so an op never starts
on a value it cannot honour. The CLI and the job config narrow these ranges further (with
their own messages and exit codes) before an object is made."""

from __future__ import annotations

QUIESCE_MODES = ("stop", "pause")


def check_whole(name: str, value: object, low: int, high: int | None = None) -> None:
    """ValueError unless `value` is an int (not a bool) from `low` (to `high`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        wanted = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {wanted}, not {value!r}")


def check_quiesce(quiesce: object, stop_timeout: object) -> None:
    """A mode `volbackup.ops.quiesce.quiet` knows (any other would quiet nothing, without a
    word) and a grace period the engine takes."""
    if quiesce is not None and quiesce not in QUIESCE_MODES:
        raise ValueError(f"quiesce must be None, 'stop' or 'pause', not {quiesce!r}")
    check_whole("stop_timeout", stop_timeout, 0)


def check_use_direct(use_direct: object) -> None:
    """None, True or False: anything else would be taken for True or False unseen."""
    if use_direct is not None and not isinstance(use_direct, bool):
        raise ValueError(f"use_direct must be None, True or False, not {use_direct!r}")

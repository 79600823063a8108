"""Fill a fresh volume from a tar stream: the one way data goes into a volume.

Used by restore (from an archive) and migrate (from another engine). The target is
always *fresh*: created with the given driver, options and labels. An existing target
is replaced only when it is empty, or with `force`; it is removed and created anew, so
"replace" never means "merge". A fill that fails removes the volume it created, and
recreates an empty target it replaced, so no half-filled volume is left under the
target name without the error saying so.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from volbackup.engine import Engine, Helper, VolumeInfo
from volbackup.errors import NotFound, TargetNotEmpty, VolbackupError
from volbackup.signals import deferred


@dataclass(frozen=True)
class VolumeSpec:
    driver: str
    options: dict
    labels: dict


def fill_fresh_volume(engine: Engine, name: str, spec: VolumeSpec, force: bool,
                      write: Callable[[Helper | str], None],
                      before_replacing: Callable[[], None] = lambda: None,
                      lost_note: str = "",
                      directly: Callable[[VolumeInfo], str | None] = lambda info: None) -> bool:
    """Create `name` afresh and let `write(target)` put the data in; True if it replaced one.

    `target` is a helper attached to the volume, or, where `directly(volume)` gives the
    volume's directory on this host, that directory (no helper is needed then).
    `before_replacing()` runs before a non-empty target is given up (restore checks the
    whole archive there). `lost_note` explains, in an error, why replaced data is gone.
    """
    previous, previous_was_empty = _clear_target(engine, name, force, before_replacing)
    written = False
    try:
        with deferred():  # a volume the engine created is one we know to remove
            created = engine.create_volume(name, spec.driver, spec.options, spec.labels)
        directory = directly(created)
        with (nullcontext(directory) if directory else
              engine.helper(volume=name, read_only=False)) as target:
            empty = not os.listdir(directory) if directory else target.is_empty()
            if not empty:
                raise TargetNotEmpty(
                    f"volume {name} keeps its data outside Docker (driver {spec.driver}, "
                    f"options {spec.options}) and that storage is not empty; volbackup "
                    f"cannot empty it: clear it yourself, or use --as NAME")
            written = True
            write(target)
    except BaseException as e:
        # Put back what was there when nothing was written, or when it was empty anyway.
        put_back = previous if (previous_was_empty or not written) else None
        with deferred():
            cleanup_problem = _undo(engine, name, put_back)
        if isinstance(e, VolbackupError):
            notes = [str(e)]
            if previous is not None and put_back is None:
                notes.append(f"volume {name} was removed and its previous contents are lost"
                             + (f" ({lost_note})" if lost_note else ""))
            if cleanup_problem:
                notes.append(cleanup_problem)
            if len(notes) > 1:
                raise type(e)("; ".join(notes)) from None
        raise
    return previous is not None


def _clear_target(engine: Engine, name: str, force: bool,
                  before_replacing: Callable[[], None]) -> tuple[VolumeInfo | None, bool]:
    """Make room for a fresh volume named `name`.

    Returns the volume that was there (or None) and whether it was empty.
    """
    try:
        existing = engine.volume(name)
    except NotFound:
        return None, True
    with engine.helper(volume=name) as helper:
        empty = helper.is_empty()
    if not empty and not force:
        raise TargetNotEmpty(f"volume {name} exists and is not empty; use --force to replace "
                             f"its contents, or --as NAME to use another name")
    users = engine.containers_using(name)
    if users:
        raise TargetNotEmpty(
            f"volume {name} is used by container(s) {', '.join(users)}; remove them first "
            f"(docker rm keeps the volume), or --as NAME to use another name")
    if not empty:
        before_replacing()
    with deferred():
        engine.remove_volume(name)
    return existing, empty


def _undo(engine: Engine, name: str, put_back: VolumeInfo | None) -> str | None:
    """Remove the volume this fill created; create `put_back` again if given.

    Returns a message when that fails, for the caller to add to the original error.
    """
    try:
        try:
            engine.remove_volume(name)
        except NotFound:
            pass  # it was never created
        if put_back is not None:
            engine.create_volume(name, put_back.driver, put_back.options, put_back.labels)
    except VolbackupError as e:
        return f"cleaning up volume {name} failed too ({e})"
    return None

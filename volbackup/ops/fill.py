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

from volbackup.docker.engine import Engine
from volbackup.docker.helpers import Helper
from volbackup.docker.volumes import VolumeInfo
from volbackup.errors import NotFound, TargetNotEmpty, UntrustedStorage, VolbackupError, reworded
from volbackup.signals import deferred
from volbackup.urls import SECRET_OPTION, scrub

# Options of the `local` driver (moby volume/local) and the mount types that reach over
# the network.
_LOCAL_OPTIONS = {"type", "o", "device", "size"}
_NETWORK_TYPES = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p",
                  "fuse.sshfs", "sshfs", "afs", "lustre"}


@dataclass(frozen=True)
class VolumeSpec:
    driver: str
    options: dict
    labels: dict

    def describe(self) -> str:
        """Driver and options for a message, secrets hidden."""
        options = ",".join(f"{k}={v}" for k, v in sorted(redact_options(self.options).items()))
        return f"driver {self.driver}" + (f", options {options}" if options else ", no options")


def redact_options(options: dict) -> dict:
    """Driver options fit to print: values of secret options (CIFS `password=` inside
    `o=`, a plugin's `password` option) replaced by `***`."""
    return {k: "***" if SECRET_OPTION.fullmatch(f"{k}=x") else scrub(str(v))
            for k, v in options.items()}


def external_storage(driver: str, options: dict) -> str | None:
    """None when a volume of `driver` with `options` keeps its data inside the engine's
    own volume area (or in memory); otherwise where the data would go, for messages.

    The engine creates whatever a manifest asks for, as root: a `local` volume with
    `o=bind,device=/usr/local/sbin` is that host directory, so these are never created
    from a repository's say-so alone (ops.restore, ops.migrate).
    """
    if driver != "local":
        return f"volume plugin {driver!r} decides where the data goes"
    opts = {str(k).lower(): str(v) for k, v in options.items()}
    unknown = sorted(set(opts) - _LOCAL_OPTIONS)
    if unknown:
        return f"unknown local driver option(s) {', '.join(unknown)}"
    if not set(opts) - {"size"}:
        return None  # a plain directory in the volume area (`size`: its quota)
    kind = opts.get("type", "").strip().lower()
    device = opts.get("device", "").strip()
    flags = {item.split("=", 1)[0].strip().lower()
             for item in opts.get("o", "").split(",") if item.strip()}
    if flags & {"bind", "rbind"}:
        return f"a bind mount of host path {device or '(none given)'}"
    if kind in _NETWORK_TYPES or "addr" in flags or ":" in device or device.startswith("//"):
        return f"network storage (type={kind or '?'}, device {device or '?'})"
    if kind == "tmpfs" and "/" not in device:
        return None  # memory, sized by `o=size=`: nothing on the host is touched
    return f"a mount of device {device or '(none given)'} (type={kind or '?'})"


def check_storage(name: str, spec: VolumeSpec, trust: bool, announce: Callable[[str], None],
                  way_out: str = "") -> str | None:
    """Refuse (UntrustedStorage) a spec that keeps data outside the engine's volume area
    unless `trust`; with it, `announce` what will be created, before it is. Returns the
    reason the storage is external, or None."""
    external = external_storage(spec.driver, spec.options)
    if external is None:
        return None
    if not trust:
        raise UntrustedStorage(
            f"volume {name} would be created with {spec.describe()}: {external}, outside "
            f"the engine's volume area; not created (give --trust-driver-options if you "
            f"trust where these options point{way_out})")
    announce(f"volume {name}: creating it with {spec.describe()} ({external}), "
             f"as --trust-driver-options allows")
    return external


def fill_fresh_volume(engine: Engine, name: str, spec: VolumeSpec, force: bool,
                      write: Callable[[Helper | str], None],
                      before_replacing: Callable[[VolumeInfo], None] = lambda volume: None,
                      lost_note: str = "",
                      directly: Callable[[VolumeInfo], str | None] = lambda info: None,
                      kept_in: Callable[[], str | None] = lambda: None) -> bool:
    """Create `name` afresh and let `write(target)` put the data in; True if it replaced one.

    `target` is a helper attached to the volume, or, where `directly(volume)` gives the
    volume's directory on this host, that directory (no helper is needed then).
    `before_replacing(volume)` runs before a non-empty target is given up (restore checks
    the whole archive and the free space there, and takes a safety snapshot; raising
    keeps the target). If the fill then fails, `kept_in()` says where the replaced data
    is kept, or else `lost_note` explains why it is gone.
    The caller has passed `spec` through check_storage. The whole fill holds the
    engine-wide claim on `name` (Engine.claim): a second run after the same target fails
    with TargetBusy and touches nothing.
    """
    with engine.claim(name):
        return _fill(engine, name, spec, force, write, before_replacing, lost_note, directly,
                     kept_in)


def _fill(engine: Engine, name: str, spec: VolumeSpec, force: bool,
          write: Callable[[Helper | str], None], before_replacing: Callable[[VolumeInfo], None],
          lost_note: str, directly: Callable[[VolumeInfo], str | None],
          kept_in: Callable[[], str | None]) -> bool:
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
                    f"volume {name} keeps its data outside Docker ({spec.describe()}) "
                    f"and that storage is not empty; volbackup "
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
                kept = kept_in()
                notes.append(f"volume {name} was removed; {kept}" if kept else
                             f"volume {name} was removed and its previous contents are lost"
                             + (f" ({lost_note})" if lost_note else ""))
            if cleanup_problem:
                notes.append(cleanup_problem)
            if len(notes) > 1:
                raise reworded(e, "; ".join(notes)) from None
        raise
    return previous is not None


def _clear_target(engine: Engine, name: str, force: bool,
                  before_replacing: Callable[[VolumeInfo], None]
                  ) -> tuple[VolumeInfo | None, bool]:
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
        before_replacing(existing)
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

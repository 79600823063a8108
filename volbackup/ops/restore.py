"""Restore snapshots into fresh volumes.

A target volume is always *fresh*: created for the restore with the recorded driver,
options and labels. An existing target is replaced only when it is empty, or with
`force`; it is removed and created anew, so "replace" never means "merge". A restore
that fails removes the volume it created, and recreates an empty target it replaced,
so no half-restored volume is left under the target name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from volbackup import archive
from volbackup.engine import DATA_PATH, Engine, VolumeInfo
from volbackup.errors import NotFound, TargetNotEmpty, VolbackupError
from volbackup.manifest import Manifest
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.repository import Repository
from volbackup.tarstream import root_entry_tar


@dataclass
class VolumeRestore(Outcome):
    bytes: int = 0
    seconds: float = 0.0
    replaced: bool = False


@dataclass
class RestoreResult:
    repository: str
    volumes: list[VolumeRestore]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "restores")


def restore(engine: Engine, repo: Repository, refs: list[str], target: str | None = None,
            force: bool = False, restore_all: bool = False,
            progress: ProgressFactory = no_progress, host: str | None = None) -> RestoreResult:
    """Restore each snapshot ref (an id, or a volume name for its newest snapshot).

    With `restore_all`, the newest snapshot of every volume in the repository is
    restored, and targets that are not empty (or are in use) are skipped, not failed.
    With `host`, only snapshots made on that host are considered.
    """
    if restore_all:
        refs = repo.volumes(host)
        if not refs:
            of_host = f" from host {host}" if host is not None else ""
            raise NotFound(f"no snapshots{of_host} in repository {repo.describe()}")
    engine.remove_stale_helpers()
    engine.ensure_helper_image()
    outcomes = []
    for ref in refs:
        outcome = VolumeRestore(target or ref, "restored")
        try:
            manifest = repo.resolve(ref, host)
            outcome.volume, outcome.snapshot = target or manifest.volume, manifest.snapshot
            _restore_one(engine, repo, manifest, outcome, force, progress)
        except TargetNotEmpty as e:
            if not restore_all:
                outcome.failure(e)
            else:
                outcome.status, outcome.message = "skipped", str(e)
        except VolbackupError as e:
            outcome.failure(e)
        outcomes.append(outcome)
    return RestoreResult(repo.describe(), outcomes)


def _restore_one(engine: Engine, repo: Repository, manifest: Manifest, outcome: VolumeRestore,
                 force: bool, progress: ProgressFactory) -> None:
    name = outcome.volume
    started = time.monotonic()
    previous, previous_was_empty = _clear_target(engine, repo, manifest, name, force)
    outcome.replaced = previous is not None
    engine.create_volume(name, manifest.driver, manifest.driver_options, manifest.labels)
    written = False
    try:
        with progress(name, manifest.bytes) as update, \
                repo.open_archive(manifest) as stored, \
                engine.helper(volume=name, read_only=False) as helper:
            if not helper.is_empty():
                raise TargetNotEmpty(
                    f"volume {name} keeps its data outside Docker (driver {manifest.driver}, "
                    f"options {manifest.driver_options}) and that storage is not empty; "
                    f"volbackup cannot empty it: clear it yourself, or restore --as NAME")
            written = True
            unpacker = archive.Unpacker(stored, manifest.sha256, manifest.stored_bytes, update)
            helper.import_(DATA_PATH, unpacker.chunks())
            if unpacker.root is not None and unpacker.root.is_root:
                helper.import_("/", root_entry_tar(unpacker.root, DATA_PATH.strip("/")))
    except BaseException as e:
        # Put back what was there when nothing was written, or when it was empty anyway.
        put_back = previous if (previous_was_empty or not written) else None
        cleanup_problem = _undo(engine, name, put_back)
        if isinstance(e, VolbackupError):
            notes = [str(e)]
            if previous is not None and put_back is None:
                notes.append(f"volume {name} was removed and its previous contents are lost "
                             f"(the snapshot itself had checked out)")
            if cleanup_problem:
                notes.append(cleanup_problem)
            if len(notes) > 1:
                raise type(e)("; ".join(notes)) from None
        raise
    outcome.bytes = unpacker.walker.bytes
    outcome.seconds = round(time.monotonic() - started, 3)


def _clear_target(engine: Engine, repo: Repository, manifest: Manifest, name: str,
                  force: bool) -> tuple[VolumeInfo | None, bool]:
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
                             f"its contents, or --as NAME to restore under another name")
    users = engine.containers_using(name)
    if users:
        raise TargetNotEmpty(
            f"volume {name} is used by container(s) {', '.join(users)}; remove them first "
            f"(docker rm keeps the volume), or --as NAME to restore under another name")
    if not empty:
        # Check the whole archive before the existing data is given up.
        with repo.open_archive(manifest) as stored:
            archive.Unpacker(stored, manifest.sha256, manifest.stored_bytes).drain()
    engine.remove_volume(name)
    return existing, empty


def _undo(engine: Engine, name: str, put_back: VolumeInfo | None) -> str | None:
    """Remove the volume this restore created; create `put_back` again if given.

    Returns a message when that fails, for the caller to add to the original error.
    """
    try:
        engine.remove_volume(name)
        if put_back is not None:
            engine.create_volume(name, put_back.driver, put_back.options, put_back.labels)
    except VolbackupError as e:
        return f"cleaning up volume {name} failed too ({e})"
    return None

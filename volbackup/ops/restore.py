"""Restore snapshots into fresh volumes (what "fresh" means: volbackup.ops.fill)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from volbackup import archive, direct
from volbackup.engine import DATA_PATH, Engine, Helper, VolumeInfo
from volbackup.errors import NotFound, TargetNotEmpty
from volbackup.manifest import Manifest
from volbackup.ops.fill import VolumeSpec, fill_fresh_volume
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.select import plain_directory
from volbackup.repository import Repository


@dataclass
class VolumeRestore(Outcome):
    bytes: int = 0
    seconds: float = 0.0
    replaced: bool = False
    via: str | None = None        # "direct" (GNU tar here) or "engine" (a helper)


@dataclass
class RestoreResult:
    repository: str
    volumes: list[VolumeRestore]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "restores")


def restore(engine: Engine, repo: Repository, refs: list[str], target: str | None = None,
            force: bool = False, restore_all: bool = False,
            progress: ProgressFactory = no_progress, host: str | None = None,
            use_direct: bool | None = None) -> RestoreResult:
    """Restore each snapshot ref (an id, or a volume name for its newest snapshot).

    With `restore_all`, the newest snapshot of every volume in the repository is
    restored, and targets that are not empty (or are in use) are skipped, not failed.
    With `host`, only snapshots made on that host are considered. A fresh volume that is
    a plain directory here is filled by GNU tar on this host unless `use_direct` is False
    (volbackup.direct); any other through a helper.
    """
    if restore_all:
        refs = repo.volumes(host)
        if not refs:
            of_host = f" from host {host}" if host is not None else ""
            raise NotFound(f"no snapshots{of_host} in repository {repo.describe()}")
    engine.prepare_helpers()
    outcomes = []
    for ref in refs:
        outcome = VolumeRestore(target or ref, "restored")
        try:
            manifest = repo.resolve(ref, host)
            outcome.volume, outcome.snapshot = target or manifest.volume, manifest.snapshot
            _restore_one(engine, repo, manifest, outcome, force, progress, use_direct)
        except TargetNotEmpty as e:
            if not restore_all:
                outcome.failure(e)
            else:
                outcome.status, outcome.message = "skipped", str(e)
        except Exception as e:  # any error (Unexpected if not ours): the next ref still runs
            outcome.failure(e)
        outcomes.append(outcome)
    return RestoreResult(repo.describe(), outcomes)


def _restore_one(engine: Engine, repo: Repository, manifest: Manifest, outcome: VolumeRestore,
                 force: bool, progress: ProgressFactory, use_direct: bool | None) -> None:
    started = time.monotonic()

    def check_archive() -> None:
        with repo.open_archive(manifest) as stored:
            archive.Unpacker(stored, manifest.sha256, manifest.stored_bytes).drain()

    def write(target: Helper | str) -> None:
        outcome.via = "direct" if isinstance(target, str) else "engine"
        with progress(outcome.volume, manifest.bytes) as update, \
                repo.open_archive(manifest) as stored:
            unpacker = archive.Unpacker(stored, manifest.sha256, manifest.stored_bytes, update)
            if isinstance(target, str):
                direct.import_(target, unpacker.chunks())  # `./` carries the root's metadata
            else:
                target.import_(DATA_PATH, unpacker.chunks())
                again = unpacker.walker.metadata_tar(DATA_PATH.strip("/"))  # root, hard links
                if again is not None:
                    target.import_("/", again)
        outcome.bytes = unpacker.walker.bytes

    def directly(volume: VolumeInfo) -> str | None:
        """A fresh plain volume's directory, if GNU tar on this host can fill it."""
        if use_direct is False:
            return None
        return direct.directory_for(engine, plain_directory(volume))

    spec = VolumeSpec(manifest.driver, manifest.driver_options, manifest.labels)
    outcome.replaced = fill_fresh_volume(
        engine, outcome.volume, spec, force, write, before_replacing=check_archive,
        lost_note="the snapshot itself had checked out", directly=directly)
    outcome.seconds = round(time.monotonic() - started, 3)

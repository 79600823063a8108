"""Restore snapshots into fresh volumes (what "fresh" means: volbackup.ops.fill)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from volbackup import archive, direct
from volbackup.engine import DATA_PATH, Engine, Helper, VolumeInfo
from volbackup.errors import NotFound, TargetNotEmpty, UntrustedStorage, VolbackupError
from volbackup.manifest import Manifest
from volbackup.ops.fill import VolumeSpec, check_storage, fill_fresh_volume, redact_options
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.select import plain_directory
from volbackup.repository import Repository
from volbackup.tarstream import root_entry_tar


@dataclass
class VolumeRestore(Outcome):
    bytes: int = 0
    seconds: float = 0.0
    replaced: bool = False
    via: str | None = None        # "direct" (GNU tar here) or "engine" (a helper)
    driver: str | None = None     # what the volume is (to be) created with
    driver_options: dict | None = None   # secrets redacted
    external_storage: str | None = None  # where its data goes, if outside the volume area


@dataclass
class RestoreResult:
    repository: str
    volumes: list[VolumeRestore]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "restores")


def restore(engine: Engine, repo: Repository, refs: list[str], target: str | None = None,
            force: bool = False, restore_all: bool = False,
            progress: ProgressFactory = no_progress, host: str | None = None,
            use_direct: bool | None = None, trust_options: bool = False,
            drop_options: bool = False,
            announce: Callable[[str], None] = lambda message: None) -> RestoreResult:
    """Restore each snapshot ref (an id, or a volume name for its newest snapshot).

    With `restore_all`, the newest snapshot of every volume in the repository is
    restored, and targets that are not empty (or are in use) are skipped, not failed.
    With `host`, only snapshots made on that host are considered. A fresh volume that is
    a plain directory here is filled by GNU tar on this host unless `use_direct` is False
    (volbackup.direct); any other through a helper.
    Driver options that keep data outside the engine's volume area (a host path, a
    device, network storage, a plugin) come from the repository, which is not trusted:
    such a volume is refused (skipped with `restore_all`) unless `trust_options`, and
    then `announce`d before it is created. `drop_options` creates plain local volumes.
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
            spec = VolumeSpec(manifest.driver, manifest.driver_options, manifest.labels)
            if drop_options:
                spec = VolumeSpec("local", {}, manifest.labels)
            outcome.driver, outcome.driver_options = spec.driver, redact_options(spec.options)
            outcome.external_storage = check_storage(
                outcome.volume, spec, trust_options, announce,
                way_out=", or --drop-driver-options for a plain local volume")
            _restore_one(engine, repo, manifest, spec, outcome, force, progress, use_direct)
        except (TargetNotEmpty, UntrustedStorage) as e:
            if not restore_all:
                outcome.failure(e)
            else:
                outcome.status, outcome.message = "skipped", str(e)
        except VolbackupError as e:
            outcome.failure(e)
        outcomes.append(outcome)
    return RestoreResult(repo.describe(), outcomes)


def _restore_one(engine: Engine, repo: Repository, manifest: Manifest, spec: VolumeSpec,
                 outcome: VolumeRestore, force: bool, progress: ProgressFactory, use_direct: bool | None) -> None:
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
                if unpacker.root is not None and unpacker.root.is_root:
                    target.import_("/", root_entry_tar(unpacker.root, DATA_PATH.strip("/")))
        outcome.bytes = unpacker.walker.bytes

    def directly(volume: VolumeInfo) -> str | None:
        """A fresh plain volume's directory, if GNU tar on this host can fill it."""
        if use_direct is False:
            return None
        return direct.directory_for(engine, plain_directory(volume))

    outcome.replaced = fill_fresh_volume(
        engine, outcome.volume, spec, force, write, before_replacing=check_archive,
        lost_note="the snapshot itself had checked out", directly=directly)
    outcome.seconds = round(time.monotonic() - started, 3)

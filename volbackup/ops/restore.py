"""Restore snapshots into fresh volumes (what "fresh" means: volbackup.ops.fill)."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Callable

from volbackup.docker import direct
from volbackup.docker.engine import Engine
from volbackup.docker.helpers import DATA_PATH, EXTRACTOR_TIMES, Helper
from volbackup.docker.volumes import VolumeInfo
from volbackup.errors import (InsufficientSpace, NotFound, TargetNotEmpty, UntrustedStorage,
                              VolbackupError, reworded)
from volbackup.ops.backup import BackupOptions, backup
from volbackup.ops.fill import VolumeSpec, check_storage, fill_fresh_volume, redact_options
from volbackup.ops.options import check_use_direct
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.reading import Reader, reader_for
from volbackup.ops.select import plain_directory
from volbackup.repo import locking
from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository, looks_like_id
from volbackup.stream.catalog import Selection
from volbackup.stream.tarstream import TarWalker, shown
from volbackup.timefmt import utc_text


SAFETY_LOCK_WAIT = 60.0  # seconds a safety snapshot waits for a prune's exclusive lock


@dataclass
class VolumeRestore(Outcome):
    bytes: int = 0
    seconds: float = 0.0
    replaced: bool = False
    via: str | None = None        # "direct" (GNU tar here) or "engine" (a helper)
    driver: str | None = None     # what the volume is (to be) created with
    driver_options: dict | None = None   # secrets redacted
    external_storage: str | None = None  # where its data goes, if outside the volume area
    safety_snapshot: str | None = None   # what the replaced volume held, kept in the repository
    partial: bool = False         # only what --include/--exclude selected


@dataclass
class RestoreResult:
    repository: str
    volumes: list[VolumeRestore]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "restores")


@dataclass(frozen=True)
class RestoreOptions:
    """How `restore` fills the volumes: what its caller chooses (`restore --help` offers
    the same). Checked when made (ValueError)."""

    force: bool = False
    """Replace a target volume that exists and is not empty (removed, then made again)."""
    safety: bool = True
    """Before `force` replaces a volume, back its contents up into the repository as a
    *safety snapshot*; if that fails, the volume is not touched. False: replace without."""
    use_direct: bool | None = None
    """A fresh volume that is a plain directory here is filled by GNU tar on this host
    (volbackup.docker.direct) unless this is False; any other through a helper."""
    trust_options: bool = False
    """Create volumes whose driver options (from the repository, which is not trusted) keep
    data outside the engine's volume area: a host path, a device, network storage, a
    plugin. Without it they are refused (skipped with `restore_all`); with it they are
    `announce`d before they are created."""
    drop_options: bool = False
    """Create plain local volumes, whatever driver and options the snapshot records."""
    paths: Selection | None = None
    """Only these paths of each snapshot (restore --include/--exclude); None: all of it."""

    def __post_init__(self):
        check_use_direct(self.use_direct)
        if self.trust_options and self.drop_options:
            raise ValueError("trust_options and drop_options exclude each other")


def restore(engine: Engine, repo: Repository, refs: list[str], target: str | None = None, *,
            restore_all: bool = False, host: str | None = None,
            options: RestoreOptions = RestoreOptions(),
            progress: ProgressFactory = no_progress,
            announce: Callable[[str], None] = lambda message: None) -> RestoreResult:
    """Restore each snapshot ref (an id, or a volume name for its newest snapshot) into a
    fresh volume (named `target`, if given), as `options` say.

    With `restore_all`, the newest snapshot of every volume in the repository is
    restored, and targets that are not empty (or are in use) are skipped, not failed.
    With `host`, only snapshots made on that host are considered. `announce` tells the
    user, as it happens, of volumes created on trusted driver options and of safety
    snapshots. A non-empty volume that `force` replaces is first checked for room (where
    the engine's volume area is visible here).
    """
    repo.check_secrets(reading=True)  # one error, before any volume is made or replaced
    if restore_all:
        refs = repo.volumes(host)
        if not refs:
            repo.require_repository()
            of_host = f" from host {host}" if host is not None else ""
            raise NotFound(f"no snapshots{of_host} in repository {repo.describe()}")
    engine.prepare_helpers()
    outcomes = []
    for ref in refs:
        outcome = VolumeRestore(target or ref, "restored")
        try:
            manifest = repo.reveal(resolve_ref(repo, ref, host))  # labels, options: sealed?
            outcome.volume, outcome.snapshot = target or manifest.volume, manifest.snapshot
            reader = reader_for(repo, manifest, options.paths)  # NotFound here, before any volume
            outcome.partial = reader.entries is not None
            spec = VolumeSpec(manifest.driver, manifest.driver_options, manifest.labels)
            if options.drop_options:
                spec = VolumeSpec("local", {}, manifest.labels)
            outcome.driver, outcome.driver_options = spec.driver, redact_options(spec.options)
            outcome.external_storage = check_storage(
                outcome.volume, spec, options.trust_options, announce,
                way_out=", or --drop-driver-options for a plain local volume")
            _restore_one(engine, repo, manifest, spec, outcome, options, progress, announce,
                         reader)
        except (TargetNotEmpty, UntrustedStorage) as e:
            if not restore_all:
                outcome.failure(e)
            else:
                outcome.status, outcome.message = "skipped", str(e)
        except Exception as e:  # any error (Unexpected if not ours): the next ref still runs
            outcome.failure(e)
        outcomes.append(outcome)
    return RestoreResult(repo.describe(), outcomes)


def _restore_one(engine: Engine, repo: Repository, manifest: Manifest, spec: VolumeSpec,
                 outcome: VolumeRestore, options: RestoreOptions, progress: ProgressFactory,
                 announce: Callable[[str], None], reader: Reader) -> None:
    started = time.monotonic()

    def before_replacing(existing: VolumeInfo) -> None:
        """Nothing a restore replaces may be lost: the snapshot must check out and fit, and
        the old contents are kept as a safety snapshot before the volume is removed."""
        _check_space(engine, existing, spec, manifest, reader)
        reader.unpacker().drain()
        if options.safety:
            outcome.safety_snapshot = _safety_snapshot(engine, repo, existing.name, manifest,
                                                       progress, options.use_direct)
            # said now, not only in the result: a run killed from here on prints no result
            announce(f"volume {existing.name}: old contents saved as safety snapshot "
                     f"{outcome.safety_snapshot} (volbackup restore "
                     f"{outcome.safety_snapshot} brings them back)")
            _check_space(engine, existing, spec, manifest, reader)  # the repository may share the disk

    def write(target: Helper | str) -> None:
        outcome.via = "direct" if isinstance(target, str) else "engine"
        with progress(outcome.volume, reader.total) as update:
            unpacker = reader.unpacker(update)
            if isinstance(target, str):
                direct.import_(target, unpacker.chunks())  # `./` carries the root's metadata
            else:
                target.import_(DATA_PATH, unpacker.chunks())
                if target.engine.extractor_skips_root:  # dockerd, not Podman
                    again = unpacker.walker.metadata_tar(DATA_PATH.strip("/"))  # root, links
                    if again is not None:
                        target.import_("/", again)
                _warn_of_lost_times(unpacker.walker, outcome.volume, announce)
        outcome.bytes = unpacker.walker.bytes

    def directly(volume: VolumeInfo) -> str | None:
        """A fresh plain volume's directory, if GNU tar on this host can fill it."""
        if options.use_direct is False:
            return None
        return direct.directory_for(engine, plain_directory(volume))

    outcome.replaced = fill_fresh_volume(
        engine, outcome.volume, spec, options.force, write, before_replacing=before_replacing,
        lost_note="the snapshot itself had checked out; --no-safety-snapshot was given",
        directly=directly, kept_in=lambda: _kept_in(outcome.safety_snapshot))
    outcome.seconds = round(time.monotonic() - started, 3)


def _warn_of_lost_times(walker: TarWalker, volume: str,
                        announce: Callable[[str], None]) -> None:
    """Say so when the engine's extractor dated entries 1970-01-01 (times before 1970 or
    after 2262 are outside what it sets); GNU tar (--direct) keeps them."""
    low, high = EXTRACTOR_TIMES
    outside = [(t, name) for t, name in (walker.oldest, walker.newest)
               if name and not low <= t <= high]
    if outside:
        t, name = outside[0]
        announce(f"volume {volume}: the engine dated entries 1970-01-01 whose mtime it "
                 f"cannot set (before 1970 or after 2262-04-11, such as {shown(name)} of "
                 f"{utc_text(t)}); restore with --direct to keep them")


def resolve_ref(repo: Repository, ref: str, host: str | None) -> Manifest:
    """As Repository.resolve, but a volume name means its newest snapshot that is not a
    safety snapshot: restoring `NAME --force` twice must not bring back what the first
    restore replaced. Safety snapshots are restored by id (or when there is nothing else)."""
    manifest = repo.resolve(ref, host)
    if looks_like_id(ref) or manifest.safety_for is None:
        return manifest
    backups = [m for m in repo.snapshots(ref, host).snapshots if m.safety_for is None]
    return backups[-1] if backups else manifest


def _safety_snapshot(engine: Engine, repo: Repository, volume: str, replacing: Manifest,
                     progress: ProgressFactory, use_direct: bool | None) -> str:
    """Back `volume` up into `repo` before it is replaced; its snapshot id. A failure (a
    read-only repository, a full disk, a broken read) keeps the volume as it is."""
    try:
        # A backup like any other: under the shared lock, so a prune cannot take its
        # archive for a leftover of a killed run while it is written.
        with repo.lock(locking.SHARED, SAFETY_LOCK_WAIT, "restore --force"):
            (saved,) = backup(engine, repo, [volume], progress=progress, options=BackupOptions(
                retries=1, use_direct=None if use_direct is not False else False,
                safety_for=replacing.snapshot)).volumes
        if saved.failed:
            raise saved.error
    except VolbackupError as e:
        raise reworded(e, f"volume {volume} was not replaced: its safety snapshot failed "
                          f"({e}); nothing was removed (make the repository writable, or give "
                          f"--no-safety-snapshot to replace it without one)") from None
    return saved.snapshot


def _kept_in(snapshot: str | None) -> str | None:
    if snapshot is None:
        return None
    return (f"its previous contents are kept in safety snapshot {snapshot} "
            f"(volbackup restore {snapshot})")


def _check_space(engine: Engine, existing: VolumeInfo, spec: VolumeSpec,
                 manifest: Manifest, reader: Reader) -> None:
    """Refuse (InsufficientSpace) to replace `existing` when the snapshot cannot fit where
    the new volume's data will go: the filesystem of the engine's volume area, measured
    here when Engine.local_directory proves the directory is the engine's. Counts the
    space the old volume frees. Other storage (options, remote engines) is not checked."""
    if spec.driver != "local" or spec.options:
        return
    directory = engine.local_directory(existing.mountpoint)
    if directory is None:
        return
    try:
        fs = os.statvfs(directory)
    except OSError:
        return
    free = fs.f_bavail * fs.f_frsize
    freed = _used_bytes(directory)
    # tar bytes, plus up to one block of rounding and metadata per entry
    tar_bytes, entries = reader.size()
    needed = tar_bytes + entries * max(fs.f_bsize, 4096)
    if free + freed < needed:
        raise InsufficientSpace(
            f"volume {existing.name} was not replaced: {_part(reader)}snapshot "
            f"{manifest.snapshot} needs "
            f"about {_mib(needed)} and the filesystem of {directory} has {_mib(free)} free "
            f"(+{_mib(freed)} the old volume would free); nothing was removed (free some "
            f"space, or restore it elsewhere with --as NAME)")


def _part(reader: Reader) -> str:
    return "the part restored of " if reader.entries is not None else ""


def _used_bytes(directory: str) -> int:
    """Bytes allocated to the files under `directory` on its filesystem (hard links once)."""
    total, seen = 0, set()
    device = os.lstat(directory).st_dev
    for root, dirs, files in os.walk(directory):
        below = []
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_dev != device:
                continue  # a mount below: not freed with the volume
            if name in dirs:
                below.append(name)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
        dirs[:] = below
    return total


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"

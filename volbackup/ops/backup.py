"""Back up volumes (or a container's mounts) into a repository, one snapshot per volume."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import groupby

from volbackup import __version__, archive
from volbackup.engine import DATA_PATH, Engine, bind_volume_name
from volbackup.errors import NotFound, VolbackupError
from volbackup.manifest import Manifest
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.repository import Repository, new_snapshot_id


@dataclass
class Source:
    """One volume to back up and how a helper reaches it."""

    volume: str                     # the name its snapshot restores as
    path: str                       # directory inside the helper
    helper: dict                    # keyword arguments for Engine.helper
    driver: str = "local"
    driver_options: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    kind: str = "volume"
    container: str | None = None
    mount_path: str | None = None
    bind_path: str | None = None


@dataclass
class VolumeBackup(Outcome):
    bytes: int = 0
    stored_bytes: int = 0
    sha256: str | None = None
    entries: int = 0
    seconds: float = 0.0


@dataclass
class BackupResult:
    repository: str
    volumes: list[VolumeBackup]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "volumes")


def volume_sources(engine: Engine, names: list[str]) -> list[Source | VolumeBackup]:
    """Sources for named volumes; a missing volume becomes a failed outcome."""
    plan: list[Source | VolumeBackup] = []
    for name in names:
        try:
            info = engine.volume(name)
        except VolbackupError as e:
            plan.append(VolumeBackup(name, "failed").failure(e))
            continue
        plan.append(Source(name, DATA_PATH, {"volume": name}, info.driver, info.options,
                           info.labels))
    return plan


def container_sources(engine: Engine, container: str) -> list[Source]:
    """The container's volumes and binds, read through one `volumes_from` helper.

    A mount that contains another mount of the container is read from a helper of its
    own, so its snapshot does not swallow the nested volume's files. So is every mount
    of a container that has a tmpfs mount: the engine (20.10) refuses `volumes_from`
    on such a container.
    """
    name, mounts = engine.container_mounts(container)
    has_tmpfs = any(m.kind == "tmpfs" for m in mounts)
    mounts = [m for m in mounts if m.kind in ("volume", "bind")]
    sources = []
    for mount in mounts:
        nested = any(other.destination.startswith(mount.destination.rstrip("/") + "/")
                     for other in mounts if other is not mount)
        direct = nested or has_tmpfs
        path = DATA_PATH if direct else mount.destination
        if mount.kind == "volume":
            info = engine.volume(mount.name)
            helper = {"volume": mount.name} if direct else {"volumes_from": name}
            sources.append(Source(mount.name, path, helper, info.driver, info.options,
                                  info.labels, "volume", name, mount.destination))
        else:
            helper = {"bind": mount.source} if direct else {"volumes_from": name}
            sources.append(Source(bind_volume_name(name, mount.destination), path, helper,
                                  kind="bind", container=name, mount_path=mount.destination,
                                  bind_path=mount.source))
    return sources


def backup(engine: Engine, repo: Repository, volumes: list[str] | None = None,
           container: str | None = None, level: int = 3,
           progress: ProgressFactory = no_progress) -> BackupResult:
    engine.remove_stale_helpers()
    engine.ensure_helper_image()
    if container:
        plan = container_sources(engine, container)
        if not plan:
            raise NotFound(f"container {container} has no volumes or bind mounts to back up")
    else:
        plan = volume_sources(engine, volumes or [])
    outcomes: list[VolumeBackup] = [p for p in plan if isinstance(p, VolumeBackup)]
    sources = [p for p in plan if isinstance(p, Source)]
    for _, group in groupby(sources, key=lambda s: repr(sorted(s.helper.items()))):
        group = list(group)
        try:
            with engine.helper(**group[0].helper) as helper:
                for source in group:
                    outcomes.append(_backup_one(helper, repo, source, level, progress))
        except VolbackupError as e:  # the helper itself could not be made
            outcomes.extend(VolumeBackup(s.volume, "failed").failure(e) for s in group
                            if s.volume not in {o.volume for o in outcomes})
    order = {name: i for i, name in enumerate(p.volume for p in plan)}
    outcomes.sort(key=lambda o: order.get(o.volume, 0))
    return BackupResult(repo.describe(), outcomes)


def _backup_one(helper, repo: Repository, source: Source, level: int,
                progress: ProgressFactory) -> VolumeBackup:
    started = time.monotonic()
    created = datetime.now(timezone.utc)
    snapshot_id = new_snapshot_id(source.volume, created)
    outcome = VolumeBackup(source.volume, "ok", snapshot_id)
    try:
        with progress(source.volume, None) as update, \
                helper.export(source.path.rstrip("/") + "/.") as chunks, \
                repo.archive_writer(snapshot_id) as out:
            packed = archive.pack(chunks, out, level, update)
        seconds = round(time.monotonic() - started, 3)
        repo.commit(Manifest(
            snapshot=snapshot_id, volume=source.volume, driver=source.driver,
            driver_options=source.driver_options, labels=source.labels,
            created=created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            host=socket.gethostname(), tool_version=__version__,
            archive=repo.archive_name(snapshot_id), compression="zstd", level=level,
            bytes=packed.bytes, stored_bytes=packed.stored_bytes, sha256=packed.sha256,
            entries=packed.entries, seconds=seconds, source_kind=source.kind,
            source_container=source.container, mount_path=source.mount_path,
            bind_path=source.bind_path))
    except VolbackupError as e:
        outcome.snapshot = None
        return outcome.failure(e)
    outcome.bytes, outcome.stored_bytes = packed.bytes, packed.stored_bytes
    outcome.sha256, outcome.entries, outcome.seconds = packed.sha256, packed.entries, seconds
    return outcome

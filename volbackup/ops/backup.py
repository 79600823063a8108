"""Back up volumes (or a container's mounts) into a repository, one snapshot per volume.

Volumes that share containers are read as a group, with those containers quiet (see
volbackup.ops.quiesce) for exactly that time. A volume whose stream breaks (files that
change while read) is read again, a bounded number of times; a broken read never
becomes a snapshot.
"""

from __future__ import annotations

import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterator

from volbackup import __version__, archive, direct
from volbackup.engine import Engine
from volbackup.errors import IntegrityError, StreamBroken, VolbackupError
from volbackup.manifest import Manifest, utc_iso
from volbackup.ops.outcome import ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.quiesce import QuietOutcome, each_quietly
from volbackup.ops.select import Missing, Selection, Source, plan
from volbackup.repository import Repository, new_snapshot_id

Reader = Callable[[], AbstractContextManager[Iterator[bytes]]]  # opens a volume's tar stream


@dataclass
class VolumeBackup(QuietOutcome):
    bytes: int = 0
    stored_bytes: int = 0
    sha256: str | None = None
    entries: int = 0
    seconds: float = 0.0
    attempts: int = 0


@dataclass
class BackupResult:
    repository: str
    volumes: list[VolumeBackup]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "volumes")


def backup(engine: Engine, repo: Repository, volumes: list[str] | None = None,
           container: str | None = None, level: int = 3,
           progress: ProgressFactory = no_progress, *, selection: Selection | None = None,
           quiesce: str | None = None, stop_timeout: int = 10,
           retries: int = 2, use_direct: bool = False) -> BackupResult:
    """Back up the named `volumes` (plus `selection`), or every mount of `container`.

    `quiesce` is None, "stop" or "pause": what to do to the running containers that use
    a volume while it is read (the label volbackup.stop=true asks for "stop" too).
    `use_direct` reads plain local volumes and binds with GNU tar on this host, where it
    can (volbackup.direct); others still go through a helper.
    """
    use_direct = use_direct and engine.shares_host_paths
    engine.prepare_helpers()
    selection = selection or Selection()
    selection = replace(selection, names=list(volumes or []) + selection.names)
    chosen = plan(engine, container, selection)
    outcomes = [VolumeBackup(m.volume, "failed").failure(m.error)
                for m in chosen if isinstance(m, Missing)]
    sources = [p for p in chosen if isinstance(p, Source)]

    def work(source: Source) -> VolumeBackup:
        if use_direct and direct.available(source.host_path):
            return _backup_with_retries(lambda: direct.export(source.host_path), repo, source,
                                        level, progress, retries)
        with engine.helper(**source.helper) as helper:
            return _backup_with_retries(
                lambda: helper.export(source.path.rstrip("/") + "/."), repo, source, level,
                progress, retries)

    outcomes += each_quietly(engine, sources, quiesce, stop_timeout, work,
                             lambda s, e: VolumeBackup(s.volume, "failed").failure(e))
    order = {name: i for i, name in enumerate(p.volume for p in chosen)}
    outcomes.sort(key=lambda o: order.get(o.volume, 0))
    return BackupResult(repo.describe(), outcomes)


def _backup_with_retries(reader: Reader, repo: Repository, source: Source, level: int,
                         progress: ProgressFactory, retries: int) -> VolumeBackup:
    """Read again when the stream broke (files changed while read), up to `retries` times."""
    broken: list[str] = []
    for attempt in range(1, retries + 2):
        outcome = _backup_one(reader, repo, source, level, progress)
        outcome.attempts = attempt
        if not (outcome.failed and isinstance(outcome.error, (IntegrityError, StreamBroken))):
            break
        broken.append(f"attempt {attempt}: {outcome.message}")
    if broken and not outcome.failed:
        outcome.message = f"read again after a broken stream ({'; '.join(broken)})"
    elif broken and len(broken) > 1:
        outcome.message = f"every read broke: {'; '.join(broken)}"
    return outcome


def _backup_one(reader: Reader, repo: Repository, source: Source, level: int,
                progress: ProgressFactory) -> VolumeBackup:
    started = time.monotonic()
    created = datetime.now(timezone.utc)
    snapshot_id = new_snapshot_id(source.volume, created)
    outcome = VolumeBackup(source.volume, "ok", snapshot_id)
    try:
        # The reader ends inside the writer: an error it reports on closing (GNU tar's
        # exit code) discards the archive instead of leaving it in the repository.
        with progress(source.volume, None) as update, \
                repo.archive_writer(snapshot_id) as out, \
                reader() as chunks:
            packed = archive.pack(chunks, out, level, update)
        seconds = round(time.monotonic() - started, 3)
        repo.commit(Manifest(
            snapshot=snapshot_id, volume=source.volume, driver=source.driver,
            driver_options=source.driver_options, labels=source.labels,
            created=utc_iso(created, "milliseconds"),
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

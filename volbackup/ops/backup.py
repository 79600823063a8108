"""Back up volumes (or a container's mounts) into a repository, one snapshot per volume.

Volumes that share containers are read as a group, with those containers quiet (see
volbackup.ops.quiesce) for exactly that time. A volume whose stream breaks (files that
change while read) is read again, a bounded number of times; a broken read never
becomes a snapshot.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import groupby

from volbackup import __version__, archive
from volbackup.engine import ContainerInfo, Engine, Helper
from volbackup.errors import IntegrityError, StreamBroken, VolbackupError
from volbackup.manifest import Manifest
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.quiesce import Quiet, quiet
from volbackup.ops.select import Missing, Selection, Source, plan
from volbackup.repository import Repository, new_snapshot_id


@dataclass
class VolumeBackup(Outcome):
    bytes: int = 0
    stored_bytes: int = 0
    sha256: str | None = None
    entries: int = 0
    seconds: float = 0.0
    attempts: int = 0
    hooks: list[dict] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)


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
           retries: int = 2) -> BackupResult:
    """Back up the named `volumes` (plus `selection`), or every mount of `container`.

    `quiesce` is None, "stop" or "pause": what to do to the running containers that use
    a volume while it is read (the label volbackup.stop=true asks for "stop" too).
    """
    engine.remove_stale_helpers()
    engine.ensure_helper_image()
    selection = selection or Selection()
    selection = replace(selection, names=list(volumes or []) + selection.names)
    chosen = plan(engine, container, selection)
    outcomes = [VolumeBackup(m.volume, "failed").failure(m.error)
                for m in chosen if isinstance(m, Missing)]
    sources = [p for p in chosen if isinstance(p, Source)]
    users = {s.volume: _users(engine, s) for s in sources}
    for containers, group in _groups(sources, users):
        outcomes.extend(_backup_group(engine, repo, group, containers, users, level, progress,
                                      quiesce, stop_timeout, retries))
    order = {name: i for i, name in enumerate(p.volume for p in chosen)}
    outcomes.sort(key=lambda o: order.get(o.volume, 0))
    return BackupResult(repo.describe(), outcomes)


def _users(engine: Engine, source: Source) -> list[ContainerInfo]:
    if source.kind == "volume":
        return engine.containers_of(source.volume)
    return [engine.container(source.container)]  # a bind mount: its own container


def _groups(sources: list[Source], users: dict[str, list[ContainerInfo]]):
    """Sources that share a container go together, with the union of their containers."""
    groups: list[tuple[dict[str, ContainerInfo], list[Source]]] = []
    for source in sources:
        mine = {c.id: c for c in users[source.volume]}
        joined = [g for g in groups if set(g[0]) & set(mine)]
        for g in joined:
            groups.remove(g)
            mine.update(g[0])
        members = [s for g in joined for s in g[1]] + [source]
        groups.append((mine, members))
    return [(list(containers.values()), members) for containers, members in groups]


def _backup_group(engine: Engine, repo: Repository, group: list[Source],
                  containers: list[ContainerInfo], users: dict[str, list[ContainerInfo]],
                  level: int, progress: ProgressFactory, quiesce: str | None,
                  stop_timeout: int, retries: int) -> list[VolumeBackup]:
    done: list[VolumeBackup] = []
    state: Quiet | None = None
    try:
        with quiet(engine, containers, quiesce, stop_timeout) as state:
            for _, same_helper in groupby(group, key=lambda s: repr(sorted(s.helper.items()))):
                same_helper = list(same_helper)
                with engine.helper(**same_helper[0].helper) as helper:
                    for source in same_helper:
                        failed_hook = next((state.pre_failed[c.name] for c in users[source.volume]
                                            if c.name in state.pre_failed), None)
                        if failed_hook is not None:
                            done.append(VolumeBackup(source.volume, "failed").failure(
                                VolbackupError(
                                    f"skipped: the pre-hook of container {failed_hook.container} "
                                    f"failed with exit code {failed_hook.exit_code}")))
                        else:
                            done.append(_backup_with_retries(helper, repo, source, level,
                                                             progress, retries))
    except VolbackupError as e:  # a helper could not be made, or a container not put back
        finished = {o.volume for o in done}
        done.extend(VolumeBackup(s.volume, "failed").failure(e) for s in group
                    if s.volume not in finished)
        for outcome in done:
            if not outcome.failed:
                outcome.failure(type(e)(f"snapshot {outcome.snapshot} was made, but {e}"))
    for outcome in done:
        names = {c.name for c in users.get(outcome.volume, [])}
        if state is not None:
            outcome.hooks = [h.as_dict() for h in state.hooks if h.container in names]
            outcome.stopped = [n for n in state.stopped if n in names]
            outcome.paused = [n for n in state.paused if n in names]
    return done


def _backup_with_retries(helper: Helper, repo: Repository, source: Source, level: int,
                         progress: ProgressFactory, retries: int) -> VolumeBackup:
    """Read again when the stream broke (files changed while read), up to `retries` times."""
    broken: list[str] = []
    for attempt in range(1, retries + 2):
        outcome = _backup_one(helper, repo, source, level, progress)
        outcome.attempts = attempt
        if not (outcome.failed and isinstance(outcome.error, (IntegrityError, StreamBroken))):
            break
        broken.append(f"attempt {attempt}: {outcome.message}")
    if broken and not outcome.failed:
        outcome.message = f"read again after a broken stream ({'; '.join(broken)})"
    elif broken and len(broken) > 1:
        outcome.message = f"every read broke: {'; '.join(broken)}"
    return outcome


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

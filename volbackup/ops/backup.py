"""Back up volumes (or a container's mounts) into a repository, one snapshot per volume.

Volumes that share containers are read as a group, with those containers quiet (see
volbackup.ops.quiesce) for exactly that time. A volume whose stream breaks (files that
change while read) is read again, a bounded number of times; a broken read never
becomes a snapshot.
"""

from __future__ import annotations

import socket
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

from volbackup import __version__
from volbackup.docker import direct
from volbackup.docker.engine import Engine
from volbackup.errors import (BadPattern, IntegrityError, NotFound, StreamBroken, VolbackupError,
                              reworded)
from volbackup.ops import filescache
from volbackup.ops.filescache import CacheCounts
from volbackup.ops.options import check_quiesce, check_use_direct, check_whole
from volbackup.ops.outcome import ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.parallel import interruptible
from volbackup.ops.quiesce import QuietOutcome, each_quietly, users_of
from volbackup.ops.select import Missing, Selection, Skipped, Source, plan
from volbackup.repo import parentrecord
from volbackup.repo.manifest import LEVELS, Manifest
from volbackup.repo.parentfiles import ParentRun
from volbackup.stream.exclude import Matcher, Refetch, filter_tar, parse_patterns, split_label
from volbackup.repo.repository import Repository, new_snapshot_id
from volbackup.timefmt import utc_iso


EXCLUDE_LABEL = "volbackup.exclude"  # on a volume or a container: patterns to leave out


@dataclass
class Stream:
    """A volume's tar stream, and which way it is read: "direct" or "engine"."""

    chunks: Iterator[bytes]
    via: str
    refetch: Refetch | None = None  # one file of the volume again (volbackup.stream.exclude)
    cache: CacheCounts | None = None  # planned by the files cache (it applied the excludes)


@dataclass(frozen=True)
class FilesCache:
    """What a direct read plans with (volbackup.ops.filescache): the parent snapshot, its
    reusable runs (afresh for each read), and the store's index."""

    parent: str | None
    parent_runs: Callable[[], Iterable[ParentRun]]
    indexed: Callable[[str], bool]
    settle: float
    record: str | None = None    # where this host keeps its parent record (encrypted)
    problem: str | None = None   # why the parent's files cannot be used


Reader = Callable[[], AbstractContextManager[Stream]]  # opens a volume's tar stream


@dataclass
class VolumeBackup(QuietOutcome):
    bytes: int = 0
    stored_bytes: int = 0
    sha256: str | None = None
    entries: int = 0
    seconds: float = 0.0
    attempts: int = 0
    via: str | None = None        # "direct" (GNU tar here) or "engine" (a helper)
    chunks: int | None = None     # chunked repository: chunks in the snapshot ...
    new_chunks: int | None = None  # ... and how many of them it stored (others were there)
    files_cache: dict | None = None  # read directly into a packed repository: CacheCounts


@dataclass
class BackupResult:
    repository: str
    volumes: list[VolumeBackup]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "volumes")


@dataclass(frozen=True)
class BackupOptions:
    """How `backup` reads and stores the volumes: what its caller chooses (`backup --help`
    and the keys of a `volbackup run` job offer the same). Checked when made (ValueError)."""

    level: int = 3
    """zstd compression level: 1 (fastest) to 22 (smallest); 0 is zstd's default (3)."""
    quiesce: str | None = None
    """None, "stop" or "pause": what to do to the running containers that use a volume
    while it is read (the label volbackup.stop=true asks for "stop" too)."""
    stop_timeout: int = 10
    """Seconds a stopped container gets before the engine kills it."""
    retries: int = 2
    """How many times a volume is read again when its stream breaks (files changed)."""
    use_direct: bool | None = None
    """How plain local volumes and binds are read (volbackup.docker.direct). None: with GNU
    tar on this host where it can, when no running container uses the volume at that
    moment; True: also while containers run; False: never."""
    jobs: int = 1
    """How many volumes (groups of volumes sharing containers) are read at once."""
    exclude_paths: tuple[str, ...] = ()
    """Patterns of paths inside each volume to leave out, with those of the
    volbackup.exclude label of the volume and of the containers that use it
    (volbackup.stream.exclude); a volume whose labels hold a bad one fails, unread."""
    safety_for: str | None = None
    """Recorded in the manifests: the snapshot whose restore replaces these volumes
    (restore's safety snapshots; volbackup.ops.restore)."""
    read_all: bool = False
    """Read every file: no files cache (volbackup.ops.filescache). By default a direct
    read into a packed repository takes a file whose stat data matches the parent
    snapshot's record of it from that snapshot, without reading it."""
    parent: str | None = None
    """The snapshot the files cache compares with (a reference as `restore` takes);
    default: the newest snapshot of the same volume from this host."""
    settle: float = filescache.SETTLE
    """Seconds: a file whose mtime or ctime is this recent when the backup starts is
    not trusted by the next one's files cache (it is read again)."""
    cache_dir: str | None = None
    """Where a backup host of an encrypted repository keeps its parent records
    (volbackup.repo.parentrecord); default: parentrecord.cache_root()."""

    def __post_init__(self):
        object.__setattr__(self, "exclude_paths", tuple(self.exclude_paths))
        check_whole("level", self.level, LEVELS.start, LEVELS.stop - 1)
        check_quiesce(self.quiesce, self.stop_timeout)
        check_whole("retries", self.retries, 0)
        check_whole("jobs", self.jobs, 1)
        check_use_direct(self.use_direct)
        if self.settle < 0:
            raise ValueError(f"settle must be 0 or more, not {self.settle!r}")
        if self.parent is not None and self.read_all:
            raise ValueError("parent and read_all exclude each other")


def backup(engine: Engine, repo: Repository, volumes: list[str] | None = None,
           container: str | None = None, *, selection: Selection | None = None,
           options: BackupOptions = BackupOptions(),
           progress: ProgressFactory = no_progress) -> BackupResult:
    """Back up the named `volumes` (plus those `selection` finds), or every mount of
    `container`, as `options` say."""
    repo.check_secrets(reading=False)  # before a container is stopped or a volume read
    engine.prepare_helpers()
    selection = selection or Selection()
    selection = replace(selection, names=list(volumes or []) + selection.names)
    chosen = plan(engine, container, selection)
    outcomes = [VolumeBackup(m.volume, "failed").failure(m.error)
                for m in chosen if isinstance(m, Missing)]
    outcomes += [VolumeBackup(m.volume, "skipped", message=m.reason)
                 for m in chosen if isinstance(m, Skipped)]
    sources = [p for p in chosen if isinstance(p, Source)]
    matchers: dict[str, Matcher] = {}
    for source in list(sources):
        try:
            matchers[source.volume] = Matcher(
                list(options.exclude_paths) + label_patterns(engine, source))
        except BadPattern as e:
            outcomes.append(VolumeBackup(source.volume, "failed").failure(e))
            sources.remove(source)

    progress = interruptible(progress)  # a worker of --jobs stops at its next chunk

    def work(source: Source) -> VolumeBackup:
        cache = _files_cache(repo, source, options)
        matcher = matchers[source.volume]
        return _backup_with_retries(
            lambda: _open_stream(engine, source, options.use_direct, matcher, cache),
            repo, source, options, progress, matcher, cache.record if cache else None)

    outcomes += each_quietly(engine, sources, options.quiesce, options.stop_timeout, work,
                             lambda s, e: VolumeBackup(s.volume, "failed").failure(e),
                             options.jobs)
    order = {name: i for i, name in enumerate(p.volume for p in chosen)}
    outcomes.sort(key=lambda o: order.get(o.volume, 0))
    return BackupResult(repo.describe(), outcomes)


def _files_cache(repo: Repository, source: Source, options: BackupOptions
                 ) -> FilesCache | None:
    """The files cache of a direct read of `source`, where it applies: into a packed
    repository (tree snapshots), a volume or a directory (not a bind of one file)."""
    if not repo.layout.trees or source.file_name:
        return None
    host = socket.gethostname()
    if not repo.can_read_catalogues():
        return _recorded_parent(repo, source, options, host)
    parent = None
    if options.parent is not None:
        parent = repo.resolve(options.parent)
    elif not options.read_all:
        try:
            parent = repo.newest(source.volume, host)
        except NotFound:
            parent = None
    if parent is None:
        return FilesCache(None, lambda: (), repo.blobs.indexed, options.settle)
    return FilesCache(parent.snapshot, lambda: repo.reader.reusable_runs(parent),
                      repo.blobs.indexed, options.settle)


def _recorded_parent(repo: Repository, source: Source, options: BackupOptions, host: str
                     ) -> FilesCache:
    """An encrypted repository's backup host, holding no identity, cannot read its parent's
    sealed catalogue: it takes the parent's files from the record it kept of that snapshot
    (volbackup.repo.parentrecord), if it kept one of the very snapshot that is the parent.
    Anything else (no record, another snapshot, a damaged record): every file is read."""
    assert repo.config is not None
    path = parentrecord.record_path(options.cache_dir or parentrecord.cache_root(),
                                    repo.config.id, source.volume, host)
    none = FilesCache(None, lambda: (), repo.blobs.indexed, options.settle, path)
    if options.read_all:
        return none
    try:
        parent = repo.resolve(options.parent) if options.parent is not None \
            else repo.newest(source.volume, host)
    except NotFound:
        if options.parent is not None:
            raise               # as in a plain repository: a named parent must exist
        return none
    try:
        record = parentrecord.open_record(path)
    except (VolbackupError, OSError) as e:
        return replace(none, problem=f"parent record not used: {e}")
    if record is None or record.snapshot != parent.snapshot:
        return none
    return FilesCache(parent.snapshot, record.runs, repo.blobs.indexed, options.settle, path)


@contextmanager
def _open_stream(engine: Engine, source: Source, use_direct: bool | None,
                 matcher: Matcher | None = None,
                 cache: FilesCache | None = None) -> Iterator[Stream]:
    """The tar stream of `source`, by GNU tar here or through a helper; decided for each
    attempt, since a container may have started (or stopped) since the last one. With
    `cache`, a direct read is planned by the files cache."""
    # A bind of one file: GNU tar reads the directory holding it, that file only.
    find = direct.file_directory_for if source.file_name else direct.directory_for
    directory = find(engine, source.host_path) if use_direct is not False else None
    # Podman's archive endpoint loses owners (OwnersLost): GNU tar, also while containers run
    if directory and (use_direct or not engine.archive_keeps_owners
                      or not _written_to(engine, source)):
        if cache is not None:
            with filescache.planned_export(directory, cache.parent, cache.parent_runs(),
                                           cache.indexed, matcher, cache.settle,
                                           problem=cache.problem) as (chunks, counts):
                yield Stream(chunks, "direct", cache=counts)
            return
        with direct.export(directory, only=source.file_name) as chunks:
            yield Stream(chunks, "direct", lambda path: direct.export(directory, only=path))
        return
    with engine.helper(**source.helper) as helper, \
            helper.export(source.path.rstrip("/") + "/.") as chunks:
        yield Stream(chunks, "engine",
                     lambda path: helper.export(source.path.rstrip("/") + "/" + path))


def _record_writer(path: str, volume: str) -> parentrecord.RecordWriter | None:
    """A writer of the parent record, or None where the cache directory cannot be written
    (the backup goes on without one: the next one reads every file)."""
    try:
        return parentrecord.RecordWriter(path, volume)
    except OSError:
        return None


def _publish(record: parentrecord.RecordWriter, snapshot: str, outcome: VolumeBackup
             ) -> None:
    """The snapshot exists: its record takes the place of the last one. A record that
    cannot be written fails nothing; the result says so (the next backup reads all)."""
    try:
        record.publish(snapshot)
    except OSError as e:
        record.discard()
        if outcome.files_cache is not None:
            outcome.files_cache["problem"] = f"parent record not written: {e}"


def label_patterns(engine: Engine, source: Source) -> list[str]:
    """The exclude patterns of the volbackup.exclude label on `source`'s volume and on the
    containers that use it (a bind mount: its container). A bad one raises BadPattern,
    saying whose label holds it."""
    labelled = [(f"volume {source.volume}", source.labels)] if source.kind == "volume" else []
    labelled += [(f"container {c.name}", c.labels) for c in users_of(engine, source)]
    patterns = []
    for whose, labels in labelled:
        found = split_label(labels.get(EXCLUDE_LABEL, ""))
        try:
            parse_patterns(found)
        except BadPattern as e:
            raise reworded(e, f"label {EXCLUDE_LABEL} of {whose}: {e}") from None
        patterns += found
    return patterns


def _written_to(engine: Engine, source: Source) -> bool:
    """True when a container that may write to `source` runs (paused ones cannot write)."""
    return any(c.state in ("running", "restarting") for c in users_of(engine, source))


def _backup_with_retries(reader: Reader, repo: Repository, source: Source,
                         options: BackupOptions, progress: ProgressFactory,
                         matcher: Matcher | None = None, record: str | None = None
                         ) -> VolumeBackup:
    """Read again when the stream broke (files changed while read), up to `retries` times.
    `record`: where the snapshot's parent record goes (an encrypted repository's)."""
    broken: list[str] = []
    for attempt in range(1, options.retries + 2):
        outcome = _backup_one(reader, repo, source, options, progress, matcher, record)
        outcome.attempts = attempt
        if not (outcome.failed and isinstance(outcome.error, (IntegrityError, StreamBroken))):
            break
        broken.append(f"attempt {attempt}: {outcome.message}")
    if broken and not outcome.failed:
        outcome.message = f"read again after a broken stream ({'; '.join(broken)})"
    elif broken and len(broken) > 1:
        outcome.message = f"every read broke: {'; '.join(broken)}"
    return outcome


def _backup_one(reader: Reader, repo: Repository, source: Source, options: BackupOptions,
                progress: ProgressFactory, matcher: Matcher | None = None,
                record_path: str | None = None) -> VolumeBackup:
    started = time.monotonic()
    created = datetime.now(timezone.utc)
    snapshot_id = new_snapshot_id(source.volume, created)
    outcome = VolumeBackup(source.volume, "ok", snapshot_id)
    record, committed = None, False
    try:
        if record_path is not None:
            record = _record_writer(record_path, source.volume)
        # The reader ends inside the writer: an error it reports on closing (GNU tar's
        # exit code) discards the archive instead of leaving it in the repository.
        with progress(source.volume, None) as update, \
                repo.snapshot_writer(snapshot_id) as writer, \
                reader() as stream:
            outcome.via = stream.via
            chunks = filter_tar(stream.chunks, matcher, stream.refetch) \
                if matcher and stream.cache is None else stream.chunks
            packed = writer.pack(chunks, options.level, update, record=record)
        fields = writer.fields(packed)
        seconds = round(time.monotonic() - started, 3)
        repo.commit(Manifest(
            snapshot=snapshot_id, volume=source.volume, driver=source.driver,
            driver_options=source.driver_options, labels=source.labels,
            created=utc_iso(created, "milliseconds"),
            host=socket.gethostname(), tool_version=__version__,
            archive=writer.archive, compression="zstd", level=options.level,
            bytes=packed.bytes, stored_bytes=packed.stored_bytes, sha256=packed.sha256,
            entries=packed.entries, seconds=seconds, source_kind=source.kind,
            source_container=source.container, mount_path=source.mount_path,
            bind_path=source.bind_path, safety_for=options.safety_for,
            excluded=matcher.patterns if matcher else None, **fields))
        committed = True
    except Exception as e:  # any error, also disk full: this volume failed, the next runs
        outcome.snapshot = None
        return outcome.failure(e)
    finally:
        if record is not None and not committed:
            record.discard()
    outcome.bytes, outcome.stored_bytes = packed.bytes, packed.stored_bytes
    outcome.sha256, outcome.entries, outcome.seconds = packed.sha256, packed.entries, seconds
    outcome.chunks, outcome.new_chunks = fields.get("chunks"), fields.get("new_chunks")
    if stream.cache is not None:
        outcome.files_cache = stream.cache.as_dict()
    if fields.get("data") is not None:  # a tree snapshot: its data blobs
        outcome.chunks = fields["data"]["blobs"]
    if record is not None:
        _publish(record, snapshot_id, outcome)
    return outcome

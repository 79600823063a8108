"""Move volumes from one Docker engine to another, streamed through this process.

The source's tar stream goes straight into a fresh volume on the target (see
volbackup.ops.fill): no intermediate file. It is gzip-compressed on the wire only on a
side reached over the network, where it pays; local sockets carry plain tar.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from volbackup.docker import direct
from volbackup.docker.engine import Engine
from volbackup.docker.helpers import DATA_PATH, Helper
from volbackup.errors import IntegrityError, OwnersLost, UntrustedStorage, VolbackupError
from volbackup.ops.fill import VolumeSpec, check_storage, fill_fresh_volume
from volbackup.ops.options import check_quiesce
from volbackup.ops.outcome import ProgressFactory, no_progress, raise_for_failures
from volbackup.ops.quiesce import QuietOutcome, each_quietly
from volbackup.ops.select import Missing, Selection, Skipped, Source, plain_directory, plan
from volbackup.stream.tarstream import TarWalker, digest_differences

WIRE_CHOICES = ("auto", "gzip", "none")


@dataclass
class VolumeMigration(QuietOutcome):
    source_volume: str | None = None
    bytes: int = 0
    entries: int = 0
    seconds: float = 0.0
    replaced: bool = False
    verified: bool = False


@dataclass
class MigrateResult:
    source: str
    target: str
    volumes: list[VolumeMigration]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.volumes, "volumes")


@dataclass(frozen=True)
class MigrateOptions:
    """How `migrate` reads and fills the volumes: what its caller chooses (`migrate --help`
    offers the same). Checked when made (ValueError)."""

    force: bool = False
    """Replace a target volume that exists and is not empty (removed, then made again)."""
    verify: bool = False
    """Read each new volume back and compare every entry's digest with what was sent."""
    wire: str = "auto"
    """gzip the stream on the wire: "auto" (only to or from an engine reached over the
    network, where it pays), "gzip" (always) or "none"."""
    quiesce: str | None = None
    """None, "stop" or "pause": what to do to the running containers that use a volume on
    the source while it is read (and the volbackup.* hooks), exactly as for backup."""
    stop_timeout: int = 10
    """Seconds a stopped container gets before the engine kills it."""
    trust_options: bool = False
    """Create volumes whose driver options keep data outside the target engine's volume
    area (a host path, a device, NFS, a plugin): a path on the source host names another
    directory on the target host, and the source engine may not be the user's own.
    Without it they are refused; with it they are `announce`d before creation."""

    def __post_init__(self):
        if self.wire not in WIRE_CHOICES:
            raise ValueError(f"wire must be one of {', '.join(WIRE_CHOICES)}, not {self.wire!r}")
        check_quiesce(self.quiesce, self.stop_timeout)


def migrate(source: Engine, target: Engine, volumes: list[str] | None = None,
            container: str | None = None, target_name: str | None = None, *,
            selection: Selection | None = None, options: MigrateOptions = MigrateOptions(),
            progress: ProgressFactory = no_progress,
            announce: Callable[[str], None] = lambda message: None) -> MigrateResult:
    """Copy each volume (plus those `selection` finds), or a container's volumes, to
    `target` as fresh volumes there (named `target_name`, if given), as `options` say.
    `announce` tells the user of volumes created on trusted driver options."""
    _check_owners_readable(source, target, options.verify)
    for engine in (source, target):
        engine.prepare_helpers()
    selection = selection or Selection()
    selection = replace(selection, names=list(volumes or []) + selection.names)
    chosen = plan(source, container, selection, doing="migrate")
    gzip_from = options.wire == "gzip" or (options.wire == "auto" and source.is_remote)
    gzip_to = options.wire == "gzip" or (options.wire == "auto" and target.is_remote)
    outcomes = [VolumeMigration(target_name or m.volume, "failed", source_volume=m.volume)
                .failure(m.error) for m in chosen if isinstance(m, Missing)]
    outcomes += [VolumeMigration(target_name or m.volume, "skipped", source_volume=m.volume,
                                 message=m.reason) for m in chosen if isinstance(m, Skipped)]

    def work(item: Source) -> VolumeMigration:
        outcome = VolumeMigration(target_name or item.volume, "migrated", source_volume=item.volume)
        try:
            _migrate_one(source, target, item, outcome, options, gzip_from, gzip_to, progress)
        except Exception as e:  # any error (Unexpected if not ours): the next one still runs
            outcome.failure(e)
        return outcome

    def failed(item: Source, error: VolbackupError) -> VolumeMigration:
        return VolumeMigration(target_name or item.volume, "failed",
                               source_volume=item.volume).failure(error)

    sources = []
    for item in (p for p in chosen if isinstance(p, Source)):
        try:  # before any container is stopped or anything is created
            check_storage(target_name or item.volume,
                          VolumeSpec(item.driver, item.driver_options, {}),
                          options.trust_options, announce)
            sources.append(item)
        except UntrustedStorage as e:
            outcomes.append(failed(item, e))
    outcomes += each_quietly(source, sources, options.quiesce, options.stop_timeout, work,
                             failed)
    order = {name: i for i, name in enumerate(p.volume for p in chosen)}
    outcomes.sort(key=lambda o: order.get(o.source_volume, 0))
    return MigrateResult(source.where, target.where, outcomes)


def _migrate_one(source: Engine, target: Engine, item: Source, outcome: VolumeMigration,
                 options: MigrateOptions, gzip_from: bool, gzip_to: bool,
                 progress: ProgressFactory) -> None:
    started = time.monotonic()
    sent = TarWalker(digest=options.verify)

    def write(helper: Helper) -> None:
        with progress(outcome.volume, None) as update, \
                _read_source(source, item, gzip_from) as chunks:

            def checked():
                for chunk in chunks:
                    sent.feed(chunk)
                    update(len(chunk))
                    yield chunk
                sent.finish()  # a broken source stream fails the put, before it ends

            helper.import_(DATA_PATH, checked(), gzip_wire=gzip_to)
        if target.extractor_skips_root:  # dockerd, not Podman
            again = sent.metadata_tar(DATA_PATH.strip("/"))  # the root, setuid hard links
            if again is not None:
                helper.import_("/", again)
        if options.verify:
            _verify(target, helper, sent, outcome.volume, gzip_to)
            outcome.verified = True

    spec = VolumeSpec(item.driver, item.driver_options, item.labels)
    outcome.replaced = fill_fresh_volume(
        target, outcome.volume, spec, options.force, write,
        lost_note="the source volume still holds the data; run the migration again")
    outcome.bytes, outcome.entries = sent.bytes, sent.entries
    outcome.seconds = round(time.monotonic() - started, 3)


def _check_owners_readable(source: Engine, target: Engine, verify: bool) -> None:
    """Before anything is made: a Podman source is read, and a Podman target read back
    (--verify), by GNU tar on this host (_read_source); refuse at once where that cannot
    be, rather than fail each volume (or, for --verify, after writing it)."""
    for engine, role in ((source, "source"), (target, "target")):
        if role == "target" and not verify:
            continue
        lacking = direct.owners_unreadable(engine)
        if lacking:
            why = " (--verify reads the new volumes back)" if role == "target" else ""
            raise OwnersLost(
                f"the {role} engine at {engine.where} is Podman, whose archive endpoint gives "
                f"every file the helper's owner{why}; its volumes are read with GNU tar on "
                f"its host, and this one lacks {', '.join(lacking)}: run volbackup there, "
                f"as root (rootless Podman: inside `podman unshare`); nothing was changed")


@contextmanager
def _read_source(source: Engine, item: Source, gzip_wire: bool) -> Iterator[Iterator[bytes]]:
    """The tar stream of `item` on `source`: through a helper, or, from an engine whose
    archive endpoint loses owners (Podman), by GNU tar on this host where that is the
    engine's own directory (docker/direct.py; elsewhere the helper refuses: OwnersLost)."""
    if not source.archive_keeps_owners:
        find = direct.file_directory_for if item.file_name else direct.directory_for
        directory = find(source, item.host_path)
        if directory:
            with direct.export(directory, only=item.file_name, sort=True) as chunks:
                yield chunks
            return
    with source.helper(**item.helper) as reader, \
            reader.export(item.path.rstrip("/") + "/.", gzip_wire=gzip_wire) as chunks:
        yield chunks


def _verify(target: Engine, helper: Helper, sent: TarWalker, name: str,
            gzip_wire: bool) -> None:
    """Read the new volume back and compare every entry's digest with what was sent (on
    an engine whose archive endpoint loses owners, by GNU tar where it can: _read_source)."""
    back = TarWalker(digest=True)
    if target.archive_keeps_owners:
        reading = helper.export(DATA_PATH + "/.", gzip_wire=gzip_wire)
    else:
        volume = target.volume(name)
        reading = _read_source(target, Source(name, DATA_PATH, {"volume": name},
                                              host_path=plain_directory(volume)), gzip_wire)
    with reading as chunks:
        for chunk in chunks:
            back.feed(chunk)
    back.finish()
    differences = digest_differences(sent.digests, back.digests)
    if differences:
        raise IntegrityError(f"verification of volume {name} failed: "
                             + "; ".join(differences))

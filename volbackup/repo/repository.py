"""Snapshot naming and layout on top of a storage backend.

Layout: `snapshots/<volume>/<stamp>.json` (manifest), next to its data: an archive
`<stamp>.tar.zst`, or in a chunked repository (one with a `config`, made by `init`) a
chunk list `<stamp>.chunks` naming chunks under `chunks/` (volbackup.repo.chunked). The
snapshot id is `<volume>@<stamp>` and the stamp is `YYYYMMDDTHHMMSSZ-xxxx` (UTC time plus
a random suffix, so two runs in the same second, or two hosts, never collide). The data
is written first, the manifest last: a snapshot exists exactly when its manifest does.

The Repository owns its storage: locks, orphaned archives and unfinished writes are
reached through it, never through `repo.backend`, so that a different layout (a chunk
store) can change them in one place.
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, TypeVar

from volbackup.errors import (BlobMissing, ChunkMissing, IntegrityError, KeyProblem, NotFound,
                              RemovedWhileRead, RepositoryError, VolbackupError)
from volbackup.repo import catalogs, chunkcopy, chunked, crypto, locking, partial, sweep
from volbackup.repo.backends import Backend, BlobNotFound, Leftover, TempFile, open_backend
from volbackup.repo.blobstore import LooseChunkStore
from volbackup.repo.layout import ARCHIVE_SUFFIX, layout_for
from volbackup.repo.config import CONFIG_KEY, RepoConfig
from volbackup.repo.manifest import (STAMP, VOLUME_NAME, Manifest, RevealedManifest,
                                     parse_created)
from volbackup.repo.sealing import (IDENTITY_FILE_ENV, KEY_FILE_ENV, Keyring, Secrets,
                                    new_encryption)
from volbackup.stream import archive, catalog
from volbackup.stream.catalog import CatalogEntry, Selection
from volbackup.stream.archive import Packed, Progress, no_progress
from volbackup.stream.chunks import read_chunks

T = TypeVar("T")
PREFIX = "snapshots/"
LIST_SUFFIX = chunked.LIST_SUFFIX
MANIFEST_SUFFIX = ".json"
KEEP_SELECTED = 10_000  # selected entries kept from the first pass over a catalogue
_ID = re.compile(rf"(?P<volume>{VOLUME_NAME.pattern})@(?P<stamp>{STAMP})")
_SUFFIXES = (ARCHIVE_SUFFIX, LIST_SUFFIX, catalogs.ARCHIVE_SUFFIX, catalogs.LIST_SUFFIX)
_ARCHIVE_KEY = re.compile(rf"{PREFIX}(?P<volume>{VOLUME_NAME.pattern})/(?P<stamp>{STAMP})"
                          rf"(?P<suffix>{'|'.join(re.escape(s) for s in _SUFFIXES)})")


_MANIFEST_KEY = re.compile(rf"{PREFIX}(?P<volume>{VOLUME_NAME.pattern})/(?P<stamp>{STAMP})"
                          rf"{re.escape(MANIFEST_SUFFIX)}")


def new_snapshot_id(volume: str, created: datetime) -> str:
    return f"{volume}@{created.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def split_id(snapshot_id: str) -> tuple[str, str]:
    match = _ID.fullmatch(snapshot_id)
    if not match:
        raise NotFound(f"{snapshot_id!r} is not a snapshot id (VOLUME@YYYYMMDDTHHMMSSZ-xxxx)")
    return match["volume"], match["stamp"]


def _volume_of(key: str) -> str:
    """The volume directory a key under snapshots/ belongs to ('' for snapshots/ itself)."""
    return key[len(PREFIX):].split("/", 1)[0] if key.startswith(PREFIX) else ""


def looks_like_id(ref: str) -> bool:
    return "@" in ref


@dataclass
class Problem:
    """A manifest that could not be read, or (`snapshot` set) one that is not authentic."""

    volume: str
    message: str
    snapshot: str | None = None
    manifest: Manifest | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Orphan:
    """An archive or chunk list without a manifest: left by a run that failed or was killed
    between its data and its manifest. Never a snapshot; only keys named by volbackup count."""

    key: str
    volume: str
    started: datetime       # UTC, from its stamp: when its backup started
    size: int


@dataclass(frozen=True)
class UnfinishedWrite:
    """A write that never finished and takes space: an S3 multipart upload ("upload") or a
    directory repository's temp file `.NAME.tmp-PID-PLACE-xxxx` ("temp"). Never a blob."""

    key: str                # the upload's object key, or the temp file's own key
    kind: str               # "upload" or "temp"
    since: datetime         # UTC: when the upload started; a temp file's last write
    size: int | None        # bytes stored so far, if known
    pid: int | None = None  # a temp file's writer, on the host that wrote it
    place: str | None = None  # processes.place() of that writer (None: an earlier version's)
    upload_id: str | None = None
    source: Leftover | TempFile | None = field(default=None, compare=False, repr=False)

    @property
    def volume(self) -> str:
        return _volume_of(self.key)


@dataclass
class Listing:
    snapshots: list[Manifest]
    problems: list[Problem]
    # Encrypted repository, key given: the manifests whose MAC failed (not in `snapshots`).
    unauthentic: list[Problem] = field(default_factory=list)
    authenticated: bool = False  # every manifest in `snapshots` had its MAC checked


class SnapshotWriter:
    """Writes one snapshot's data (an archive, or chunks and a chunk list) and its
    catalogue; both appear only when the snapshot_writer block ends cleanly (a reader
    that reports an error on closing leaves neither). The manifest that makes it a
    snapshot is written after, by Repository.commit."""

    def __init__(self, repo: "Repository", out, archive_name: str, snapshot_id: str,
                 later: ExitStack):
        self._repo, self._out, self.archive = repo, out, archive_name
        self._snapshot, self._later = snapshot_id, later
        self._catalog: dict | None = None
        self._finish: Callable[[], dict] | None = None

    def pack(self, tar_chunks: Iterable[bytes], level: int,
             progress: Progress = no_progress, check_existing: bool = False) -> Packed:
        """`check_existing` (copy): the chunks this repository holds already are read back
        and checked, and written again if wrong (volbackup.repo.layout.ChunkedLayout)."""
        repo = self._repo
        key = repo.catalog_key(self._snapshot, chunked=repo.layout.chunked)
        packed, self._finish = repo.layout.pack(tar_chunks, self._out, level, progress,
                                                check_existing, key, self._later)
        return packed

    def finish(self) -> None:
        """The block ended cleanly: complete the catalogue (its blob appears next)."""
        if self._finish is not None:
            self._catalog = self._finish()

    def fields(self, packed: Packed) -> dict:
        """The manifest fields that depend on the layout, and the catalogue's."""
        return {"catalog": self._catalog, **self._repo.layout.fields(packed)}


class Repository:
    def __init__(self, backend: Backend, config: RepoConfig | None = None,
                 secrets: Secrets | None = None):
        self.backend = backend
        self.config = config        # None: the archive layout
        self.made_store = False     # init made the directory (it did not exist)
        self.secrets = secrets or Secrets.from_env()
        self.keyring = (Keyring(config, self.secrets, backend.describe())
                        if config is not None and config.encrypted else None)
        self.layout = layout_for(backend, config, self.keyring)  # chosen once

    @property
    def blobs(self) -> LooseChunkStore:
        """The blob store (volbackup.repo.blobstore), built once when first needed."""
        return self.layout.blobs

    @classmethod
    def open(cls, url: str, writable: bool = False, options: dict | None = None,
             secrets: Secrets | None = None, refuse_plain: bool = True) -> "Repository":
        """Open and check the repository at `url`; `options` are for writing (S3 only);
        `secrets` say where an encrypted repository's keys are (default: the env); given
        (commands that use them: backup, restore, verify, export, import, prune, run), a
        plain repository is refused, not used in the clear (`refuse_plain` False: `list`,
        which only shows what it finds)."""
        backend = open_backend(url, options)
        backend.check(writable=writable)
        repo = cls(backend, read_config(backend), secrets)
        given = secrets and (secrets.key_file or secrets.identity_file)
        if given and repo.keyring is None and refuse_plain:
            # Whoever holds a secret expects encryption: a config removed or replaced by a
            # plain one would otherwise have backups stored in the clear, and restores take
            # plain snapshots anyone could write (docs/security.md).
            raise KeyProblem(
                f"repository {backend.describe()} is not encrypted, but a key or identity "
                f"was given ({given}): refusing (its config removed or replaced by a writer "
                f"to the repository?); for a plain repository give neither --key-file nor "
                f"--identity (nor ${KEY_FILE_ENV}, ${IDENTITY_FILE_ENV})")
        return repo

    @classmethod
    def init(cls, url: str, options: dict | None = None, config: RepoConfig | None = None,
             encrypt_to: list[str] | None = None, key_file: str | None = None) -> "Repository":
        """Make a chunked repository at `url` (an empty directory or bucket prefix, or one
        with archive-layout snapshots); refuse one that already has a config. With
        `encrypt_to` (recipients), an encrypted one, whose new key goes to `key_file`.
        A directory that does not exist is made (its parent must exist), as restic and borg
        do, and removed again if init fails; `made_store` on the result says it was made."""
        backend = open_backend(url, options)
        made = backend.create_missing()
        try:
            repo = cls._init(backend, config, encrypt_to, key_file)
        except BaseException:
            if made:
                backend.remove_if_empty()
            raise
        repo.made_store = made
        return repo

    @classmethod
    def _init(cls, backend: Backend, config: RepoConfig | None, encrypt_to: list[str] | None,
              key_file: str | None) -> "Repository":
        backend.check(writable=True)
        if read_config(backend) is not None:
            raise RepositoryError(f"{backend.describe()} is already a chunked repository "
                                  f"(it has a config); nothing was changed")
        repo = cls(backend)
        repo.require_repository()   # not a directory of other things
        config = config or RepoConfig.new()
        if encrypt_to is not None:
            if not key_file:
                raise KeyProblem("an encrypted repository needs --key-file FILE: where its new "
                                 "key is written, for the hosts that back up into it")
            if repo.snapshots().snapshots or repo.snapshots().problems:
                raise RepositoryError(
                    f"{backend.describe()} holds snapshots; an encrypted repository starts "
                    f"empty (its snapshots are all sealed and authenticated): init an empty "
                    f"one and `volbackup export`/`import` what you want to keep")
            config, key = new_encryption(encrypt_to, config)
            crypto.write_key_file(key_file, key)
        try:
            backend.write_bytes(CONFIG_KEY, config.to_json())
        except BaseException:
            if encrypt_to is not None and key_file:
                os.unlink(key_file)  # a key of no repository
            raise
        # The repository as it now is: its blob store is made from this config, once.
        return cls(backend, config, Secrets(key_file=key_file) if config.encrypted else None)

    def describe(self) -> str:
        return self.backend.describe()

    def probe_write(self) -> None:
        """Raise RepositoryError unless this process can write here (a probe, removed)."""
        self.backend.probe_write()

    def free_space(self) -> int | None:
        """Bytes free in a directory repository; None where a store cannot say (S3)."""
        return self.backend.free_space()

    # -- keys
    @staticmethod
    def manifest_key(snapshot_id: str) -> str:
        volume, stamp = split_id(snapshot_id)
        return f"{PREFIX}{volume}/{stamp}{MANIFEST_SUFFIX}"

    @staticmethod
    def archive_name(snapshot_id: str, chunked: bool = False) -> str:
        """The name of a snapshot's data blob next to its manifest: archive or chunk list."""
        return split_id(snapshot_id)[1] + (LIST_SUFFIX if chunked else ARCHIVE_SUFFIX)

    def archive_key(self, manifest: Manifest) -> str:
        return f"{PREFIX}{manifest.volume}/{manifest.archive}"

    @staticmethod
    def catalog_key(snapshot_id: str, chunked: bool) -> str:
        volume, stamp = split_id(snapshot_id)
        suffix = catalogs.LIST_SUFFIX if chunked else catalogs.ARCHIVE_SUFFIX
        return f"{PREFIX}{volume}/{stamp}{suffix}"

    # -- writing
    @contextmanager
    def snapshot_writer(self, snapshot_id: str) -> Iterator[SnapshotWriter]:
        """Where a new snapshot's data goes; it appears when the block ends cleanly."""
        volume, _ = split_id(snapshot_id)
        name = self.archive_name(snapshot_id, chunked=self.layout.chunked)
        with self.backend.open_write(f"{PREFIX}{volume}/{name}") as out, ExitStack() as later:
            writer = SnapshotWriter(self, out, name, snapshot_id, later)
            yield writer
            writer.finish()

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest, which makes the snapshot exist (sealed, if encrypted)."""
        if self.keyring is not None:
            manifest = self.keyring.seal(manifest)
        self.backend.write_bytes(self.manifest_key(manifest.snapshot), manifest.to_json().encode())

    # -- copying from another repository (volbackup.ops.copy)
    def names_chunks_as(self, source: "Repository") -> bool:
        """Both chunked and both plain: a chunk has the same name (the sha256 of its
        plaintext) and the same stored form in both, so `receive_chunks` can copy them."""
        return self.layout.stores_chunks_like(source.layout)

    def receive_chunks(self, source: "Repository", manifest: Manifest,
                       progress: Progress = no_progress) -> chunkcopy.ListCopy:
        """Copy a plain chunked snapshot's chunk lists (its data's, then its catalogue's),
        and the chunks this repository lacks, from `source` (under this repository's
        lock); then `commit` the manifest."""
        if not (self.names_chunks_as(source) and manifest.chunked):
            raise ValueError("receive_chunks needs two plain chunked repositories")
        try:
            return self._receive_chunks(source, manifest, progress)
        except (ChunkMissing, BlobMissing) as e:
            raise source.missing(manifest, e) from None

    def _receive_chunks(self, source: "Repository", manifest: Manifest,
                        progress: Progress) -> chunkcopy.ListCopy:
        from_side = chunkcopy.Side(source.backend, source.blobs)
        to_side = chunkcopy.Side(self.backend, self.blobs)
        key = self.archive_key(manifest)  # the same names in both: <stamp>.chunks ...
        copied = chunkcopy.copy_list(
            from_side, key, to_side, key,
            chunkcopy.Expected(manifest.sha256, manifest.chunks or 0, manifest.bytes,
                               f"chunk list of snapshot {manifest.snapshot}"), progress)
        field = manifest.catalog
        if field is not None:
            if not catalogs.in_pieces(field):
                raise RepositoryError(f"snapshot {manifest.snapshot} is chunked and its "
                                      f"catalogue is not")
            key = self.catalog_key(manifest.snapshot, chunked=True)  # ... and <stamp>.catalog
            copied += chunkcopy.copy_list(
                from_side, key, to_side, key,
                chunkcopy.Expected(field["sha256"], field["chunks"], field["bytes"],
                                   f"catalogue list of snapshot {manifest.snapshot}"))
        return copied

    def same_store(self, other: "Repository", lock: locking.Lock) -> bool:
        """Is `other` this very store under another name (a symlink, another URL of the
        bucket)? Asked with `lock` held here: `other` then lists it (lock names are unique
        per run)."""
        return any(info.key == lock.info.key for info in other.locks())

    def check_secrets(self, reading: bool) -> None:
        """An encrypted repository: load and check the key (and, `reading`, the identity)
        now, before any volume is touched; KeyProblem if one is missing or wrong."""
        if self.keyring is not None:
            self.keyring.check(reading)

    def reveal(self, manifest: Manifest) -> RevealedManifest:
        """The whole manifest, private fields included: in an encrypted repository this
        needs the identity and checks the manifest's MAC (once: the result is of its own
        type, which the readers of snapshot data take); otherwise it is `manifest`."""
        if self.keyring is None:
            return manifest if isinstance(manifest, RevealedManifest) \
                else RevealedManifest.of(manifest)
        return self.keyring.reveal(manifest)

    # -- reading
    def load(self, snapshot_id: str) -> Manifest:
        key = self.manifest_key(snapshot_id)
        try:
            raw = self.backend.read_bytes(key)
        except BlobNotFound:
            raise NotFound(f"no snapshot {snapshot_id} in repository {self.describe()}") from None
        manifest = Manifest.from_json(raw, key)
        if manifest.snapshot != snapshot_id:
            raise RepositoryError(f"manifest {key} claims to be snapshot {manifest.snapshot}")
        return manifest

    def volumes(self, host: str | None = None) -> list[str]:
        """Volumes with snapshots, and volumes with an entry that cannot be read (so that
        `restore --all` reports them instead of leaving them out)."""
        if host is not None:
            listing = self.snapshots(host=host)
            return sorted({m.volume for m in listing.snapshots}
                          | {p.volume for p in listing.problems})
        names = {_volume_of(info.key) for info in self.backend.list(PREFIX)
                 if info.key.endswith(MANIFEST_SUFFIX) or info.error}
        return sorted(n for n in names if n)

    def snapshot_ids(self) -> list[str]:
        """The ids of the snapshots whose manifests are listed, from their keys alone (no
        manifest is read: quick, for shell completion; `snapshots()` checks them)."""
        ids = []
        for info in self.backend.list(PREFIX):
            match = _MANIFEST_KEY.fullmatch(info.key)
            if match and not info.error:
                ids.append(f"{match['volume']}@{match['stamp']}")
        return ids

    def snapshots(self, volume: str | None = None, host: str | None = None) -> Listing:
        """Every readable snapshot (oldest first), and a message for each unreadable one.

        With `host`, only the snapshots made on that host (unreadable ones are still reported).
        An encrypted repository whose key was given: only the snapshots whose MAC checks
        out; the others (a writer without the key planted or altered them) are reported in
        `unauthentic`, whatever their host, so that nothing decides on them.
        """
        prefix = f"{PREFIX}{volume}/" if volume else PREFIX
        found, problems = [], []
        for info in self.backend.list(prefix):
            if info.error and not _volume_of(info.key):
                raise RepositoryError(info.error)  # snapshots/ itself: nothing can be listed
            if info.error:  # a symlink, FIFO, device or unreadable directory: never skipped
                problems.append(Problem(_volume_of(info.key), info.error))
                continue
            if not info.key.endswith(MANIFEST_SUFFIX):
                continue
            try:
                manifest = Manifest.from_json(self.backend.read_bytes(info.key), info.key)
                if self.manifest_key(manifest.snapshot) != info.key:
                    raise RepositoryError(f"manifest {info.key} claims to be snapshot "
                                          f"{manifest.snapshot}")
                found.append(manifest)
            except BlobNotFound:
                continue  # removed while listing
            except (RepositoryError, NotFound) as e:
                problems.append(Problem(_volume_of(info.key), str(e)))
        check = self.keyring is not None and self.keyring.can_authenticate
        found, unauthentic = self._authentic(found) if check else (found, [])
        if host is not None:
            found = [m for m in found if m.host == host]
        found.sort(key=lambda m: (parse_created(m.created), m.snapshot))
        return Listing(found, problems, unauthentic, check)

    def _authentic(self, manifests: list[Manifest]) -> tuple[list[Manifest], list[Problem]]:
        """The manifests a key holder wrote, and a Problem for each of the others."""
        assert self.keyring is not None
        kept, refused = [], []
        for manifest in manifests:
            try:
                self.keyring.authenticate(manifest)
            except IntegrityError as e:
                refused.append(Problem(manifest.volume, str(e), manifest.snapshot, manifest))
                continue
            kept.append(manifest)
        return kept, refused

    def initialised(self) -> bool:
        """A chunked repository (`init` made it), or one that holds snapshots (the archive
        layout is made by its first backup): what a copy may write into. An empty
        directory or bucket prefix is not one: a typo in a target must not become a
        repository."""
        return self.layout.chunked or next(
            (True for info in self.backend.list(PREFIX) if not info.error), False)

    def require_repository(self) -> None:
        """Raise if the store holds other things and no repository (`list -r /etc`), so
        that "no snapshots" is never said of a wrong directory."""
        foreign = self.backend.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RepositoryError(
                f"{self.describe()} is not a volbackup repository: it holds {shown} and no "
                f"snapshots/ (a new repository is an empty directory)")

    def newest(self, volume: str, host: str | None = None) -> Manifest:
        listing = self.snapshots(volume, host)
        if listing.problems:
            # Never silently fall back to an older snapshot in a restore.
            raise RepositoryError(f"{listing.problems[-1]}; name a snapshot id explicitly")
        newest = listing.snapshots[-1] if listing.snapshots else None
        forged = [p for p in listing.unauthentic if p.manifest and (newest is None or (
            parse_created(p.manifest.created), p.snapshot) > (parse_created(newest.created),
                                                              newest.snapshot))]
        if forged:
            # Not a snapshot, but said: a restore of "the newest" is not quietly an older one.
            after = f", the newest authentic one is {newest.snapshot}" if newest else ""
            raise IntegrityError(f"{forged[-1]} (dated after every authentic snapshot of "
                                 f"volume {volume}{after}): name a snapshot id explicitly")
        if not listing.snapshots:
            self.require_repository()  # "no snapshots of X" is never said of a wrong -r
            of_host = f" from host {host}" if host is not None else ""
            raise NotFound(f"no snapshots of volume {volume}{of_host} in repository "
                           f"{self.describe()}")
        return listing.snapshots[-1]

    def resolve(self, ref: str, host: str | None = None) -> Manifest:
        """A snapshot id, or a volume name meaning its newest snapshot (made on `host`)."""
        if looks_like_id(ref):
            manifest = self.load(ref)
            if host is not None and manifest.host != host:
                raise NotFound(f"snapshot {ref} was made on host {manifest.host}, not {host}")
            return manifest
        if not VOLUME_NAME.fullmatch(ref):
            raise NotFound(f"{ref!r} is neither a snapshot id nor a volume name")
        return self.newest(ref, host)

    # -- removing
    def remove_manifest(self, snapshot_id: str) -> None:
        """Remove a snapshot's manifest, which makes the snapshot cease to exist."""
        self.backend.delete(self.manifest_key(snapshot_id))

    def remove_archive(self, manifest: Manifest) -> None:
        """Remove the archive (or chunk list) and catalogue of a snapshot whose manifest
        is gone."""
        self.backend.delete(self.archive_key(manifest))
        if manifest.catalog is not None:
            self.backend.delete(self.catalog_key(manifest.snapshot, manifest.chunked))

    # -- locks (volbackup.repo.locking)
    @contextmanager
    def lock(self, kind: str, wait: float, command: str = "",
             on_break: Callable[[locking.LockInfo, str], None] = lambda lock, why: None
             ) -> Iterator[locking.Lock]:
        """Hold a SHARED (backup) or EXCLUSIVE (prune) lock for a `with` block, waiting up
        to `wait` seconds; `on_break` hears of each stale lock broken on the way. What is
        known of the stored chunks is listed afresh under each lock."""
        with locking.locked(self.backend, kind, wait, command, on_break) as held:
            self.layout.forget_blobs()
            try:
                yield held
            finally:
                self.layout.forget_blobs()

    def locks(self) -> list[locking.LockInfo]:
        return locking.list_locks(self.backend)

    def unlock(self, remove_all: bool = False) -> list[tuple[locking.LockInfo, str | None]]:
        """Remove stale locks (every lock with `remove_all`): (lock, why removed or None)."""
        return locking.unlock(self.backend, remove_all)

    # -- what interrupted runs left
    def orphans(self) -> list[Orphan]:
        """Archives named by volbackup whose manifest does not exist, in key order."""
        blobs = list(self.backend.list(PREFIX))
        manifests = {b.key[:-len(MANIFEST_SUFFIX)] for b in blobs
                     if b.key.endswith(MANIFEST_SUFFIX)}
        out = []
        for blob in blobs:
            match = _ARCHIVE_KEY.fullmatch(blob.key)
            if not match or blob.key[:-len(match["suffix"])] in manifests:
                continue
            try:
                started = datetime.strptime(match["stamp"][:16], "%Y%m%dT%H%M%SZ")
            except ValueError:
                continue  # month 13: not named by volbackup, not ours to remove
            out.append(Orphan(blob.key, match["volume"], started.replace(tzinfo=timezone.utc),
                              blob.size))
        return out

    def sweep_chunks(self, min_age: timedelta, now: datetime, dry_run: bool = False,
                     gone: Iterable[str] = (),
                     progress: sweep.ProgressFactory = sweep._no_progress) -> sweep.ChunkSweep:
        """Remove the chunks no chunk list names (older than `min_age`); under the
        exclusive lock only (volbackup.repo.sweep). `gone`: the keys of chunk lists a dry
        run counts as removed."""
        return sweep.sweep(self.backend, self.blobs, min_age, now, dry_run, gone, progress)

    def remove_orphan(self, orphan: Orphan) -> None:
        if not _ARCHIVE_KEY.fullmatch(orphan.key):
            raise ValueError(f"not an archive key {orphan.key!r}")
        self.backend.delete(orphan.key)

    def unfinished_writes(self) -> list[UnfinishedWrite]:
        """S3 multipart uploads and temp files of writes that have not finished: those of
        killed runs, and those of runs still writing (judge them by `since` and `pid`)."""
        out = [UnfinishedWrite(left.key, "upload", left.started, left.size,
                               upload_id=left.ident, source=left)
               for left in self.backend.leftovers()]
        out += [UnfinishedWrite(temp.key, "temp", temp.modified, temp.size, pid=temp.pid,
                                place=temp.place, source=temp)
                for temp in self.backend.temp_files()]
        return out

    def remove_unfinished(self, write: UnfinishedWrite) -> None:
        """Abort the upload, or remove the temp file."""
        if isinstance(write.source, Leftover):
            self.backend.remove_leftover(write.source)
        elif isinstance(write.source, TempFile):
            self.backend.remove_temp(write.source)
        else:
            raise ValueError(f"{write.key} was not found by unfinished_writes()")

    @contextmanager
    def open_archive(self, manifest: Manifest) -> Iterator[Iterator[bytes]]:
        """The stored bytes of the blob next to the manifest (archive or chunk list)."""
        key = self.archive_key(manifest)
        what = "chunk list" if manifest.chunked else "archive"
        try:
            with self.backend.open_read(key) as reader:
                yield read_chunks(reader)
        except BlobNotFound:
            raise BlobMissing(
                f"{what} {key} of snapshot {manifest.snapshot} is missing") from None

    def watched(self, manifest: Manifest, pieces: Iterator[T]) -> Iterator[T]:
        """`pieces` read from `manifest`'s snapshot; a chunk, list or archive found missing
        is reported as `missing` says (a prune may have removed the snapshot meanwhile:
        restores take no lock)."""
        try:
            yield from pieces
        except (ChunkMissing, BlobMissing) as e:
            raise self.missing(manifest, e) from None

    def missing(self, manifest: Manifest, error: VolbackupError) -> VolbackupError:
        """What to say of a piece of `manifest`'s snapshot found missing while it was read:
        RemovedWhileRead when its manifest is gone now (a prune removes the manifest
        before the data, so a piece a prune took has no manifest left), naming the prune's
        lock if it is still held; `error` itself (damage) while the manifest is there."""
        try:
            self.load(manifest.snapshot)
            return error
        except NotFound:
            pass
        except VolbackupError:
            return error  # there, but unreadable: said by the error itself
        try:
            pruning = [lock for lock in self.locks() if lock.kind == locking.EXCLUSIVE]
        except VolbackupError:
            pruning = []
        by = (f"by a prune that is running ({pruning[0].describe()})" if pruning
              else "by a prune that has finished since (or by hand)")
        return RemovedWhileRead(
            f"snapshot {manifest.snapshot} was removed from repository {self.describe()} "
            f"while it was read, {by}: {error}; the repository is not damaged, read "
            f"another snapshot")

    def unpacker(self, manifest: Manifest, progress: Progress = no_progress,
                 selection: Selection | None = None
                 ) -> archive.Unpacker | chunked.ChunkedUnpacker | partial.PartialUnpacker:
        """A checked reader of the snapshot's tar stream: `chunks()` yields it, holding
        back the end until everything checked out (volbackup.stream.archive.Unpacker).
        With a `selection`, of the entries it selects only (see `select`)."""
        manifest = self.reveal(manifest)
        if selection is not None and not selection.everything:
            return self.partial(manifest, self.select(manifest, selection), progress)
        if not manifest.chunked:
            return _ArchiveUnpacker(self, manifest, progress)
        return _ChunkedUnpacker(self, manifest, progress)

    # -- catalogue and partial reads (volbackup.stream.catalog, volbackup.repo.partial)
    def catalog(self, manifest: Manifest) -> Iterator[CatalogEntry]:
        """The snapshot's catalogue entries, checked; read from the whole snapshot for
        one written before catalogues existed. A damaged catalogue raises at the end
        (IntegrityError), after the entries before the damage."""
        manifest = self.reveal(manifest)
        if manifest.catalog is None:
            return catalog.walk(self.unpacker(manifest).chunks())
        key = self.catalog_key(manifest.snapshot, manifest.chunked)
        pieces = catalogs.read_pieces(self.backend, self.blobs, key, manifest.catalog,
                                      f"snapshot {manifest.snapshot}")
        return self.watched(manifest, catalogs.entries(pieces, manifest.bytes))

    def select(self, manifest: Manifest, selection: Selection
               ) -> Callable[[], Iterator[CatalogEntry]]:
        """The entries a selection takes (catalog.selected), as a function giving them
        afresh each call. The catalogue is read through once first, so that it is checked
        whole, every include path matched something (else NotFound) and the targets of
        wanted hard links are known, before any data is read."""
        matched: dict[str, int] = {}
        targets: set[str] = set()
        kept: list[CatalogEntry] | None = []
        for entry in catalog.selected(self.catalog(manifest), selection, frozenset(), matched,
                                      targets):
            if kept is not None:
                kept.append(entry)
                if len(kept) > KEEP_SELECTED:
                    kept = None  # read the catalogue again instead: memory stays flat
        unmatched = [p for p in selection.include if not matched.get(p)]
        if unmatched:
            raise NotFound(f"snapshot {manifest.snapshot} has no {unmatched[0]!r}")
        if kept is not None and not targets:
            return lambda: iter(kept)
        wanted = frozenset(targets)
        return lambda: catalog.selected(self.catalog(manifest), selection, wanted)

    def partial(self, manifest: Manifest, entries: Callable[[], Iterator[CatalogEntry]],
                progress: Progress = no_progress) -> partial.PartialUnpacker:
        """A checked tar stream of `entries` (in stream order), reading only what holds
        them where the layout allows (volbackup.repo.partial)."""
        manifest = self.reveal(manifest)
        if not manifest.chunked:
            def spans(wanted):
                return partial.cut_spans(_ArchiveUnpacker(self, manifest, no_progress).chunks(),
                                         wanted)
        else:
            whole = self.unpacker(manifest)

            def spans(wanted):
                return self.watched(manifest, partial.chunked_spans(
                    lambda: _open_list(self, manifest), self.blobs, wanted,
                    whole.check_list))
        return partial.PartialUnpacker(entries, spans, progress)


class _ArchiveUnpacker(archive.Unpacker):
    """An Unpacker that opens the archive itself when read."""

    def __init__(self, repo: Repository, manifest: RevealedManifest, progress: Progress):
        super().__init__((), manifest.sha256, manifest.stored_bytes, progress, manifest.bytes)
        self._repo, self._manifest = repo, manifest

    def chunks(self) -> Iterator[bytes]:
        return self._repo.watched(self._manifest, self._read())

    def _read(self) -> Iterator[bytes]:
        with self._repo.open_archive(self._manifest) as stored:
            self._stored = stored
            yield from super().chunks()


class _ChunkedUnpacker(chunked.ChunkedUnpacker):
    """A ChunkedUnpacker of a snapshot of `repo`, which says when the snapshot was removed
    while it was read (Repository.missing)."""

    def __init__(self, repo: Repository, manifest: RevealedManifest, progress: Progress):
        super().__init__(lambda: _open_list(repo, manifest), repo.blobs, manifest.sha256,
                         manifest.chunks or 0, manifest.tar_sha256 or "", manifest.bytes,
                         progress)
        self._repo, self._manifest = repo, manifest

    def chunks(self) -> Iterator[bytes]:
        return self._repo.watched(self._manifest, super().chunks())


@contextmanager
def _open_list(repo: Repository, manifest: Manifest) -> Iterator[object]:
    key = repo.archive_key(manifest)
    try:
        with repo.backend.open_read(key) as reader:
            yield reader
    except BlobNotFound:
        raise BlobMissing(
            f"chunk list {key} of snapshot {manifest.snapshot} is missing") from None


def read_config(backend: Backend) -> RepoConfig | None:
    """The repository's config, or None for an archive-layout repository (no config)."""
    try:
        raw = backend.read_bytes(CONFIG_KEY)
    except BlobNotFound:
        return None
    return RepoConfig.from_json(raw, f"config of repository {backend.describe()}")

"""The repository: one façade over a storage backend and the jobs done on it.

Each job has its own module, and `Repository` hands over to them, so that the ops hold one
object and import one name:
- the snapshots, as their manifests: ids, keys, listing, loading, writing, removing
  (volbackup.repo.manifests);
- the layout the config asks for, and the blob store it keeps chunks in
  (volbackup.repo.layout, volbackup.repo.blobstore);
- writing a snapshot's data (SnapshotWriter, here) and reading it back
  (volbackup.repo.reading);
- the keys of an encrypted repository (volbackup.repo.sealing.Keyring);
- locks (volbackup.repo.locking), and what interrupted runs left (volbackup.repo.leftovers).

The Repository owns its storage: locks, orphaned archives and unfinished writes are
reached through it, never through `repo.backend`, so that a different layout (a chunk
store) can change them in one place. docs/design.md says why it is cut this way.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable, Iterable, Iterator, TypeVar

from volbackup.errors import (BlobMissing, ChunkMissing, KeyProblem, LockLost, RepositoryError,
                              VolbackupError)
from volbackup.pauses import pause
from volbackup.repo import (catalogs, chunkcopy, chunked, crypto, locking, packcopy, partial,
                            pruneplan, sweep)
from volbackup.repo.backends import Backend, BlobNotFound, FreeSpace, MakesItsPlace, open_backend
from volbackup.repo.blobstore import BlobStore
from volbackup.repo.packstore import PackedBlobStore
from volbackup.repo.parentrecord import RecordWriter
from volbackup.repo.config import CONFIG_KEY, RepoConfig
from volbackup.repo.layout import ARCHIVE_SUFFIX, layout_for
from volbackup.repo.leftovers import Leftovers, Orphan, UnfinishedWrite
from volbackup.repo.manifest import Manifest, RevealedManifest
from volbackup.repo.manifests import (MANIFEST_SUFFIX, PREFIX, Listing, Manifests, Problem,
                                      archive_key, archive_name, catalog_key, looks_like_id,
                                      manifest_key, new_snapshot_id, split_id)
from volbackup.repo.reading import SnapshotReader
from volbackup.repo.sealing import (IDENTITY_FILE_ENV, KEY_FILE_ENV, Keyring, Secrets,
                                    new_encryption)
from volbackup.stream import archive
from volbackup.stream.archive import Packed, Progress, no_progress
from volbackup.stream.catalog import CatalogEntry, Selection

# Names the ops and tests import from here (the façade's module).
__all__ = ["ARCHIVE_SUFFIX", "LIST_SUFFIX", "MANIFEST_SUFFIX", "PREFIX", "Listing", "Orphan",
           "Problem", "Repository", "SnapshotWriter", "UnfinishedWrite", "looks_like_id",
           "new_snapshot_id", "read_config", "split_id"]

T = TypeVar("T")
LIST_SUFFIX = chunked.LIST_SUFFIX


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
             progress: Progress = no_progress, check_existing: bool = False,
             record: RecordWriter | None = None) -> Packed:
        """`check_existing` (copy): the chunks this repository holds already are read back
        and checked, and written again if wrong (volbackup.repo.layout.ChunkedLayout).
        `record`: a tree snapshot's lines and blobs go to it too (volbackup.repo.parentrecord)."""
        repo = self._repo
        volume, stamp = split_id(self._snapshot)
        key = f"{PREFIX}{volume}/{stamp}{repo.layout.catalog_suffix}"
        packed, self._finish = repo.layout.pack(tar_chunks, self._out, level, progress,
                                                check_existing, key, self._later, record)
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
        # Its jobs, each in its own module; the methods below hand over to them.
        self.manifests = Manifests(backend, self.keyring)
        self.leftovers = Leftovers(backend)
        self.reader = SnapshotReader(self)

    @property
    def blobs(self) -> BlobStore:
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
        """Make a repository with `config` at `url` (an empty directory or bucket prefix, or
        one with archive-layout snapshots); refuse one that already has a config. Without
        `config`, a chunked one (RepoConfig.new's layout: tests and tools build on it;
        `volbackup init` passes its own, packed by default). With
        `encrypt_to` (recipients), an encrypted one, whose new key goes to `key_file`.
        A directory that does not exist is made (its parent must exist), as restic and borg
        do, and removed again if init fails; `made_store` on the result says it was made."""
        backend = open_backend(url, options)
        made = backend.has(MakesItsPlace) and backend.create_missing()
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
        existing = read_config(backend)
        if existing is not None:
            raise RepositoryError(f"{backend.describe()} is already a {existing.layout} "
                                  f"repository (it has a config); nothing was changed")
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
        """Bytes free in a directory or SFTP repository; None where a store cannot say (S3)."""
        return self.backend.free_space() if self.backend.has(FreeSpace) else None

    # -- keys
    manifest_key = staticmethod(manifest_key)
    archive_name = staticmethod(archive_name)
    catalog_key = staticmethod(catalog_key)

    @staticmethod
    def archive_key(manifest: Manifest) -> str:
        return archive_key(manifest)

    # -- writing
    @contextmanager
    def snapshot_writer(self, snapshot_id: str) -> Iterator[SnapshotWriter]:
        """Where a new snapshot's data goes; it appears when the block ends cleanly."""
        volume, stamp = split_id(snapshot_id)
        name = stamp + self.layout.data_suffix
        # A tree snapshot's data and catalogue are blobs: no object beside its manifest.
        data = nullcontext(None) if self.layout.trees \
            else self.backend.open_write(f"{PREFIX}{volume}/{name}")
        with data as out, ExitStack() as later:
            writer = SnapshotWriter(self, out, name, snapshot_id, later)
            yield writer
            writer.finish()

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest, which makes the snapshot exist (sealed, if encrypted): after
        every blob it needs is durable and indexed. In a packed repository the lock held
        is confirmed after: if it was broken (as stale) meanwhile, a prune may have
        deleted what the snapshot names, so the manifest is removed again and LockLost
        raised (docs/design.md, "Write ordering")."""
        self.layout.flush_blobs()
        pause("before-manifest")
        self.manifests.commit(manifest)
        held = self.layout.held
        if self.layout.packed and held is not None:
            try:
                held.confirm()
            except LockLost:
                self.manifests.remove_manifest(manifest.snapshot)
                raise

    # -- copying from another repository (volbackup.ops.copy)
    def names_chunks_as(self, source: "Repository") -> bool:
        """Both chunked and both plain: a chunk has the same name (the sha256 of its
        plaintext) and the same stored form in both, so `receive_chunks` can copy them."""
        return self.layout.stores_chunks_like(source.layout)

    def receive_chunks(self, source: "Repository", manifest: Manifest,
                       progress: Progress = no_progress) -> chunkcopy.ListCopy:
        """Copy a plain chunked snapshot's chunk lists (its data's, then its catalogue's),
        and the chunks this repository lacks, from `source` (under this repository's
        lock); then `commit` the manifest. Not a tree snapshot's: copy streams those."""
        if not (self.names_chunks_as(source) and manifest.chunked and not manifest.tree):
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

    def copies_blobs_from(self, source: "Repository") -> bool:
        """Both packed, and both name blobs alike (both plain; or both encrypted under the
        same repository key): a tree snapshot is copied by the blobs this repository
        lacks (`receive_blobs`). Needs both keys when encrypted (checked before)."""
        if not (self.layout.packed and source.layout.packed):
            return False
        mine, theirs = self.blobs, source.blobs
        return isinstance(mine, PackedBlobStore) and isinstance(theirs, PackedBlobStore) \
            and mine.names_like(theirs)

    def _seals_like(self, source: "Repository") -> bool:
        """A record of `source` can be stored here as it is: both plain, or both sealed to
        the same recipients (whose identities open the data keys it comes with). Both
        configs' MACs were checked when their keys were taken (Keyring)."""
        if self.keyring is None or source.keyring is None:
            return self.keyring is None and source.keyring is None
        assert self.config is not None and source.config is not None
        mine, theirs = self.config.encryption, source.config.encryption
        return mine is not None and theirs is not None \
            and sorted(mine.recipients) == sorted(theirs.recipients)

    def receive_blobs(self, source: "Repository", manifest: Manifest,
                      progress: Progress = no_progress
                      ) -> tuple[packcopy.BlobCopy, RevealedManifest]:
        """Copy a tree snapshot's blobs that this repository lacks from `source` (under
        this repository's lock), checked, durable and indexed here: then `commit` the
        manifest returned (the source's, its catalogue field this repository's, sealed
        here if encrypted)."""
        if not (self.copies_blobs_from(source) and manifest.tree):
            raise ValueError("receive_blobs needs two packed repositories that name blobs "
                             "alike, and a tree snapshot")
        whole = source.reveal(manifest)
        sending = packcopy.Sending(as_stored=self._seals_like(source),
                                   check_held=self.keyring is None, level=whole.level)
        cut_keys = (source.layout.catalog_cut_key(), self.layout.catalog_cut_key())
        target, origin = self.blobs, source.blobs
        assert isinstance(target, PackedBlobStore) and isinstance(origin, PackedBlobStore)
        try:
            copied, catalog = packcopy.copy_snapshot(origin, target, whole, sending,
                                                     cut_keys, progress)
        except (ChunkMissing, BlobMissing) as e:
            raise source.missing(manifest, e) from None
        return copied, replace(whole, catalog=catalog, encrypted=False, sealed=None,
                               mac=None)

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

    def can_read_catalogues(self) -> bool:
        """Whether this process may read a snapshot's catalogue: always in a plain
        repository; in an encrypted one only with an identity, which backup hosts are
        meant not to hold (docs/security.md)."""
        return self.keyring is None or bool(self.keyring.secrets.identity_file)

    def reveal(self, manifest: Manifest) -> RevealedManifest:
        """The whole manifest, private fields included: in an encrypted repository this
        needs the identity and checks the manifest's MAC (once: the result is of its own
        type, which the readers of snapshot data take); otherwise it is `manifest`."""
        if self.keyring is None:
            return manifest if isinstance(manifest, RevealedManifest) \
                else RevealedManifest.of(manifest)
        return self.keyring.reveal(manifest)

    # -- the snapshots (volbackup.repo.manifests)
    def load(self, snapshot_id: str) -> Manifest:
        return self.manifests.load(snapshot_id)

    def volumes(self, host: str | None = None) -> list[str]:
        return self.manifests.volumes(host)

    def snapshot_ids(self) -> list[str]:
        return self.manifests.snapshot_ids()

    def snapshots(self, volume: str | None = None, host: str | None = None) -> Listing:
        return self.manifests.snapshots(volume, host)

    def require_repository(self) -> None:
        self.manifests.require_repository()

    def newest(self, volume: str, host: str | None = None) -> Manifest:
        return self.manifests.newest(volume, host)

    def resolve(self, ref: str, host: str | None = None) -> Manifest:
        return self.manifests.resolve(ref, host)

    def initialised(self) -> bool:
        """A chunked repository (`init` made it), or one that holds snapshots (the archive
        layout is made by its first backup): what a copy may write into. An empty
        directory or bucket prefix is not one: a typo in a target must not become a
        repository."""
        return self.layout.chunked or next(
            (True for info in self.backend.list(PREFIX) if not info.error), False)

    # -- removing
    def remove_manifest(self, snapshot_id: str) -> None:
        """Remove a snapshot's manifest, which makes the snapshot cease to exist."""
        self.manifests.remove_manifest(snapshot_id)

    def remove_archive(self, manifest: Manifest) -> None:
        """Remove the archive (or chunk list) and catalogue of a snapshot whose manifest
        is gone (a tree snapshot has neither: its blobs go by the sweep)."""
        if manifest.tree:
            return
        self.backend.delete(self.archive_key(manifest))
        if manifest.catalog is not None:
            self.backend.delete(self.catalog_key(manifest.snapshot, manifest.chunked))

    def reference_keys(self, manifest: Manifest) -> list[str]:
        """The keys whose objects name the blobs a chunked snapshot holds (what a sweep
        reads): its chunk and catalogue lists, or a tree snapshot's manifest."""
        if manifest.tree:
            return [self.manifest_key(manifest.snapshot)]
        return [self.archive_key(manifest), self.catalog_key(manifest.snapshot, chunked=True)]

    @contextmanager
    def lock(self, kind: str, wait: float, command: str = "",
             on_break: Callable[[locking.LockInfo, str], None] = lambda lock, why: None
             ) -> Iterator[locking.Lock]:
        """Hold a SHARED (backup) or EXCLUSIVE (prune) lock for a `with` block, waiting up
        to `wait` seconds; `on_break` hears of each stale lock broken on the way. What is
        known of the stored chunks is listed afresh under each lock."""
        with locking.locked(self.backend, kind, wait, command, on_break) as held:
            self.layout.forget_blobs()
            outer, self.layout.held = self.layout.held, held
            try:
                yield held
            finally:
                self.layout.held = outer
                self.layout.forget_blobs()

    def locks(self) -> list[locking.LockInfo]:
        return locking.list_locks(self.backend)

    def oldest_other_lock(self) -> datetime | None:
        """When the oldest run holding a live lock (not this one's) started."""
        held = self.layout.held
        return pruneplan.oldest_lock(self.backend, held.info.key if held else "")

    def unlock(self, remove_all: bool = False) -> list[tuple[locking.LockInfo, str | None]]:
        """Remove stale locks (every lock with `remove_all`): (lock, why removed or None)."""
        return locking.unlock(self.backend, remove_all)

    # -- what interrupted runs left (volbackup.repo.leftovers)
    def orphans(self) -> list[Orphan]:
        return self.leftovers.orphans()

    def remove_orphan(self, orphan: Orphan) -> None:
        self.leftovers.remove_orphan(orphan)

    def unfinished_writes(self) -> list[UnfinishedWrite]:
        return self.leftovers.unfinished_writes()

    def remove_unfinished(self, write: UnfinishedWrite) -> None:
        self.leftovers.remove_unfinished(write)

    def sweep_chunks(self, min_age: timedelta, now: datetime, dry_run: bool = False,
                     gone: Iterable[str] = (),
                     progress: sweep.ProgressFactory = sweep._no_progress,
                     waiting: pruneplan.Waiting | None = None) -> sweep.ChunkSweep:
        """Remove the chunks no chunk list names (older than `min_age`); under the
        exclusive lock (the prune lock in a packed repository, which waits for backups
        as `waiting` says: volbackup.repo.pruneplan). `gone`: the keys of chunk lists a
        dry run counts as removed."""
        return self.layout.sweep(min_age, now, dry_run, gone, progress, waiting)

    # -- reading (volbackup.repo.reading)
    def open_archive(self, manifest: Manifest):
        return self.reader.open_archive(manifest)

    def watched(self, manifest: Manifest, pieces: Iterator[T]) -> Iterator[T]:
        return self.reader.watched(manifest, pieces)

    def missing(self, manifest: Manifest, error: VolbackupError) -> VolbackupError:
        return self.reader.missing(manifest, error)

    def unpacker(self, manifest: Manifest, progress: Progress = no_progress,
                 selection: Selection | None = None
                 ) -> archive.Unpacker | chunked.ChunkedUnpacker | partial.PartialUnpacker:
        return self.reader.unpacker(manifest, progress, selection)

    def catalog(self, manifest: Manifest) -> Iterator[CatalogEntry]:
        return self.reader.catalog(manifest)

    def select(self, manifest: Manifest, selection: Selection
               ) -> Callable[[], Iterator[CatalogEntry]]:
        return self.reader.select(manifest, selection)

    def partial(self, manifest: Manifest, entries: Callable[[], Iterator[CatalogEntry]],
                progress: Progress = no_progress) -> partial.PartialUnpacker:
        return self.reader.partial(manifest, entries, progress)


def read_config(backend: Backend) -> RepoConfig | None:
    """The repository's config, or None for an archive-layout repository (no config)."""
    try:
        raw = backend.read_bytes(CONFIG_KEY)
    except BlobNotFound:
        return None
    return RepoConfig.from_json(raw, f"config of repository {backend.describe()}")

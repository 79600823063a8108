"""How a repository stores the snapshots it writes: chosen once, from its config.

- `ArchiveLayout`: no config (the first repositories, made by their first backup): a
  snapshot's data is one archive `<stamp>.tar.zst`, its catalogue `<stamp>.catalog.zst`.
- `ChunkedLayout`: a config made by `init`: the data is cut into chunks kept by a blob
  store (volbackup.repo.blobstore), named in a chunk list `<stamp>.chunks`; the catalogue is
  stored in pieces the same way, listed in `<stamp>.catalog`.
- `PackedLayout`: as the chunked one, but the blob store puts blobs into pack objects and
  finds them through an index (volbackup.repo.packstore); a snapshot's blob list and its
  catalogue (version 2) are trees of blobs (volbackup.repo.trees, catalogtree): nothing
  is written next to the manifest (`trees`).

The layout decides how a new snapshot is written. Reading goes by each snapshot's own
manifest (`layout` field): a chunked repository made by `init` over an archive-layout one
holds both kinds. Code asks the layout what to do instead of testing `config is None`.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import BinaryIO, Callable, Iterable

from volbackup.errors import RepositoryError
from volbackup.repo import catalogs, catalogtree, locking, packsweep, pruneplan, sweep, trees
from volbackup.repo import chunked as chunks
from volbackup.repo.backends import Backend
from volbackup.repo.blobstore import BlobStore, LooseChunkStore
from volbackup.repo.chunkstore import ChunkObjects
from volbackup.repo.config import DEFAULT_PACK, RepoConfig
from volbackup.repo.crypto import PlainChunks, SealedChunks
from volbackup.repo.manifest import CHUNKED_VERSION, TREE_VERSION
from volbackup.repo.packstore import PackedBlobStore
from volbackup.repo.parentrecord import RecordWriter
from volbackup.repo.sealing import Keyring
from volbackup.stream import archive, catalog
from volbackup.stream.archive import Packed, Progress
from volbackup.stream.tarstream import TarWalker

ARCHIVE_SUFFIX = ".tar.zst"
TREE_SUFFIX = ".tree"       # a tree snapshot's `archive`: a name only, no object has it

# (packed, finish): `finish()` completes the catalogue once the data is written, and
# returns the manifest's `catalog` field.
Written = tuple[Packed, Callable[[], dict]]


class Layout:
    """What both layouts share: a blob store, built once when first needed, with the
    cipher the repository's keys give (an encrypted one needs the key to build it)."""

    name: str
    chunked: bool
    packed = False          # blobs in packs, found through an index
    data_suffix: str        # of a snapshot's data blob next to its manifest
    trees = False           # snapshots are tree ones: no data or catalogue object beside
    catalog_suffix: str     # of its catalogue's blob (or list of pieces)

    def __init__(self, backend: Backend, keyring: Keyring | None = None):
        self._backend, self._keyring = backend, keyring
        self._blobs: BlobStore | None = None
        self._blobs_made = threading.Lock()
        self.held: locking.Lock | None = None    # the lock this process holds now

    @property
    def encrypted(self) -> bool:
        return self._keyring is not None

    @property
    def blobs(self) -> BlobStore:
        """The blob store, its cipher fixed when it is built: the key is loaded only by
        commands that read or write chunks (list and unlock hold none)."""
        with self._blobs_made:
            if self._blobs is None:
                cipher = self._keyring.cipher() if self._keyring is not None else PlainChunks()
                self._blobs = self._make_store(cipher)
            return self._blobs

    def _make_store(self, cipher: PlainChunks | SealedChunks) -> BlobStore:
        return LooseChunkStore(ChunkObjects(self._backend, cipher))

    def flush_blobs(self) -> None:
        """Every blob saved is durable and findable (before a manifest names it)."""
        with self._blobs_made:
            store = self._blobs
        if store is not None:
            store.flush()

    def forget_blobs(self) -> None:
        """What the blob store knows is stored is dropped (a lock begins or ends)."""
        with self._blobs_made:
            if self._blobs is not None:
                self._blobs.forget()

    def stores_chunks_like(self, other: "Layout") -> bool:
        """Both chunked and both plain: a chunk has the same name (the sha256 of its
        plaintext) and the same stored form in both, so a copy moves them as stored."""
        return self.chunked and other.chunked and not self.encrypted and not other.encrypted

    def pack(self, tar_chunks: Iterable[bytes], out: BinaryIO, level: int, progress: Progress,
             check_existing: bool, catalog_key: str, later: ExitStack,
             record: RecordWriter | None = None) -> Written:
        raise NotImplementedError

    def fields(self, packed: Packed) -> dict:
        """The manifest fields this layout sets (besides the catalogue's)."""
        raise NotImplementedError

    def catalog_cut_key(self) -> bytes:
        """The key of catalogue version 2's cuts (a tree snapshot's catalogue)."""
        raise RepositoryError("a tree snapshot is read in a repository with a config (it "
                              "has none: removed?)")


class ArchiveLayout(Layout):
    """One archive per snapshot. Its blob store (plain) only ever reads: a chunked snapshot
    found in a repository without a config (its config removed) is read as a plain one."""

    name = "archive"
    chunked = False
    data_suffix = ARCHIVE_SUFFIX
    catalog_suffix = catalogs.ARCHIVE_SUFFIX

    def pack(self, tar_chunks: Iterable[bytes], out: BinaryIO, level: int, progress: Progress,
             check_existing: bool, catalog_key: str, later: ExitStack,
             record: RecordWriter | None = None) -> Written:
        cat = catalogs.ArchiveCatalogWriter(
            later.enter_context(self._backend.open_write(catalog_key)), level)
        packed = archive.pack(tar_chunks, out, level, progress,
                              lambda walker: catalog.record(walker, cat.add))
        return packed, cat.finish

    def fields(self, packed: Packed) -> dict:
        return {}


class ChunkedLayout(Layout):
    """Chunks in the blob store, a chunk list per snapshot; the config says how to cut."""

    name = "chunked"
    chunked = True
    whole_digest = True     # a sha256 of the whole tar stream in the manifest (tar_sha256)
    data_suffix = chunks.LIST_SUFFIX
    catalog_suffix = catalogs.LIST_SUFFIX

    def __init__(self, backend: Backend, config: RepoConfig, keyring: Keyring | None):
        super().__init__(backend, keyring)
        self.config = config

    def pack(self, tar_chunks: Iterable[bytes], out: BinaryIO, level: int, progress: Progress,
             check_existing: bool, catalog_key: str, later: ExitStack,
             record: RecordWriter | None = None) -> Written:
        """`check_existing` (copy): the chunks the store holds already are read back and
        checked, and written again if wrong; only in a plain repository (an encrypted
        one's chunks open only with an identity, which a writer to it does not hold)."""
        cat = catalogs.ChunkedCatalogWriter(self.blobs, level)
        packed = self._pack_chunks(tar_chunks, out, level, progress, check_existing,
                                   lambda walker: catalog.record(walker, cat.add))
        return packed, lambda: cat.finish(self._backend, catalog_key)

    def _pack_chunks(self, tar_chunks: Iterable[bytes], out: BinaryIO | None, level: int,
                     progress: Progress, check_existing: bool,
                     on_walker: Callable[[TarWalker], None],
                     tree: trees.TreeWriter | None = None) -> chunks.ChunkedPacked:
        """chunks.pack with this repository's store, cuts and keys (the chunker's seed and
        the member-name key come from an encrypted repository's key)."""
        key = self._keyring.key() if self._keyring is not None else None
        store = self.blobs
        return chunks.pack(tar_chunks, out, store, self.config, level, progress,
                           key.chunker_seed if key is not None else None, on_walker,
                           check_existing and not store.encrypted, self.whole_digest,
                           key.member_name_key if key is not None else None, tree)

    def sweep(self, min_age: timedelta, now: datetime, dry_run: bool, gone: Iterable[str],
              progress: sweep.ProgressFactory, waiting: pruneplan.Waiting | None = None
              ) -> sweep.ChunkSweep:
        """Remove what no chunk list names (prune's last step, under the exclusive lock)."""
        store = self.blobs
        assert isinstance(store, LooseChunkStore)
        return sweep.sweep(self._backend, store, min_age, now, dry_run, gone, progress)

    def fields(self, packed: Packed) -> dict:
        assert isinstance(packed, chunks.ChunkedPacked)
        return {"layout": "chunked", "format_version": CHUNKED_VERSION,
                "chunks": packed.chunks, "new_chunks": packed.new_chunks,
                "tar_sha256": packed.tar_sha256}


class PackedLayout(ChunkedLayout):
    """Tree snapshots whose blobs are kept in packs, found through an index."""

    name = "packed"
    packed = True
    trees = True
    whole_digest = False    # the blob ids and the tree's pieces cover every byte
    data_suffix = TREE_SUFFIX

    def pack(self, tar_chunks: Iterable[bytes], out: BinaryIO | None, level: int,
             progress: Progress, check_existing: bool, catalog_key: str,
             later: ExitStack, record: RecordWriter | None = None) -> Written:
        """The data's blobs named in a data tree, the catalogue (version 2) in pieces under
        a catalogue tree: tree pieces are blobs of kind TREE, so an unchanged re-backup
        stores nothing new but its manifest. `out` and `catalog_key` are not used.
        `record` is given every catalogue line and data blob stored (volbackup.repo.
        parentrecord); the other layouts take none."""
        cat = catalogtree.CatalogTreeWriter(self.blobs, level, self.catalog_cut_key(),
                                            record.line if record is not None else None)
        walkers: list[TarWalker] = []

        def on_walker(walker: TarWalker) -> None:
            walkers.append(walker)
            cat.record(walker)

        data = trees.TreeWriter(self.blobs, level, record.leaf if record is not None else None)
        packed = self._pack_chunks(tar_chunks, None, level, progress, check_existing,
                                   on_walker, data)
        walker = walkers[0]
        members_end = walker.end_marker_at if walker.end_marker_at is not None \
            else walker.bytes
        if record is not None:
            record.stream_ends(packed.bytes, members_end)
        return packed, lambda: cat.finish(members_end=members_end)

    def catalog_cut_key(self) -> bytes:
        if self._keyring is not None:
            return self._keyring.key().catalog_cut_key
        return catalogtree.plain_cut_key(self.config.id)

    def fields(self, packed: Packed) -> dict:
        assert isinstance(packed, chunks.ChunkedPacked) and packed.data is not None
        return {"layout": "chunked", "format_version": TREE_VERSION, "chunks": None,
                "new_chunks": packed.new_chunks, "tar_sha256": None,
                "data": packed.data.to_fields()}

    def _make_store(self, cipher: PlainChunks | SealedChunks) -> BlobStore:
        return PackedBlobStore(self._backend, cipher, self.config.pack_size or DEFAULT_PACK,
                               before_index=self._confirm_held)

    def _confirm_held(self) -> None:
        """Before an index object is written: this process's lock is still its own
        (volbackup.repo.locking.Lock.confirm), so a prune that broke it as stale never
        finds packs indexed after it judged them unindexed."""
        if self.held is not None:
            self.held.confirm()

    def sweep(self, min_age: timedelta, now: datetime, dry_run: bool, gone: Iterable[str],
              progress: sweep.ProgressFactory, waiting: pruneplan.Waiting | None = None
              ) -> sweep.ChunkSweep:
        """Under the prune lock (volbackup.repo.pruneplan): backups go on meanwhile."""
        store = self.blobs
        assert isinstance(store, PackedBlobStore)
        return packsweep.sweep(self._backend, store, min_age, now, dry_run, gone, progress,
                               lock=self.held.info.key if self.held else "", waiting=waiting)


def layout_for(backend: Backend, config: RepoConfig | None,
               keyring: Keyring | None) -> Layout:
    """The layout a repository's config asks for (none: the archive layout)."""
    if config is None:
        return ArchiveLayout(backend)
    if config.packed:
        return PackedLayout(backend, config, keyring)
    return ChunkedLayout(backend, config, keyring)

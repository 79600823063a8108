"""Reading snapshots: the checked tar stream of one (whole, or the entries a selection
takes), its catalogue, and what to say when a piece of it goes missing while it is read
(one job of Repository, which stays the façade). The reader asks the repository for
manifests, keys and locks, and reads data through its backend and blob store.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from volbackup.errors import (BlobMissing, ChunkMissing, NotFound, RemovedWhileRead,
                              VolbackupError)
from volbackup.repo import catalogs, catalogtree, chunked, locking, parentfiles, partial
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.blobstore import BlobStore
from volbackup.repo.manifest import Manifest, RevealedManifest
from volbackup.repo.manifests import archive_key, catalog_key
from volbackup.repo.trees import TreeRoot, walk
from volbackup.stream import archive, catalog
from volbackup.stream.archive import Progress, no_progress
from volbackup.stream.catalog import CatalogEntry, Selection
from volbackup.stream.chunks import read_chunks

if TYPE_CHECKING:
    from volbackup.repo.repository import Repository

T = TypeVar("T")
KEEP_SELECTED = 10_000  # selected entries kept from the first pass over a catalogue


class SnapshotReader:
    """The read path of one repository (`repo`, the façade: manifests, keys, locks)."""

    def __init__(self, repo: "Repository"):
        self._repo = repo

    @property
    def backend(self) -> Backend:
        return self._repo.backend

    @property
    def blobs(self) -> BlobStore:
        return self._repo.blobs

    @contextmanager
    def open_archive(self, manifest: Manifest) -> Iterator[Iterator[bytes]]:
        """The stored bytes of the blob next to the manifest (archive or chunk list)."""
        key = archive_key(manifest)
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
            self._repo.load(manifest.snapshot)
            return error
        except NotFound:
            pass
        except VolbackupError:
            return error  # there, but unreadable: said by the error itself
        try:
            pruning = [lock for lock in self._repo.locks()
                       if lock.kind in (locking.EXCLUSIVE, locking.PRUNE)]
        except VolbackupError:
            pruning = []
        by = (f"by a prune that is running ({pruning[0].describe()})" if pruning
              else "by a prune that has finished since (or by hand)")
        return RemovedWhileRead(
            f"snapshot {manifest.snapshot} was removed from repository {self._repo.describe()} "
            f"while it was read, {by}: {error}; the repository is not damaged, read "
            f"another snapshot")

    def unpacker(self, manifest: Manifest, progress: Progress = no_progress,
                 selection: Selection | None = None
                 ) -> archive.Unpacker | chunked.ChunkedUnpacker | partial.PartialUnpacker:
        """A checked reader of the snapshot's tar stream: `chunks()` yields it, holding
        back the end until everything checked out (volbackup.stream.archive.Unpacker).
        With a `selection`, of the entries it selects only (see `select`)."""
        manifest = self._repo.reveal(manifest)
        if selection is not None and not selection.everything:
            return self.partial(manifest, self.select(manifest, selection), progress)
        if not manifest.chunked:
            return _ArchiveUnpacker(self, manifest, progress)
        if manifest.tree:
            return _TreeUnpacker(self, manifest, progress)
        return _ChunkedUnpacker(self, manifest, progress)

    def catalog(self, manifest: Manifest) -> Iterator[CatalogEntry]:
        """The snapshot's catalogue entries, checked; read from the whole snapshot for
        one written before catalogues existed. A damaged catalogue raises at the end
        (IntegrityError), after the entries before the damage."""
        manifest = self._repo.reveal(manifest)
        if manifest.catalog is None:
            return catalog.walk(self.unpacker(manifest).chunks())
        if manifest.tree:
            return self.watched(manifest, catalogtree.entries(
                self.blobs, manifest.catalog, manifest.bytes,
                self._repo.layout.catalog_cut_key(), f"snapshot {manifest.snapshot}"))
        key = catalog_key(manifest.snapshot, manifest.chunked)
        pieces = catalogs.read_pieces(self.backend, self.blobs, key, manifest.catalog,
                                      f"snapshot {manifest.snapshot}")
        return self.watched(manifest, catalogs.entries(pieces, manifest.bytes))

    def reusable_runs(self, manifest: Manifest) -> Iterator[parentfiles.ParentRun]:
        """The runs of members a backup whose parent is this snapshot may take whole, in
        stream order (volbackup.repo.parentfiles); none but from a tree snapshot."""
        manifest = self._repo.reveal(manifest)
        if not manifest.tree or not isinstance(manifest.catalog, dict):
            return iter(())
        lines = catalogtree.parent_lines(
            self.blobs, manifest.catalog, manifest.bytes,
            self._repo.layout.catalog_cut_key(), f"snapshot {manifest.snapshot}")
        return self.watched(manifest, parentfiles.parent_runs(
            lines, walk(self.blobs, _data_root(manifest)),
            manifest.bytes - archive.END_MARKER))

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
        manifest = self._repo.reveal(manifest)
        if not manifest.chunked:
            def spans(wanted):
                return partial.cut_spans(_ArchiveUnpacker(self, manifest, no_progress).chunks(),
                                         wanted)
        elif manifest.tree:
            root = _data_root(manifest)

            def spans(wanted):
                return self.watched(manifest, partial.tree_spans(self.blobs, root, wanted))
        else:
            whole = self.unpacker(manifest)

            def spans(wanted):
                return self.watched(manifest, partial.chunked_spans(
                    lambda: _open_list(self, manifest), self.blobs, wanted,
                    whole.check_list))
        return partial.PartialUnpacker(entries, spans, progress)


class _ArchiveUnpacker(archive.Unpacker):
    """An Unpacker that opens the archive itself when read."""

    def __init__(self, reader: SnapshotReader, manifest: RevealedManifest, progress: Progress):
        super().__init__((), manifest.sha256, manifest.stored_bytes, progress, manifest.bytes)
        self._reader, self._manifest = reader, manifest

    def chunks(self) -> Iterator[bytes]:
        return self._reader.watched(self._manifest, self._read())

    def _read(self) -> Iterator[bytes]:
        with self._reader.open_archive(self._manifest) as stored:
            self._stored = stored
            yield from super().chunks()


class _Watched:
    """An unpacker of a snapshot that says when the snapshot was removed while it was
    read (SnapshotReader.missing)."""

    _reader: SnapshotReader
    _manifest: RevealedManifest

    def chunks(self) -> Iterator[bytes]:
        return self._reader.watched(self._manifest, super().chunks())  # type: ignore[misc]


class _ChunkedUnpacker(_Watched, chunked.ChunkedUnpacker):
    def __init__(self, reader: SnapshotReader, manifest: RevealedManifest, progress: Progress):
        super().__init__(lambda: _open_list(reader, manifest), reader.blobs, manifest.sha256,
                         manifest.chunks or 0, manifest.tar_sha256 or "", manifest.bytes,
                         progress)
        self._reader, self._manifest = reader, manifest


class _TreeUnpacker(_Watched, chunked.TreeUnpacker):
    def __init__(self, reader: SnapshotReader, manifest: RevealedManifest, progress: Progress):
        super().__init__(reader.blobs, _data_root(manifest), manifest.bytes, progress)
        self._reader, self._manifest = reader, manifest


def _data_root(manifest: Manifest) -> TreeRoot:
    """The root of a tree snapshot's data tree (checked in bounds)."""
    return TreeRoot.from_fields(manifest.data, f"snapshot {manifest.snapshot}")


@contextmanager
def _open_list(source: SnapshotReader, manifest: Manifest) -> Iterator[object]:
    key = archive_key(manifest)
    try:
        with source.backend.open_read(key) as reader:
            yield reader
    except BlobNotFound:
        raise BlobMissing(
            f"chunk list {key} of snapshot {manifest.snapshot} is missing") from None

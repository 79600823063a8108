"""How a restore or an extract reads its snapshot: whole, or the part a selection takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository
from volbackup.stream.archive import Progress
from volbackup.stream.archive import no_progress as ignore_progress
from volbackup.stream.catalog import CatalogEntry, Selection


@dataclass
class Reader:
    """A snapshot to read: whole, or the entries a selection takes."""
    repo: Repository
    manifest: Manifest
    entries: Callable[[], Iterator[CatalogEntry]] | None = None  # None: the whole snapshot

    @property
    def total(self) -> int | None:
        """Tar bytes to expect, for progress: unknown for a part (counting them would
        read a large selection's catalogue once more)."""
        return self.manifest.bytes if self.entries is None else None

    def size(self) -> tuple[int, int]:
        """Tar bytes and entries of what is read (a part: one pass over its entries)."""
        if self.entries is None:
            return self.manifest.bytes, self.manifest.entries
        tar_bytes = entries = 0
        for entry in self.entries():
            tar_bytes += entry.end - entry.at
            entries += 1
        return tar_bytes, entries

    def unpacker(self, progress: Progress = ignore_progress):
        if self.entries is None:
            return self.repo.unpacker(self.manifest, progress)
        return self.repo.partial(self.manifest, self.entries, progress)


def reader_for(repo: Repository, manifest: Manifest, selection: Selection | None) -> Reader:
    """Reads the catalogue through now (Repository.select) so that an include matching
    nothing, or a damaged catalogue, fails before a volume or directory is made or replaced."""
    if selection is None or selection.everything:
        return Reader(repo, manifest)
    return Reader(repo, manifest, repo.select(manifest, selection))

"""The files of a parent snapshot that a backup may take whole instead of reading them
(the files cache: volbackup.ops.filescache).

A file qualifies when its catalogue line holds the host's stat data (`st`, recorded only
for a file whose stat matched tar's header and was not changed in the seconds before
that backup) and its member (headers, data, padding) is exactly a run of whole blobs of
the data tree: members of 4 KiB or more are cut so (volbackup.stream.chunker,
cut_each_member); smaller ones share blobs with their neighbours and are read again.

The catalogue and the data tree are walked side by side in stream order, each piece
checked against its id as everywhere else: memory is one file's blob list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from volbackup.stream.catalog import CatalogEntry


@dataclass(frozen=True)
class ParentFile:
    entry: CatalogEntry                  # its line: path, stat, sha256, `st`
    length: int                          # bytes of its member in the stream
    blobs: tuple[tuple[str, int], ...]   # (id, length) of the blobs that are the member


def parent_files(entries: Iterable[CatalogEntry], leaves: Iterable[tuple[str, int]],
                 members_end: int) -> Iterator[ParentFile]:
    """The reusable files of a snapshot, in stream order, from its catalogue `entries`
    and its data tree's `leaves`; `members_end`: where its end-of-archive marker starts."""
    leaves = iter(leaves)
    leaf = next(leaves, None)
    leaf_at = 0                         # stream offset where `leaf` starts

    def blobs_of(at: int, end: int) -> tuple[tuple[str, int], ...] | None:
        nonlocal leaf, leaf_at
        while leaf is not None and leaf_at + leaf[1] <= at:
            leaf_at += leaf[1]
            leaf = next(leaves, None)
        if leaf is None or leaf_at != at:
            return None                 # it starts inside a blob: shared with others
        run = []
        while leaf is not None and leaf_at + leaf[1] <= end:
            run.append(leaf)
            leaf_at += leaf[1]
            leaf = next(leaves, None)
        return tuple(run) if leaf_at == end and run else None

    held: CatalogEntry | None = None
    for entry in entries:
        if held is not None:
            yield from _file(held, entry.at, blobs_of)
        held = entry
    if held is not None:
        yield from _file(held, members_end, blobs_of)


def _file(entry: CatalogEntry, end: int, blobs_of) -> Iterator[ParentFile]:
    if entry.type != "file" or entry.st is None or entry.sha256 is None:
        return
    blobs = blobs_of(entry.at, end)
    if blobs is not None:
        yield ParentFile(entry, end - entry.at, blobs)

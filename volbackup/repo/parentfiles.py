"""The files of a parent snapshot that a backup may take whole instead of reading them
(the files cache: volbackup.ops.filescache).

What can be taken is a **run**: consecutive members that start where a blob of the data
tree starts and end where one ends, so that the run is exactly those blobs. A member of
4 KiB or more is a run of its own (volbackup.stream.chunker, cut_each_member, gives it
blobs of its own); smaller members are grouped into shared blobs, and a group is a run.
A run is reusable when every member in it is a regular file whose catalogue line holds
the host's stat data (`st`, recorded only for a file whose stat matched tar's header and
was not changed in the seconds before that backup); one directory, symlink or hard link
in a group makes the group be read again.

The catalogue and the data tree are walked side by side in stream order, each piece
checked against its id as everywhere else: memory is one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from volbackup.stream.catalog import CatalogEntry


@dataclass(frozen=True)
class ParentRun:
    entries: tuple[CatalogEntry, ...]    # their lines: path, stat, sha256, `st`
    lines: tuple[bytes, ...]             # ... as stored
    ends: tuple[int, ...]                # where each member ends in the stream
    blobs: tuple[tuple[str, int], ...]   # (id, length) of the blobs that are the run

    @property
    def start(self) -> int:
        return self.entries[0].at


def parent_runs(lines: Iterable[tuple[bytes, CatalogEntry]],
                leaves: Iterable[tuple[str, int]], members_end: int) -> Iterator[ParentRun]:
    """The reusable runs of a snapshot, in stream order, from its catalogue (each line and
    its entry) and its data tree's `leaves`; `members_end`: where its end-of-archive
    marker starts."""
    leaves = iter(leaves)
    boundary = 0                        # the next blob boundary at or after the position
    taken: list[tuple[str, int]] = []   # leaves of the open run

    def reaches(pos: int) -> bool | None:
        """Take the leaves up to `pos`; True when a blob ends exactly there, None when
        the leaves end before it (a tree shorter than its catalogue: nothing more to
        take, rather than a run that grows with the rest of the catalogue)."""
        nonlocal boundary
        while boundary < pos:
            leaf = next(leaves, None)
            if leaf is None:
                return None
            taken.append(leaf)
            boundary += leaf[1]
        return boundary == pos

    run: list[CatalogEntry] = []
    raw: list[bytes] = []
    ends: list[int] = []
    for (line, entry), end in _with_ends(lines, members_end):
        run.append(entry)
        raw.append(line)
        ends.append(end)
        whole = reaches(end)
        if whole is None:
            return
        if whole:
            if all(_reusable(e) for e in run):
                yield ParentRun(tuple(run), tuple(raw), tuple(ends), tuple(taken))
            run.clear()
            raw.clear()
            ends.clear()
            taken.clear()


def _with_ends(lines: Iterable[tuple[bytes, CatalogEntry]], members_end: int
               ) -> Iterator[tuple[tuple[bytes, CatalogEntry], int]]:
    held: tuple[bytes, CatalogEntry] | None = None
    for line in lines:
        if held is not None:
            yield held, line[1].at
        held = line
    if held is not None:
        yield held, members_end


def _reusable(entry: CatalogEntry) -> bool:
    return entry.type == "file" and entry.st is not None and entry.sha256 is not None

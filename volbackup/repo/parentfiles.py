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

from typing import Iterable, Iterator, NamedTuple

from volbackup.repo.catalogtree import ParentLine


class ParentRun(NamedTuple):
    members: tuple[ParentLine, ...]      # their lines, in stream order
    blobs: tuple[tuple[str, int], ...]   # (id, length) of the blobs that are the run


def parent_runs(lines: Iterable[ParentLine], leaves: Iterable[tuple[str, int]],
                members_end: int) -> Iterator[ParentRun]:
    """The reusable runs of a snapshot, in stream order, from its catalogue's lines
    (volbackup.repo.catalogtree.parent_lines) and its data tree's `leaves`;
    `members_end`: where its end-of-archive marker starts."""
    leaves = iter(leaves)
    boundary = 0                        # the next blob boundary at or after the position
    taken: list[tuple[str, int]] = []   # leaves of the open run
    run: list[ParentLine] = []
    reusable = True
    for line in lines:
        run.append(line)
        reusable = reusable and line.key is not None
        end = line.end
        if end > members_end:
            return
        while boundary < end:           # take the leaves up to the member's end
            leaf = next(leaves, None)
            if leaf is None:            # a tree shorter than its catalogue: nothing more
                return                  # to take, rather than a run that grows with the rest
            taken.append(leaf)
            boundary += leaf[1]
        if boundary == end:             # a blob ends with the member: a run
            if reusable:
                yield ParentRun(tuple(run), tuple(taken))
            run.clear()
            taken.clear()
            reusable = True

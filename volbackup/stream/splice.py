"""Put the members a backup takes from its parent back where they belong in the stream
tar writes of the rest (the files cache: volbackup.ops.filescache).

Tar is given the plan's names to read, in the plan's order; the plan says, between them,
which members are taken whole (`Reused`). A light walker finds where each of tar's
members starts: the reused members planned before it go out just there, then the
member's `HostStat`, then its bytes. Bytes go out as soon as no member can start inside
them, so memory is one piece and the headers being read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from volbackup.errors import IntegrityError
from volbackup.stream.reuse import HostStat, HostsInOrder, Reused
from volbackup.stream.tarstream import TarWalker, normal_name, shown


@dataclass(frozen=True)
class Read:
    """A member of the plan that tar reads: its name, and the stat taken just before."""

    name: str
    host: HostStat | None


Planned = Read | Reused


def splice(tar_pieces: Iterable[bytes], plan: Iterable[Planned], reused: bool = True
           ) -> Iterator[bytes | Reused | HostStat | HostsInOrder]:
    """The stream of the plan: tar's bytes (the plan's `Read` members, in order) with the
    reused members between them. IntegrityError when tar's members are not the plan's
    (a file gone, or a name tar wrote otherwise): the read is discarded and made again.
    `reused` False (the plan takes nothing: a first backup, or --read-all): tar's bytes as
    they come, after a HostsInOrder, so that the stream is walked once, not twice."""
    if not reused:
        yield from _hosts_only(tar_pieces, plan)
        return
    walker = TarWalker(keep_first=False, unique=False)
    starts: list[tuple[int, str]] = []
    walker.on_member = lambda start, data_at, entry: starts.append((start, entry.name))
    items = iter(plan)
    held = bytearray()      # tar's bytes not given out yet
    out_at = 0              # tar's stream offset of held[0]

    def give(upto: int) -> Iterator[bytes]:
        nonlocal out_at
        n = upto - out_at
        if n > 0:
            yield bytes(held[:n])
            del held[:n]
            out_at = upto

    def before(name: str) -> Iterator[Reused | HostStat]:
        for item in items:
            if isinstance(item, Reused):
                yield item
                continue
            _check_planned(item, name)
            if item.host is not None:
                yield item.host
            return
        raise IntegrityError(f"tar archived {shown(name)}, which was not planned")

    for piece in tar_pieces:
        walker.feed(piece)
        # where a member may still start: the end marker's first block is not a member's
        safe = walker.settled if walker.end_marker_at is None else walker.end_marker_at
        if not starts and not held and safe == walker.bytes:
            out_at += len(piece)        # the common case: inside a member's data
            yield piece
            continue
        held += piece
        for start, name in starts:
            yield from give(start)
            yield from before(name)
        starts.clear()
        if walker.ended:
            yield from give(walker.end_marker_at)
            for item in items:
                if not isinstance(item, Reused):
                    raise IntegrityError(f"tar did not archive {shown(item.name)}")
                yield item
            yield from give(walker.bytes)
        else:
            yield from give(safe)
    if held:
        yield bytes(held)


def _check_planned(item: Read, name: str) -> None:
    """Refuse a member of tar's other than the one the plan has next."""
    if normal_name(item.name) != normal_name(name):
        raise IntegrityError(f"tar archived {shown(name)} where {shown(item.name)} "
                             f"was planned")


def _hosts_only(tar_pieces: Iterable[bytes], plan: Iterable[Planned]
                ) -> Iterator[bytes | HostsInOrder]:
    items = iter(plan)

    def host_for(name: str) -> HostStat | None:
        item = next(items, None)
        if not isinstance(item, Read):
            raise IntegrityError(f"tar archived {shown(name)}, which was not planned")
        _check_planned(item, name)
        return item.host

    yield HostsInOrder(host_for)
    yield from tar_pieces
    for item in items:
        raise IntegrityError(f"tar did not archive {shown(item.name)}")

"""Foreign tar archives made into the tar stream a volbackup snapshot holds.

`import` takes what other tools wrote (`tar -C /data -c . | zstd`, offen's tar.gz with
members under `backup/NAME/`, loomchild's tar.bz2 of `./`): plain tar, gzip, bzip2, xz
or zstd, told apart by their magic bytes, never by a file name. `normalised()` yields a
tar stream whose first member is the root `./` and whose names all lie under it: the
form `restore` expects (docs/format.md).

Everything streams. The input is decompressed in bounded pieces (a tiny input may expand
to gigabytes: output is asked for OUTPUT_CHUNK at a time) and read by Python's tarfile in
stream mode; each member is written again as a PAX header (so xattrs, long names and
sub-second times survive) followed by its data, copied in pieces. The input's own bytes
pass a TarWalker too: it insists on the end-of-archive marker (tarfile stops at the first
zero block and would take a tar cut at a member boundary for a whole one) and refuses
members that would land outside the volume, exactly as for a stored archive. A name that
comes twice (after --strip-components) is refused too: restore would refuse it.

Memory is flat in the number of members: tarfile's list of the members read is emptied
as it goes (it keeps every TarInfo, about 480 bytes each, for random access we never
use), and the names seen are a NameSet (bounded, spilled to disk).
"""

from __future__ import annotations

import bz2
import lzma
import tarfile
import time
import zlib
from typing import BinaryIO, Callable, Iterator

import zstandard

from volbackup.errors import InputRefused, IntegrityError
from volbackup.stream import catalog
from volbackup.stream.archive import MAX_TAIL, OUTPUT_CHUNK
from volbackup.stream.chunks import READ_CHUNK
from volbackup.stream.names import NameSet
from volbackup.stream.tarstream import BLOCK, TarWalker, shown
from volbackup.stream.zstdframe import FrameWalker

FORMATS = ("tar", "gzip", "bzip2", "xz", "zstd")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zstd"))
# Of a member's PAX records, those that describe where it is or how it is stored: they
# are written anew for the normalised member (tarfile would let them win over its name).
_STALE_PAX = ("path", "linkpath", "size")
_SPARSE_PAX = "GNU.sparse."
ROOT_MODE = 0o755


def detect(head: bytes) -> str:
    """The format of an input from its first bytes (at least one tar block, if it has one)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= BLOCK and (head[257:262] == b"ustar" or head[:BLOCK] == bytes(BLOCK)
                               or _checksum_ok(head[:BLOCK])):
        return "tar"
    if not head:
        raise InputRefused("the input is empty")
    raise InputRefused("the input is not a tar archive, nor one compressed with gzip, "
                       "bzip2, xz or zstd (by its first bytes)")


def _checksum_ok(block: bytes) -> bool:
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    return stored == 256 + sum(block[:148]) + sum(block[156:])


def _head(reader: BinaryIO) -> bytes:
    """The first READ_CHUNK bytes (fewer only at the end of the input)."""
    pieces, size = [], 0
    while size < READ_CHUNK and (piece := reader.read(READ_CHUNK - size)):
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


def _pieces(head: bytes, reader: BinaryIO) -> Iterator[bytes]:
    if head:
        yield head
    while piece := reader.read(READ_CHUNK):
        yield piece


def _with_library(kind: str, make: Callable, error: type) -> Callable[[Iterator[bytes]], Iterator[bytes]]:
    """A decompressor of concatenated streams (gzip members, bzip2 and xz streams), with
    output bounded per call, that raises InputRefused when the input is corrupt or cut."""

    def run(compressed: Iterator[bytes]) -> Iterator[bytes]:
        d, fed = make(), False
        try:
            for data in compressed:
                while data:
                    out, data, fed = d.decompress(data, OUTPUT_CHUNK), b"", True
                    if out:
                        yield out
                    while not d.eof and not d.needs_input:
                        if out := d.decompress(b"", OUTPUT_CHUNK):
                            yield out
                    if d.eof:  # a next stream may follow (pigz, pbzip2, cat a.gz b.gz)
                        data, d, fed = d.unused_data, make(), False
            if fed and not d.eof:
                raise InputRefused(f"the {kind} input is truncated: its last stream does not end")
        except error as e:
            raise InputRefused(f"the {kind} input is corrupt ({e})") from None

    return run


class _Gzip:
    """zlib's decompressobj with the needs_input/eof face of bz2's and lzma's."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(self._d.unconsumed_tail + data, max_length)


class _Source:
    """A file-like reader over the compressed pieces, checking zstd frames as they pass."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces, self._pending = pieces, b""
        self.frames = FrameWalker()

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._pieces, b"")
            self._feed(self._pending)
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):  # one frame after another (zstd -T, cat a.zst b.zst)
            if self.frames.ended:
                self.frames = FrameWalker()
            view = view[self.frames.feed_some(view):]


def _zstd(compressed: Iterator[bytes]) -> Iterator[bytes]:
    source = _Source(compressed)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_CHUNK,
                                                           read_across_frames=True)
        while out := reader.read(OUTPUT_CHUNK):
            yield out
        source.frames.finish()
    except zstandard.ZstdError as e:
        raise InputRefused(f"the zstd input is corrupt ({e})") from None
    except IntegrityError as e:
        raise InputRefused(f"the zstd input is {str(e).removeprefix('archive is ')}") from None


_DECOMPRESS = {
    "tar": lambda pieces: pieces,
    "gzip": _with_library("gzip", _Gzip, zlib.error),
    "bzip2": _with_library("bzip2", bz2.BZ2Decompressor, OSError),
    "xz": _with_library("xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO), lzma.LZMAError),
    "zstd": _zstd,
}


class _TarSource:
    """The decompressed tar bytes as a file for tarfile, each byte also fed to a
    TarWalker (structure, end marker, members outside the volume)."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces, self._pending = pieces, b""
        self.walker = TarWalker(keep_first=False, unique=False)  # _members checks names

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._pieces, b"")
            self.walker.feed(self._pending)
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def drain(self) -> None:
        """Read to the end of the input: the end marker must come, and little after it."""
        while self.read(READ_CHUNK):
            walker = self.walker
            if walker.end_marker_at is not None and walker.bytes - walker.end_marker_at > MAX_TAIL:
                raise InputRefused("the input has data after the end of its tar archive")
        self.walker.finish()


class Normalised:
    """What `normalised()` read: the input's format and members, and what it kept."""

    def __init__(self) -> None:
        self.format = ""
        self.members = 0        # in the input
        self.kept = 0           # written out (the root included)
        self.root_added = False


def normalised(reader: BinaryIO, strip: int = 0, seen: Normalised | None = None,
               now: Callable[[], float] = time.time) -> Iterator[bytes]:
    """The tar stream of a snapshot made of the foreign archive `reader` yields, with
    `strip` leading name components dropped from each member (as GNU tar's
    --strip-components; members left with no name are dropped, but a directory left with
    none is the root). Raises InputRefused for anything that is not a whole, safe tar."""
    seen = seen or Normalised()
    head = _head(reader)
    seen.format = detect(head)
    source = _TarSource(_DECOMPRESS[seen.format](_pieces(head, reader)))
    try:
        yield from _members(source, strip, seen, now)
        source.drain()
    except IntegrityError as e:
        raise InputRefused(str(e).replace("the archive is crafted or damaged",
                                          "the input is crafted or damaged")) from None
    except tarfile.TarError as e:
        _explain(source)  # the walker's reason (truncated, corrupt) says more, if it has one
        raise InputRefused(f"the input is not a valid tar archive ({e})") from None
    except EOFError:
        raise InputRefused("the input is truncated inside a tar member") from None


def _explain(source: _TarSource) -> None:
    """Raise InputRefused with the walker's reason for what tarfile refused, if it has one."""
    try:
        source.drain()
    except IntegrityError as e:
        raise InputRefused(str(e)) from None


def _members(source: _TarSource, strip: int, seen: Normalised,
             now: Callable[[], float]) -> Iterator[bytes]:
    tar = tarfile.open(fileobj=source, mode="r|", errors="surrogateescape")
    root_done = False
    root_from: str | None = None  # the input's name of the member that became the root
    names = NameSet()
    while (member := tar.next()) is not None:
        tar.members.clear()  # tarfile keeps them all otherwise (memory per member)
        seen.members += 1
        name = _stripped(member.name, strip)
        if name is None or (name == "" and not member.isdir()):
            continue  # stripped away (a file cannot be the root)
        if name == "" and root_done:
            _second_root(member.name, root_from, strip)
            continue  # the same root again: the first one's metadata stands
        if not root_done:
            root_done = True
            if name == "":
                root_from = _stripped(member.name, 0)
            else:
                seen.root_added = True
                seen.kept += 1
                yield _header(_root(now()))
        if name and not names.add(name):
            _repeated(member.name, name, strip)
        if member.islnk():
            target = _stripped(member.linkname, strip)
            if not target:
                raise InputRefused(
                    f"tar member {shown(member.name)} is a hard link to "
                    f"{shown(member.linkname)}, which --strip-components {strip} removes")
            member.linkname = "./" + target
        unheld = catalog.unheld(member.mtime, member.uid, member.gid)
        if unheld:  # tarfile would fail to write it again (a NaN), or no reader would take it
            raise InputRefused(f"tar member {shown(member.name)} has {unheld}, which no file "
                               f"system holds (the input is crafted or damaged)")
        member.name = "./" + name if name else "./"
        member.pax_headers = {k: v for k, v in member.pax_headers.items()
                              if k not in _STALE_PAX and not k.startswith(_SPARSE_PAX)}
        if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES:
            member.type = tarfile.REGTYPE  # GNU sparse and contiguous files: written in full
        seen.kept += 1
        yield _header(member)
        if member.isreg() and member.size:
            yield from _data(tar.extractfile(member), member.size)
    if not root_done:
        what = (f"--strip-components {strip} leaves nothing of its {seen.members} members"
                if seen.members else "it holds no members")
        raise InputRefused(f"the input has nothing to import: {what}")
    yield bytes(2 * BLOCK)


def _repeated(name: str, stripped: str, strip: int) -> None:
    """Refuse a member whose name an earlier member had (a snapshot holds each once)."""
    how = f" (after --strip-components {strip}: {shown(stripped)})" if strip else ""
    raise InputRefused(
        f"tar member {shown(name)} has the name of an earlier member{how}; refused (a "
        f"volume cannot hold it twice: the input is crafted or damaged, or holds several "
        f"trees)")


def _second_root(name: str, root_from: str | None, strip: int) -> None:
    """A second member that --strip-components makes the root: the same directory again is
    fine, another one means the input holds several trees, which would be merged."""
    if root_from is not None and _stripped(name, 0) == root_from:
        return
    first = "a root made for members outside any directory" if root_from is None \
        else shown(root_from or ".")
    raise InputRefused(
        f"--strip-components {strip} makes both {first} and {shown(name)} the volume root: "
        f"the input holds several directory trees, which would be merged (import each "
        f"one on its own)")


def _stripped(name: str, strip: int) -> str | None:
    """`name` relative and without its first `strip` components ('' for the root itself),
    or None when it has too few. Absolute names and `..` were refused by the walker."""
    parts = [p for p in name.split("/") if p and p != "."]
    if len(parts) < strip:
        return None
    return "/".join(parts[strip:])


def _root(mtime: float) -> tarfile.TarInfo:
    root = tarfile.TarInfo("./")
    root.type, root.mode, root.mtime = tarfile.DIRTYPE, ROOT_MODE, int(mtime)
    return root


def _header(member: tarfile.TarInfo) -> bytes:
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _data(fileobj, size: int) -> Iterator[bytes]:
    left = size
    while left:
        piece = fileobj.read(min(left, READ_CHUNK))
        if not piece:
            raise InputRefused("the input is truncated inside a tar member")
        left -= len(piece)
        yield piece
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)

"""A snapshot's catalogue: one JSON line per tar entry, in stream order.

Written during backup from what the tar walker sees (nothing is read twice): each
entry's path, type, size, mode, owner, mtime, link target, the sha256 of a file's data,
and where the entry sits in the tar stream (`at`: its first header block, `data`: its
data). With those offsets a chunked repository reads only the chunks that hold the
entries wanted (volbackup.repo.catalogs). docs/format.md describes a line.

Read back, a catalogue is untrusted input: every line is checked (types, a safe
relative path, offsets inside the stream) before anything uses it.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from volbackup.errors import IntegrityError
from volbackup.stream import chunks
from volbackup.stream.tarstream import BLOCK, Entry, TarWalker, normal_name, shown

CATALOG_VERSION = 1
TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
         tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
         tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
         tarfile.GNUTYPE_SPARSE: "file"}
KINDS = frozenset(TYPES.values()) | {"other"}
MAX_LINE = 1 << 20  # a path is at most 4 KiB on Linux, a link target too; longer: crafted
# The values a line may hold: what a file system can (Linux keeps a signed 64-bit time in
# seconds, which GNU tar and PAX headers carry; uids and gids are 32-bit there, tar headers
# hold up to 64 bits, shown as they are). Outside these, a tar entry is refused when a
# backup or import reads it, and a catalogue line as damaged: nothing is ever written that
# no reader accepts, and nothing accepted breaks a reader (`ls -l`, `diff`).
MAX_INT = (1 << 63) - 1             # ids, sizes and stream offsets
MTIME_RANGE = (-(1 << 63), (1 << 63) - 1)
MAX_MODE = 0o7777                   # permission bits, setuid, setgid and sticky
HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"path": str, "type": str, "size": int, "mode": int, "uid": int, "gid": int,
           "mtime": (int, float), "link": str, "at": int, "data": int, "sha256": str}


@dataclass(frozen=True)
class CatalogEntry:
    path: str           # relative to the volume root, no `./`; the root is `.`
    type: str           # file, dir, symlink, hardlink, char, block, fifo, other
    size: int           # data bytes (0 but for files)
    mode: int           # permission bits
    uid: int
    gid: int
    mtime: float
    link: str           # symlink or hard link target ("" otherwise)
    at: int             # stream offset of the entry's first header block
    data: int           # stream offset of its data (the end of its headers)
    sha256: str | None  # of a file's data
    st: tuple[int, int, int] | None = None  # inode, mtime and ctime (ns) on the host

    @property
    def end(self) -> int:
        """Stream offset just past the entry's data and padding."""
        return self.data + -(-self.size // BLOCK) * BLOCK

    def to_line(self) -> bytes:
        out = {"path": self.path, "type": self.type, "size": self.size, "mode": self.mode,
               "uid": self.uid, "gid": self.gid, "mtime": self.mtime, "link": self.link,
               "at": self.at, "data": self.data}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return (json.dumps(out, separators=(",", ":")) + "\n").encode()

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        del out["st"]           # the files cache's, not the file's
        return out


def entry_of(at: int, data_at: int, entry: Entry, content: str | None) -> CatalogEntry:
    """The catalogue entry of a tar entry; IntegrityError for values no file system holds
    (a crafted archive: a NaN or far out time, a negative or huge owner)."""
    mtime = entry.mtime
    bad = unheld(mtime, entry.uid, entry.gid)
    if bad:
        raise IntegrityError(f"tar entry {shown(entry.name)} has {bad}, which no file system "
                             f"holds; refused (crafted or damaged)")
    made = CatalogEntry(
        path=normal_name(entry.name), type=TYPES.get(entry.type, "other"),
        size=entry.size if content is not None else 0, mode=entry.mode & MAX_MODE,
        uid=entry.uid, gid=entry.gid, mtime=int(mtime) if mtime == int(mtime) else mtime,
        link=normal_name(entry.linkname) if entry.type == tarfile.LNKTYPE else entry.linkname,
        at=at, data=data_at, sha256=content,
        st=entry.host.key if entry.host is not None and content is not None else None)
    bad = invalid_field(made)
    if bad:
        raise IntegrityError(f"tar entry {shown(entry.name)} has {bad} "
                             f"{getattr(made, bad)!r}, which no file system holds; refused "
                             f"(crafted or damaged)")
    return made


def unheld(mtime: float, uid: int, gid: int) -> str | None:
    """What of a tar member's time and owner no file system holds (`mtime nan`), or None:
    what a backup or import refuses before a catalogue line is made of it."""
    if not in_range(mtime):
        return f"mtime {mtime!r}"
    for name, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= MAX_INT:
            return f"{name} {str(value)[:40]}"
    return None


def in_range(mtime: float) -> bool:
    return math.isfinite(mtime) and MTIME_RANGE[0] <= mtime <= MTIME_RANGE[1]


def _text_ok(text: str) -> bool:
    """Whether a name is one a tar header gives (undecodable bytes as surrogateescape)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def invalid_field(entry: CatalogEntry) -> str | None:
    """The first field of `entry` outside what a volume can hold, or None. The writer and
    the reader apply the same check: a genuine snapshot always reads back."""
    for name in ("uid", "gid", "size", "at", "data"):
        if not 0 <= getattr(entry, name) <= MAX_INT:
            return name
    if not 0 <= entry.mode <= MAX_MODE:
        return "mode"
    if not in_range(entry.mtime):
        return "mtime"
    if entry.sha256 is not None and not HEX64.fullmatch(entry.sha256):
        return "sha256"
    for name in ("path", "link"):
        if not _text_ok(getattr(entry, name)):
            return name
    return None


def record(walker: TarWalker, sink: Callable[[bytes], None]) -> None:
    """Have `walker` send each entry's catalogue line to `sink` as the entry passes; an
    entry no volume can hold (a name or link of over MAX_LINE) fails the stream."""
    def on_entry(at: int, data_at: int, entry: Entry, content: str | None) -> None:
        line = entry_of(at, data_at, entry, content).to_line()
        if len(line) > MAX_LINE:
            raise IntegrityError(f"tar entry {entry.name[:80]!r}... has a name or link target "
                                 f"of over {MAX_LINE >> 20} MiB: no volume holds one")
        sink(line)

    walker.on_entry = on_entry


def parse_line(line: bytes, stream_bytes: int) -> CatalogEntry:
    """One catalogue line, checked; IntegrityError if it is not one this writer makes."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise IntegrityError(f"catalogue has an invalid line {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise IntegrityError(f"catalogue has an invalid line {line[:80]!r}")
    data.setdefault("sha256", None)
    for name, kind in _FIELDS.items():
        value = data.get(name)
        if name == "sha256" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise IntegrityError(f"catalogue line has an invalid {name}: {line[:80]!r}")
    entry = CatalogEntry(**{k: data[k] for k in _FIELDS})
    bad = invalid_field(entry)
    if bad:
        raise IntegrityError(f"catalogue line has an invalid {bad}: {line[:80]!r}")
    path = entry.path
    if (not path or path.startswith("/") or path != normal_name(path)
            or ".." in path.split("/") or entry.type not in KINDS
            or entry.data < entry.at + BLOCK
            or entry.end > stream_bytes or (entry.size and entry.type != "file")):
        raise IntegrityError(f"catalogue line is not a valid entry: {line[:80]!r}")
    return entry


def parse(lines: Iterable[bytes], stream_bytes: int) -> Iterator[CatalogEntry]:
    """The entries of a catalogue, each checked, offsets in stream order."""
    last_end = 0
    for line in lines:
        if len(line) > MAX_LINE:
            raise IntegrityError(f"catalogue has a line of over {MAX_LINE} bytes")
        entry = parse_line(line, stream_bytes)
        if entry.at < last_end:
            raise IntegrityError(f"catalogue entries overlap at {entry.path!r}")
        last_end = entry.end
        yield entry


def split_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    return chunks.split_lines(pieces, MAX_LINE)


def walk(tar_pieces: Iterable[bytes]) -> Iterator[CatalogEntry]:
    """The catalogue of a tar stream, made by reading it (snapshots written before
    catalogues existed); the stream must be a checked one (an unpacker's)."""
    walker = TarWalker(keep_first=False, unique=False)  # checked: see above
    found: list[CatalogEntry] = []
    walker.on_entry = lambda at, data_at, e, content: found.append(
        entry_of(at, data_at, e, content))
    for piece in tar_pieces:
        walker.feed(piece)
        yield from found
        found.clear()
    yield from found


def normal_path(path: str) -> str:
    """A path given on the command line as a catalogue path (`/etc/x`, `./etc/x/`, `etc/x`
    are `etc/x`; the root is `.`); ValueError for one with `..` or a NUL."""
    if "\x00" in path:
        raise ValueError("a path cannot hold a NUL byte")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"path {path!r} has a '..' component: paths are inside the volume")
    return "/".join(parts) or "."


def under(path: str, top: str) -> bool:
    """Whether `path` is `top` or lies below it (the root `.` holds everything)."""
    return top == "." or path == top or path.startswith(top + "/")


@dataclass(frozen=True)
class Selection:
    """Which entries a partial read wants: those under an `include` path (all, if none),
    minus those under an `exclude` path. Paths as normal_path makes them."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.include and not self.exclude

    def wants(self, path: str) -> bool:
        if self.include and not any(under(path, top) for top in self.include):
            return False
        return not any(under(path, top) for top in self.exclude)


def selected(entries: Iterable[CatalogEntry], selection: Selection,
             targets: frozenset[str] = frozenset(),
             matched: dict[str, int] | None = None,
             missing_targets: set[str] | None = None) -> Iterator[CatalogEntry]:
    """The entries a partial stream holds, in stream order: the root, the wanted ones,
    the directories above each (their owner and mode), and the files in `targets`
    (hard link targets the wanted links need). Memory: the directory chain only.
    `matched` counts the entries each include path selected; `missing_targets` collects
    the targets of wanted hard links that are not themselves wanted."""
    chain: list[CatalogEntry] = []  # the directories above the current entry
    emitted_up_to = -1              # `at` of the last entry yielded
    for entry in entries:
        while chain and not under(entry.path, chain[-1].path):
            chain.pop()
        wanted = entry.path == "." or selection.wants(entry.path) or entry.path in targets
        if wanted:
            if matched is not None:
                for top in selection.include:
                    if under(entry.path, top):
                        matched[top] = matched.get(top, 0) + 1
            if (missing_targets is not None and entry.type == "hardlink"
                    and not selection.wants(entry.link)):
                missing_targets.add(entry.link)
            for parent in chain:
                if parent.at > emitted_up_to:
                    emitted_up_to = parent.at
                    yield parent
            if entry.at > emitted_up_to:
                emitted_up_to = entry.at
                yield entry
        if entry.type == "dir" and entry.path != ".":
            chain.append(entry)

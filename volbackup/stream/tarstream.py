"""A streaming tar walker: checks the structure of a tar stream as bytes pass by.

It never buffers member data: it reads each header, skips the member's data by its
size, and insists on the end-of-archive marker. That is what tells a complete tar
from one the engine cut short (the engine may end its HTTP stream cleanly even
when the tar inside it is broken). It refuses members that would land outside the
directory they are extracted into (docs/format.md), and a name that comes twice, before
their bytes are passed on.
It also keeps the first member, which in our archives is the volume root `./`, and what
the engine's extractor must be given again afterwards (`TarWalker.metadata_tar`).
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from volbackup.errors import IntegrityError, VolbackupError
from volbackup.stream.names import NameSet

BLOCK = 512
_EXTENDED = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_ZERO_BLOCK = bytes(BLOCK)
# PAX and GNU long-name data is held in memory until its entry. Linux caps one xattr at
# 64 KiB and a path at 4 KiB; 16 MiB is far above any real entry, and bounds a crafted one.
MAX_EXTENDED = 16 << 20


@dataclass
class Entry:
    """One tar member as its headers describe it (PAX and GNU long names applied)."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)

    device: tuple[int, int] | None = None
    host: object | None = None  # volbackup.stream.reuse.HostStat: this host's stat of it

    @property
    def is_root(self) -> bool:
        return self.type == tarfile.DIRTYPE and self.name.rstrip("/") in (".", "")


def normal_name(name: str) -> str:
    """`./a/b/` and `a/b` are the same entry; the root is `.`."""
    name = name.rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name or "."


def entry_digest(entry: Entry, content: str | None) -> tuple:
    """What must match for two entries to be the same: type, permission bits, owner,
    size and content hash (files), link target (links), device numbers, mtime seconds."""
    target = normal_name(entry.linkname) if entry.type == tarfile.LNKTYPE else entry.linkname
    return (entry.type.decode(), entry.mode & 0o7777, entry.uid, entry.gid,
            entry.size if content is not None else None, content, target or None,
            entry.device, int(entry.mtime))


def digest_differences(expected: dict, actual: dict, limit: int = 5) -> list[str]:
    """Human-readable differences between two digest maps, at most `limit` of them."""
    out = []
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            if name not in actual:
                out.append(f"{name}: missing")
            elif name not in expected:
                out.append(f"{name}: unexpected")
            else:
                fields = ("type", "mode", "uid", "gid", "size", "content", "link", "device", "mtime")
                changed = [f for f, a, b in zip(fields, expected[name], actual[name]) if a != b]
                out.append(f"{name}: {', '.join(changed)} differ")
            if len(out) >= limit:
                break
    return out


def _unsafe(name: str) -> str | None:
    """Why a member name (or hard link target) leads outside the extraction directory."""
    if name.startswith("/"):
        return "has an absolute name"
    if ".." in name and ".." in name.split("/"):
        return "has '..' in its name"
    return None


def _key(name: str) -> str:
    """The path a name reaches: `./a//b/./c/` is `a/b/c`, the root is ``."""
    key = name[2:] if name.startswith("./") else name
    if "//" in key or key[:1] == "/" or key.endswith("/") or ("." in key and (
            key == "." or key.startswith("./") or "/./" in key or key.endswith("/."))):
        return "/".join(p for p in key.split("/") if p and p != ".")
    return key  # the usual `./a/b`, quickly


def shown(name: str, limit: int = 200) -> str:
    """A member name for a one-line message: quoted, with undecodable bytes as \\xNN and
    control characters escaped (a name may hold a newline), cut at `limit` characters."""
    out = []
    for c in name[:limit]:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c in "\\'":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "'" + "".join(out) + ("..." if len(name) > limit else "") + "'"


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class _Header:
    """The fields of one 512-byte header that the walker uses.

    Parsed as tarfile.TarInfo.frombuf does (same checks, same quirks: a V7 directory is a
    regular file named `x/`, directory names lose trailing slashes, the ustar prefix is
    joined for all but GNU types), without building a TarInfo: a third of the cost.
    """

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "device")

    @classmethod
    def parse(cls, block: bytes, entries: int) -> _Header:
        try:
            checksum = _number(block[148:156])
            if checksum != 256 + _byte_sum(block) - sum(block[148:156]) \
                    and checksum != 256 + sum(_SIGNED.unpack_from(block)):
                raise ValueError("bad checksum")
            h = cls()
            h.type = block[156:157]
            h.mode, h.uid, h.gid = (_number(block[100:108]), _number(block[108:116]),
                                    _number(block[116:124]))
            h.size, h.mtime = _number(block[124:136]), _number(block[136:148])
            h.device = (_number(block[329:337]), _number(block[337:345])) \
                if h.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else None
        except ValueError as e:
            raise IntegrityError(f"corrupt tar header after {entries} entries ({e})") from None
        h.name, h.linkname = _text(block[0:100]), _text(block[157:257])
        if h.type == tarfile.AREGTYPE and h.name.endswith("/"):
            h.type = tarfile.DIRTYPE
        if h.type == tarfile.DIRTYPE:
            h.name = h.name.rstrip("/")
        prefix = _text(block[345:500])
        if prefix and h.type not in tarfile.GNU_TYPES:
            h.name = prefix + "/" + h.name
        return h


_SIGNED = struct.Struct("148b8x356b")


def _byte_sum(block: bytes) -> int:
    """The sum of a 512-byte block's bytes (a header's checksum), from Adler-32 of each
    half: its first part is 1 + the sum of the bytes modulo 65,521, exact for 256 bytes
    (at most 65,280). zlib's C loop costs a quarter of sum() over the bytes, which a
    backup of small files paid twice a member."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _text(field: bytes) -> str:
    end = field.find(0)
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    end = field.find(0)
    digits = (field if end < 0 else field[:end]).strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise ValueError("invalid header") from None


def parse_pax(data: bytes) -> dict[str, str]:
    """Parse PAX extended header records (`LEN KEY=VALUE\\n`)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\x00":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise IntegrityError("corrupt PAX header in tar stream") from None
        if length <= 0 or space < 0 or pos + length > len(data):
            raise IntegrityError("corrupt PAX header in tar stream")
        key, sep, value = data[space + 1:pos + length - 1].partition(b"=")
        if not sep or data[pos + length - 1:pos + length] != b"\n":
            raise IntegrityError("corrupt PAX header in tar stream")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarWalker:
    """Feed it the bytes of a tar stream in any chunking; `finish()` raises if incomplete."""

    def __init__(self, keep_first: bool = True, digest: bool = False, unique: bool = True):
        """`digest=True` also records, per entry, what `entry_digest` describes.
        `unique=False` skips the check that no name comes twice, for a stream that
        another walker checks (it costs a NameSet of every name)."""
        self.digests: dict[str, tuple] | None = {} if digest else None
        self._names: NameSet | None = NameSet() if unique else None
        self._data_left = 0         # member data bytes (without padding) still to come
        self._hasher = None         # sha256 of the current member's data, when digesting
        self._current: Entry | None = None
        self.bytes = 0
        self.entries = 0
        self.first: Entry | None = None
        self._keep_first = keep_first
        self._skip = 0              # data bytes (with padding) still to pass over
        self._header = bytearray()  # a header block being assembled
        self._ext_kind: bytes | None = None  # type of the extended header being collected
        self._ext_size = 0
        self._ext = bytearray()
        self._ext_pending = 0       # extended header bytes since the last entry
        self._pending_pax: dict[str, str] = {}
        self._pending_name: str | None = None
        self._pending_link: str | None = None
        self._zero_blocks = 0
        self.ended = False
        self.end_marker_at: int | None = None  # stream offset where the end marker starts
        self._symlinks = NameSet()  # normalised names of the symlink members so far
        self._any_symlink = False   # (a NameSet's len() is a Python call: this is not)
        self._dirs: list[tuple[str, Entry]] = []  # the directory entries above this point
        self.relinks: list[tuple[Entry, Entry | None]] = []  # see metadata_tar
        self._capabilities: dict[str, str] = {}  # file name -> its security.capability
        self.relinks_dropped = 0
        self._member_start: int | None = None  # offset of the first header of this entry
        # Told of each entry as its header is read: (offset of its first header block,
        # offset of its data, the entry). Content-defined chunking cuts there.
        self.on_member: Callable[[int, int, Entry], None] | None = None
        # Told of each entry once its data has passed: (offset of its first header block,
        # offset of its data, the entry, sha256 hex of its data or None). The catalogue.
        self.on_entry: Callable[[int, int, Entry, str | None], None] | None = None
        self._current_at = (0, 0)
        self._host = None           # a HostStat told for the next member (files cache)
        self.host_for = None        # ... or asked for each member by name (HostsInOrder)
        # Told of each run of members the files cache took whole: (the offset of the
        # first, the ReusedMembers).
        self.on_reused: Callable[[int, Sequence], None] | None = None
        # The oldest and newest mtimes of entries other than symlinks, with an entry of
        # each (its name): what a restore through
        # an extractor that cannot set every time must warn of (volbackup.ops.restore).
        self.oldest: tuple[float, str] = (math.inf, "")
        self.newest: tuple[float, str] = (-math.inf, "")

    @property
    def settled(self) -> int:
        """Every entry that starts before this stream offset has been told to on_member."""
        if self._member_start is not None:
            return self._member_start
        return self.bytes - len(self._header)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.bytes += len(view)
        pos, n = 0, len(view)
        while pos < n:
            if self.ended:
                return  # trailing padding after the end marker carries nothing
            if self._skip:
                take = min(self._skip, n - pos)
                if self._ext_kind is not None:
                    self._ext += view[pos:pos + take]
                    if len(self._ext) >= self._ext_size:
                        self._end_extended()
                elif self._data_left:
                    part = min(take, self._data_left)
                    if self._hasher is not None:
                        self._hasher.update(view[pos:pos + part])
                    self._data_left -= part
                    if not self._data_left:
                        self._record_digest()
                self._skip -= take
                pos += take
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos:pos + take]
            pos += take
            if len(self._header) == BLOCK:
                block = bytes(self._header)
                self._header.clear()
                self._on_header(block, self.bytes - n + pos - BLOCK)

    def _on_header(self, block: bytes, offset: int) -> None:
        if block == _ZERO_BLOCK:
            if not self._zero_blocks:
                self.end_marker_at = offset
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self.ended = True
            return
        if self._zero_blocks:
            raise IntegrityError("tar stream has a zero block in the middle")
        if self._member_start is None:
            self._member_start = offset
        info = _Header.parse(block, self.entries)
        if info.type in _EXTENDED:
            self._ext_pending += info.size
            if self._ext_pending > MAX_EXTENDED:  # they are held in memory until used
                raise IntegrityError(
                    f"tar extended headers of {self._ext_pending} bytes before entry "
                    f"{self.entries + 1}, more than the {MAX_EXTENDED} a volume can need")
            self._ext_kind = info.type
            self._ext_size = info.size
            self._ext.clear()
            self._skip = _padded(info.size)
            if not self._skip:
                self._end_extended()
            return
        pax, self._pending_pax = self._pending_pax, {}
        self._ext_pending = 0
        name = pax.get("path") or self._pending_name or info.name
        link = pax.get("linkpath") or self._pending_link or info.linkname
        self._pending_name = self._pending_link = None
        try:
            size = int(pax["size"]) if "size" in pax else info.size
            uid, gid = int(pax.get("uid", info.uid)), int(pax.get("gid", info.gid))
            mtime = float(pax.get("mtime", info.mtime))
        except ValueError:
            raise IntegrityError(f"corrupt PAX numbers for tar entry {name!r}") from None
        if size < 0:
            raise IntegrityError(f"negative size for tar entry {name!r}")
        if _SPARSE_NAME in pax:  # GNU tar, Go and Python's tarfile extract it under this name
            self._check_safe(name, _key(name), info.type, link)
            name = pax[_SPARSE_NAME]
        key = _key(name)
        self._check_safe(name, key, info.type, link)
        if self._names is not None and not self._names.add(key):
            raise IntegrityError(
                f"tar member {shown(name)} has the name of an earlier member; refused (a "
                f"volume cannot hold it twice: the archive is crafted or damaged)")
        entry = Entry(name=name, type=info.type, mode=info.mode, uid=uid, gid=gid,
                      mtime=mtime, size=size, linkname=link, pax=pax,
                      device=info.device)
        host, self._host = self._host, None
        if self.host_for is not None:
            host = self.host_for(name)
        if host is not None and info.type in tarfile.REGULAR_TYPES \
                and _SPARSE_NAME not in pax and host.describes(entry):
            entry.host = host
        if info.type != tarfile.SYMTYPE:  # an extractor sets a symlink's time another way
            if mtime < self.oldest[0]:
                self.oldest = (mtime, name)
            if mtime > self.newest[0]:
                self.newest = (mtime, name)
        self.entries += 1
        if self.first is None and self._keep_first:
            self.first = entry
        if info.type == tarfile.DIRTYPE:
            self._enter_directory(entry)
        elif info.type == tarfile.LNKTYPE:
            self._note_relink(entry)
        elif _CAPABILITY in pax and info.type in tarfile.REGULAR_TYPES:
            self._note_capability(entry)
        has_data = info.type in tarfile.REGULAR_TYPES or info.type not in tarfile.SUPPORTED_TYPES
        start, self._member_start = self._member_start, None
        if self.on_member is not None:
            self.on_member(start, offset + BLOCK, entry if has_data else replace(entry, size=0))
        self._skip = _padded(size) if has_data else 0
        self._data_left = size if has_data else 0
        if self.digests is not None or self.on_entry is not None:
            self._current, self._current_at = entry, (start, offset + BLOCK)
            self._hasher = hashlib.sha256() if has_data else None
            if not self._data_left:
                self._record_digest()

    @property
    def between_members(self) -> bool:
        """No member is being read: the next byte starts a header (or the end marker)."""
        return not (self._skip or self._header or self._ext_kind is not None
                    or self._member_start is not None or self._zero_blocks)

    def note_host(self, host) -> None:
        """This host's stat of the next member (a HostStat), kept in its Entry.host when
        its header agrees (volbackup.ops.filescache)."""
        self._host = host

    def pass_members(self, members: Sequence) -> None:
        """Count members (volbackup.stream.reuse.ReusedMember) that the stream holds here
        but whose bytes do not pass this walker (the files cache takes them whole from a
        parent snapshot): offsets after them stay those of the stream, and `on_reused` is
        told of them, a run at once (a member at a time cost an unchanged file a micro-
        second more)."""
        if not self.between_members or self.ended:
            raise IntegrityError("a reused member came inside another member")
        start = self.bytes
        oldest, newest = self.oldest, self.newest
        length = 0
        for member in members:
            length += member.length
            if member.mtime < oldest[0]:
                oldest = (member.mtime, member.name)
            if member.mtime > newest[0]:
                newest = (member.mtime, member.name)
        self.oldest, self.newest = oldest, newest
        self.bytes += length
        self.entries += len(members)
        if self.on_reused is not None and members:
            self.on_reused(start, members)

    def _check_safe(self, name: str, key: str, type_: bytes, link: str) -> None:
        """Refuse a member that would be written outside the directory it is extracted into
        (`key`: its name normalised by `_key`, which the caller needs too).

        A real volume cannot produce one: its names are relative, without `..`, and its
        directories are directories. So a member that is absolute, has a `..` component,
        or lies under an earlier symlink member (`link -> /`, then `link/x`), and a hard
        link whose target is absolute, has `..` or lies under a symlink, can only come from
        a crafted or damaged archive. Symlink targets are not checked: a symlink is stored
        as it was (`-> /etc/passwd` and `-> ../x` are normal), only never followed.

        Memory: the normalised names of the symlink members seen (hard links to them
        count as symlinks too), in a NameSet (bounded: spilled to disk beyond
        names.MEMORY_NAMES); nothing else.
        """
        problem = _unsafe(name) if name[:1] == "/" or ".." in name else None
        if problem:
            raise IntegrityError(f"tar member {shown(name)} {problem}; refused (a volume "
                                 f"cannot hold it: the archive is crafted or damaged)")
        if self._any_symlink and key:
            under = self._under_symlink(key)
            if under is not None:
                raise IntegrityError(
                    f"tar member {shown(name)} lies under the symlink member {shown(under)}; "
                    f"refused (a volume cannot hold it: the archive is crafted or damaged)")
        if type_ == tarfile.LNKTYPE:
            problem = _unsafe(link)
            target = _key(link)
            under = self._under_symlink(target) if self._any_symlink and not problem else None
            if under is not None:
                problem = f"lies under the symlink member {shown(under)}"
            if problem:
                raise IntegrityError(
                    f"tar member {shown(name)} is a hard link to {shown(link)}, which "
                    f"{problem}; refused (a volume cannot hold it: the archive is crafted "
                    f"or damaged)")
            if self._any_symlink and target in self._symlinks:
                self._symlinks.add(key)  # a hard link to a symlink is that symlink again
        elif type_ == tarfile.SYMTYPE:
            self._symlinks.add(key)
            self._any_symlink = True

    def _under_symlink(self, key: str) -> str | None:
        """The earlier symlink member that is a proper ancestor of `key`, if any."""
        if "" in self._symlinks and key:
            return "."
        slash = key.find("/")
        while slash >= 0:
            if key[:slash] in self._symlinks:
                return key[:slash]
            slash = key.find("/", slash + 1)
        return None

    def _enter_directory(self, entry: Entry) -> None:
        """Keep the chain of directory entries down to this one (memory: the path depth)."""
        key = _key(entry.name)
        while self._dirs and not _is_ancestor(self._dirs[-1][0], key):
            self._dirs.pop()
        self._dirs.append((key, entry))

    def _note_capability(self, entry: Entry) -> None:
        """Remember a file's capabilities, for a hard link to it (GNU tar does not repeat
        xattrs on a hard link member; the engine's writer does)."""
        if len(self._capabilities) >= MAX_RELINKS:
            self.relinks_dropped += 1
            return
        self._capabilities[_key(entry.name)] = entry.pax[_CAPABILITY]

    def _note_relink(self, entry: Entry) -> None:
        """Remember a hard link with setuid/setgid bits or file capabilities (which the
        engine's chown clears too), and its directory's entry."""
        capability = entry.pax.get(_CAPABILITY)
        if capability is None and self._capabilities:
            capability = self._capabilities.get(_key(entry.linkname))
        if not (entry.mode & _SETID or capability):
            return
        if len(self.relinks) >= MAX_RELINKS:
            self.relinks_dropped += 1
            return
        if capability and _CAPABILITY not in entry.pax:
            entry = replace(entry, pax={**entry.pax, _CAPABILITY: capability})
        parent = _key(entry.name).rpartition("/")[0]
        found = next((d for key, d in reversed(self._dirs) if key == parent), None)
        self.relinks.append((entry, found))

    def metadata_tar(self, mount: str) -> bytes | None:
        """What the engine's extractor needs to be given again, at `/`, after it has
        extracted the stream at `/<mount>`: a tar for that second PUT, or None.

        - The volume root: the engine ignores `./` when extracting into a directory, but
          applies a directory entry named after the mount point.
        - Hard links with setuid/setgid bits or file capabilities. The engine chowns
          every hard link it makes, which clears those bits and the security.capability
          xattr on the shared inode, and puts the mode back only when it finds the
          link's target relative to its working directory, `/`: true for `data/x`, never
          for `./x`; it re-applies the xattrs the link member carries, which GNU tar
          does not repeat on links (so the file's are remembered). So each such link is
          made again as `<mount>/x`, and its directory's entry is given again too, since
          re-making a link changes the directory's mtime (an archive not in directory
          order may lack it: then that mtime is lost). At most MAX_RELINKS links (and
          files with capabilities) are remembered, about 1 KiB each; a restore through
          the engine fails beyond that.
        """
        if self.relinks_dropped:
            raise VolbackupError(
                f"the archive has more than {MAX_RELINKS} hard links (or files) with setuid, "
                f"setgid or file capabilities; the engine cannot restore them all: restore "
                f"with --direct")
        members: list[tarfile.TarInfo] = []
        root = self.first
        if root is not None and root.is_root:
            members.append(_again(root, mount))
        dirs: dict[str, Entry] = {}
        for link, parent in self.relinks:
            key, target = _key(link.name), _key(link.linkname)
            for name in (key, target):
                under = self._under_symlink(name) if self._any_symlink else None
                if name in self._symlinks or under is not None:
                    raise IntegrityError(
                        f"tar member {shown(link.name)} is a hard link whose name or target "
                        f"became a symlink later in the archive; refused (a volume cannot "
                        f"hold it: the archive is crafted or damaged)")
            if parent is not None and _key(parent.name):
                dirs[_key(parent.name)] = parent
        members += [_again(d, f"{mount}/{key}") for key, d in dirs.items()]
        for link, _ in self.relinks:
            info = _again(link, f"{mount}/{_key(link.name)}")
            info.type, info.linkname = tarfile.LNKTYPE, f"{mount}/{_key(link.linkname)}"
            members.append(info)
        if not members:
            return None
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info in members:
                tar.addfile(info)
        return buf.getvalue()

    def _record_digest(self) -> None:
        if self._current is None:
            return
        entry, self._current = self._current, None
        content = self._hasher.hexdigest() if self._hasher is not None else None
        self._hasher = None
        if self.digests is not None:
            self.digests[normal_name(entry.name)] = entry_digest(entry, content)
        if self.on_entry is not None:
            self.on_entry(*self._current_at, entry, content)

    def _end_extended(self) -> None:
        data = bytes(self._ext[:self._ext_size])
        kind, self._ext_kind = self._ext_kind, None
        self._ext.clear()
        if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            self._pending_pax.update(parse_pax(data))
        elif kind == tarfile.GNUTYPE_LONGNAME:
            self._pending_name = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self._pending_link = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        # global headers (XGLTYPE) carry nothing we act on

    def finish(self) -> None:
        """Raise IntegrityError unless the stream ended exactly at the end-of-archive marker."""
        if self.ended:
            return
        if self._skip or self._header or self._ext_kind is not None:
            raise IntegrityError(
                f"tar stream is truncated inside entry {self.entries} "
                f"(after {self.bytes} bytes)")
        raise IntegrityError(
            f"tar stream is truncated: no end-of-archive marker after {self.entries} entries")


MAX_RELINKS = 10_000
_SETID = 0o6000
_CAPABILITY = "SCHILY.xattr.security.capability"
_SPARSE_NAME = "GNU.sparse.name"  # the real name of a sparse file in GNU's PAX formats


def _is_ancestor(parent: str, key: str) -> bool:
    return parent == "" or key.startswith(parent + "/")


def _again(entry: Entry, name: str) -> tarfile.TarInfo:
    """A header that gives `entry`'s owner, mode, mtime and xattrs to `name` once more."""
    info = tarfile.TarInfo(name)
    info.type = entry.type
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime
    info.pax_headers = {k: v for k, v in entry.pax.items()
                        if k.startswith("SCHILY.") or k == "mtime"}  # mtime: all its digits
    return info

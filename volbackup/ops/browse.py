"""Looking into snapshots without restoring them: `ls`, `dump` and `diff`.

All three read a snapshot's catalogue (Repository.catalog: checked, in stream order) and
stream their results: memory stays flat whatever the number of entries, but for `diff`,
which keeps one side's entries in a dict (see `diff`). `dump` reads only the entries it
gives (Repository.partial, Repository.unpacker with a Selection): in a chunked repository
only the chunks that hold them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from volbackup.errors import NotFound, TargetNotEmpty, VolbackupError
from volbackup.ops.restore import resolve_ref
from volbackup.ops.transfer import FileInPlace
from volbackup.repo.manifest import Manifest
from volbackup.repo.partial import file_bytes
from volbackup.repo.repository import Repository
from volbackup.stream.catalog import CatalogEntry, Selection, normal_path, under


# -- ls

@dataclass
class Listing:
    """What `ls` lists: the snapshot, and its entries (an iterator: read it once)."""
    snapshot: str
    volume: str
    path: str                       # normalised; "." for the whole snapshot
    entries: Iterator[CatalogEntry]


def ls(repo: Repository, ref: str, path: str = ".", host: str | None = None) -> Listing:
    """The entries at and under `path` (a file: just it), in stream order. The iterator
    raises NotFound at its end if `path` matched nothing, IntegrityError where the
    catalogue is damaged. ValueError for a path with `..` (normal_path)."""
    top = normal_path(path)
    repo.check_secrets(reading=True)
    manifest = resolve_ref(repo, ref, host)
    return Listing(manifest.snapshot, manifest.volume, top, _listed(repo, manifest, top))


def _listed(repo: Repository, manifest: Manifest, top: str) -> Iterator[CatalogEntry]:
    found = False
    for entry in repo.catalog(manifest):
        if under(entry.path, top):
            found = True
            yield entry
    if not found:
        raise NotFound(f"snapshot {manifest.snapshot} has no {top!r}")


# -- dump

@dataclass
class DumpResult:
    snapshot: str
    path: str
    type: str       # "file" (its bytes) or "dir" (a tar stream of the subtree)
    bytes: int      # written
    file: str | None  # None: written to a stream


def dump(repo: Repository, ref: str, path: str, target: str | BinaryIO,
         force: bool = False, host: str | None = None) -> DumpResult:
    """Write entry `path` of snapshot `ref`: a file's bytes (a hard link: its target's),
    a directory (or the root) as a tar stream of its subtree, to the file named `target`
    (it appears only whole and checked; refused if it exists, unless `force`) or to the
    binary stream `target` (the last piece is held back until everything checked out:
    on an error the reader gets a short output and the exit code is not 0)."""
    top = normal_path(path)
    repo.check_secrets(reading=True)
    if isinstance(target, str) and not force:
        _refuse_existing(target)
    manifest = resolve_ref(repo, ref, host)
    entry = _entry(repo, manifest, top)
    if entry.type == "dir":
        selection = None if top == "." else Selection(include=(top,))
        pieces = repo.unpacker(manifest, selection=selection).chunks()
    elif entry.type in ("file", "hardlink"):
        if entry.type == "hardlink":
            entry = _entry(repo, manifest, entry.link, f"{top!r} (a hard link to it)")
            if entry.type != "file":
                raise VolbackupError(f"{top!r} is a hard link to {entry.path!r}, a "
                                     f"{entry.type}")
        data = repo.partial(manifest, lambda: iter([entry])).chunks()
        pieces = _held_back(file_bytes(data, entry))
    elif entry.type == "symlink":
        raise VolbackupError(f"{top!r} is a symbolic link to {entry.link!r}; dump what it "
                             f"points to by its path in the volume")
    else:
        raise VolbackupError(f"{top!r} is a {entry.type}: it has no bytes to dump")
    if isinstance(target, str):
        with FileInPlace(target, force) as out:
            written = _write(pieces, out)
        return DumpResult(manifest.snapshot, top, entry.type, written, target)
    written = _write(pieces, target)  # a reader gone early: BrokenPipeError (the CLI: 141)
    target.flush()
    return DumpResult(manifest.snapshot, top, entry.type, written, None)


def _refuse_existing(target: str) -> None:
    if os.path.lexists(target):
        raise TargetNotEmpty(f"{target} exists; nothing was written (give --force to "
                             f"replace it)")


def _entry(repo: Repository, manifest: Manifest, path: str, what: str = "") -> CatalogEntry:
    """The catalogue entry of `path`. The whole catalogue is read (and so checked) before
    any byte is given out."""
    found = None
    for entry in repo.catalog(manifest):
        if entry.path == path and found is None:
            found = entry
    if found is None:
        raise NotFound(f"snapshot {manifest.snapshot} has no {path!r}"
                       + (f", the target of {what}" if what else ""))
    return found


def _held_back(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`pieces`, each given only when the next arrived: the last one only once the
    source ended cleanly (its checks passed)."""
    last = None
    for piece in pieces:
        if last is not None:
            yield last
        last = piece
    if last is not None:
        yield last


def _write(pieces: Iterable[bytes], out: BinaryIO) -> int:
    written = 0
    for piece in pieces:
        out.write(piece)
        written += len(piece)
    return written


# -- diff

@dataclass(frozen=True)
class Change:
    """One entry that differs: `kind` is "+" (added), "-" (removed) or "M" (modified);
    `what` names what changed of a modified one (type, content, mode, owner, link)."""
    kind: str
    path: str
    type: str                # in the newer snapshot (the older, if removed)
    old_size: int | None     # None: added
    new_size: int | None     # None: removed
    what: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"change": {"+": "added", "-": "removed", "M": "modified"}[self.kind],
                "path": self.path, "type": self.type, "old_size": self.old_size,
                "new_size": self.new_size, "what": list(self.what)}


@dataclass
class DiffSummary:
    added: int = 0
    removed: int = 0
    modified: int = 0
    unchanged: int = 0
    bytes_added: int = 0     # data of added files, and the new data of changed content
    bytes_removed: int = 0   # data of removed files, and the old data of changed content

    def count(self, change: Change | None) -> None:
        if change is None:
            self.unchanged += 1
        elif change.kind == "+":
            self.added += 1
            self.bytes_added += change.new_size or 0
        elif change.kind == "-":
            self.removed += 1
            self.bytes_removed += change.old_size or 0
        else:
            self.modified += 1
            if "content" in change.what or "type" in change.what:
                self.bytes_added += change.new_size or 0
                self.bytes_removed += change.old_size or 0


@dataclass
class Diff:
    """The changes from `old` to `new` (an iterator: read it once); `summary` is complete
    when it has been read to its end."""
    old: str
    new: str
    changes: Iterator[Change]
    summary: DiffSummary


_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other")
_PACKED = struct.Struct("<BHQQQ32s")   # type, mode, uid, gid, size, sha256 (catalog's ranges)


def _compact(entry: CatalogEntry) -> bytes:
    """What diff compares of an entry, in about 70 bytes (the link target appended)."""
    digest = bytes.fromhex(entry.sha256) if entry.sha256 else b""
    return _PACKED.pack(_TYPES.index(entry.type), entry.mode, entry.uid, entry.gid,
                        entry.size, digest) + entry.link.encode("utf-8", "surrogateescape")


def _fields(packed: bytes) -> tuple:
    kind, mode, uid, gid, size, digest = _PACKED.unpack_from(packed)
    link = packed[_PACKED.size:].decode("utf-8", "surrogateescape")
    return _TYPES[kind], mode, (uid, gid), size, digest, link


def compare(path: str, old: bytes, new: bytes) -> Change | None:
    """The change between two compact entries of `path`, None if none."""
    if old == new:
        return None
    o_type, o_mode, o_owner, o_size, o_digest, o_link = _fields(old)
    n_type, n_mode, n_owner, n_size, n_digest, n_link = _fields(new)
    what = []
    if o_type != n_type:
        what.append("type")
    elif o_digest != n_digest or o_size != n_size:
        what.append("content")
    if o_mode != n_mode:
        what.append("mode")
    if o_owner != n_owner:
        what.append("owner")
    if o_link != n_link and o_type == n_type:
        what.append("link")
    return Change("M", path, n_type, o_size, n_size, tuple(what))


def diff(repo: Repository, old_ref: str, new_ref: str, host: str | None = None) -> Diff:
    """The entries added, removed and modified from snapshot `old_ref` to `new_ref`
    (modified: type, content by sha256, mode, owner or link target; mtime alone is no
    change). The side with fewer entries (manifest `entries`) is held in a dict of path ->
    compact entry (about 200 bytes an entry in CPython); the other is streamed. Changes
    come in the streamed side's order, then the held side's leftovers."""
    repo.check_secrets(reading=True)
    old = resolve_ref(repo, old_ref, host)
    new = resolve_ref(repo, new_ref, host)
    summary = DiffSummary()

    def changes() -> Iterator[Change]:
        hold_old = old.entries <= new.entries
        held_side, streamed_side = (old, new) if hold_old else (new, old)
        held = {e.path: _compact(e) for e in repo.catalog(held_side)}
        for entry in repo.catalog(streamed_side):
            mine = _compact(entry)
            theirs = held.pop(entry.path, None)
            if theirs is None:
                change = (Change("+", entry.path, entry.type, None, entry.size) if hold_old
                          else Change("-", entry.path, entry.type, entry.size, None))
            else:
                change = compare(entry.path, *((theirs, mine) if hold_old else (mine, theirs)))
            summary.count(change)
            if change is not None:
                yield change
        for path, packed in held.items():
            kind, _, _, size, _, _ = _fields(packed)
            change = (Change("-", path, kind, size, None) if hold_old
                      else Change("+", path, kind, None, size))
            summary.count(change)
            yield change

    return Diff(old.snapshot, new.snapshot, changes(), summary)

"""The backup host's own copy of what the files cache needs from its last snapshot of a
volume, for an encrypted repository (docs/design.md, "The files cache": "In an encrypted
repository").

A backup host of an encrypted repository holds the repository key but no identity: it
cannot open a snapshot's sealed catalogue, so it cannot read its parent's stat data from
the repository. borg keeps its files cache on the backup host for the same reason. So a
backup writes, beside the snapshot, a **parent record** into the host's cache directory:
the catalogue's lines and the data tree's leaves, exactly as it stored them. It appears
(atomically) only after the snapshot's manifest was written; the next backup of the volume
uses it only if it names the snapshot that backup would take as parent.

The host read those files in the clear already, so the record tells it nothing new. It is
still read as untrusted input, like a parent catalogue: its digests first (a damaged record
is not used: everything is read), then every line as parent_lines checks it; each blob it
names is taken only if the index holds it.

    record = zstd frame of the catalogue lines || zstd frame of the leaves
             (32-byte id || u32 LE length each) || JSON header || u32 LE header length
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import time
from typing import BinaryIO, Iterator

import zstandard

from volbackup.errors import IntegrityError
from volbackup.repo import catalogtree
from volbackup.repo.parentfiles import ParentRun, parent_runs
from volbackup.stream.catalog import MAX_LINE

CACHE_ENV = "VOLBACKUP_CACHE_DIR"
MAGIC = "volbackup parent record"
VERSION = 1
_LEAF = struct.Struct("<32sI")
_LENGTH = struct.Struct("<I")
_MAX_HEADER = 1 << 16
_READ = 1 << 20
_BATCH = 1 << 20     # bytes of lines or leaves handed to zstd at once
_TEMP = ".record-"
_RECORD_NAME = re.compile(r"[0-9a-f]{32}")   # record_path's names
ABANDONED = 7 * 86400   # seconds: a temporary record this old was left by a killed backup
STALE = 45 * 86400      # seconds: a record not replaced for this long is of a volume gone
                        # (more than a month: a monthly backup keeps its record)


def cache_root() -> str:
    """$VOLBACKUP_CACHE_DIR, else $XDG_CACHE_HOME/volbackup, else ~/.cache/volbackup."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "volbackup")


def record_path(root: str, repository_id: str, volume: str, host: str) -> str:
    """Where the record of `volume` backed up from `host` into a repository lives."""
    name = hashlib.sha256(f"{volume}\0{host}".encode()).hexdigest()[:32]
    return os.path.join(root, repository_id, "parents", name)


class RecordWriter:
    """Takes the lines and leaves of a snapshot as its writers store them; `publish`
    makes the record visible once the snapshot exists, `discard` drops it."""

    def __init__(self, path: str, volume: str):
        self._path, self._volume = path, volume
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _sweep(directory, keep=path)
        fd, self._tmp = tempfile.mkstemp(prefix=_TEMP, dir=directory)
        self._file = os.fdopen(fd, "wb")
        try:
            self._leaves = tempfile.TemporaryFile(dir=directory)
        except BaseException:       # the record file is not left to the week's sweep
            self._file.close()
            os.unlink(self._tmp)
            raise
        self._lines = zstandard.ZstdCompressor(level=3).stream_writer(
            self._file, closefd=False)
        self._leaves_out = zstandard.ZstdCompressor(level=1).stream_writer(
            self._leaves, closefd=False)
        self._line_digest, self._leaf_digest = hashlib.sha256(), hashlib.sha256()
        self.lines = self.leaves = 0
        self._line_buf, self._leaf_buf = bytearray(), bytearray()
        self._ends: tuple[int, int] | None = None   # the stream's bytes, its members' end

    def line(self, line: bytes) -> None:
        self._line_buf += line
        self.lines += 1
        if len(self._line_buf) >= _BATCH:
            self._drain_lines()

    def leaf(self, blob_id: str, length: int) -> None:
        self._leaf_buf += _LEAF.pack(bytes.fromhex(blob_id), length)
        self.leaves += 1
        if len(self._leaf_buf) >= _BATCH:
            self._drain_leaves()

    # Lines and leaves go to their compressor and digest in batches: each call into zstd
    # lets go of the GIL, and getting it back behind the packer's threads costs far more
    # than compressing one line (a call a line took the files cache's time up by half).
    def _drain_lines(self) -> None:
        self._lines.write(self._line_buf)
        self._line_digest.update(self._line_buf)
        self._line_buf.clear()

    def _drain_leaves(self) -> None:
        self._leaves_out.write(self._leaf_buf)
        self._leaf_digest.update(self._leaf_buf)
        self._leaf_buf.clear()

    def stream_ends(self, stream_bytes: int, members_end: int) -> None:
        """The stream was read whole: its length, and where its last member ends."""
        self._ends = (stream_bytes, members_end)

    def publish(self, snapshot: str) -> None:
        """The snapshot exists: complete the record and put it in place of the volume's
        last one."""
        if self._ends is None:
            raise ValueError("publish() before the stream ended")
        stream_bytes, members_end = self._ends
        self._drain_lines()
        self._drain_leaves()
        self._lines.flush(zstandard.FLUSH_FRAME)
        lines_end = self._file.tell()
        self._leaves_out.flush(zstandard.FLUSH_FRAME)
        self._leaves.seek(0)
        while block := self._leaves.read(_READ):
            self._file.write(block)
        header = json.dumps({
            "magic": MAGIC, "version": VERSION, "snapshot": snapshot, "volume": self._volume,
            "bytes": stream_bytes, "members_end": members_end,
            "lines": self.lines, "lines_end": lines_end,
            "lines_sha256": self._line_digest.hexdigest(),
            "leaves": self.leaves, "leaves_sha256": self._leaf_digest.hexdigest(),
        }).encode()
        self._file.write(header + _LENGTH.pack(len(header)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._close()
        os.replace(self._tmp, self._path)

    def discard(self) -> None:
        self._close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._leaves.close()


def _sweep(directory: str, keep: str, now: float | None = None) -> None:
    """Remove what no backup will use: temporary records of backups killed before they
    could remove them (SIGKILL, a crash), older than ABANDONED seconds, which no running
    backup's is (its file is written to as it goes); and records not replaced for STALE
    seconds (a volume deleted, or no longer backed up from this host: a host that backs up
    a new volume each day would otherwise keep them all), but for `keep`, the record being
    written. Removing a record is always safe: its volume's next backup reads every file,
    and a backup reading it now stops taking files from it (ParentRecord._open)."""
    now = time.time() if now is None else now
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(_TEMP):
            oldest = now - ABANDONED
        elif _RECORD_NAME.fullmatch(name) and path != keep:
            oldest = now - STALE
        else:
            continue
        try:
            if os.lstat(path).st_mtime < oldest:
                os.unlink(path)
        except FileNotFoundError:
            pass


class ParentRecord:
    """A record read back and checked whole (`open_record`): its runs, afresh each call."""

    def __init__(self, path: str, header: dict, identity: tuple[int, int, int, int]):
        self._path, self._header, self._identity = path, header, identity
        self.snapshot: str = header["snapshot"]

    def runs(self) -> Iterator[ParentRun]:
        return parent_runs(self.lines(), self.leaves(), self._header["members_end"])

    def lines(self) -> Iterator[catalogtree.ParentLine]:
        """The catalogue's lines, as parent_lines reads them from a repository."""
        stream_bytes = self._header["bytes"]
        with self._open() as f:
            at = 0
            for line in _lines(f, self._header["lines_end"]):
                parsed = catalogtree.parent_line(line, at, stream_bytes)
                at = parsed.end
                yield parsed

    def leaves(self) -> Iterator[tuple[str, int]]:
        """The data tree's leaves: (blob id, length)."""
        with self._open() as f:
            f.seek(self._header["lines_end"])
            for blob_id, length in _leaves(f, self._header["leaves_end"]):
                yield blob_id.hex(), length

    def _open(self) -> BinaryIO:
        """The file that was checked: not one a backup of the same volume put in its
        place since (a new file), nor one changed in place."""
        try:
            f = open(self._path, "rb")
        except FileNotFoundError:
            raise IntegrityError(f"parent record {self._path} was removed since it was "
                                 f"checked") from None
        if _identity(os.fstat(f.fileno())) != self._identity:
            f.close()
            raise IntegrityError(f"parent record {self._path} changed since it was checked")
        return f


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def open_record(path: str) -> ParentRecord | None:
    """The record at `path`, its digests and counts checked (IntegrityError if they fail:
    a damaged record); None if there is none."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        identity = _identity(os.fstat(f.fileno()))
        header = _header(f, path)
        f.seek(0)
        _check_part(_lines(f, header["lines_end"]), header["lines"], header["lines_sha256"],
                    path)
        f.seek(header["lines_end"])
        _check_part((_LEAF.pack(*leaf) for leaf in _leaves(f, header["leaves_end"])),
                    header["leaves"], header["leaves_sha256"], path)
    return ParentRecord(path, header, identity)


def _check_part(items: Iterator[bytes], count: int, sha256: str, path: str) -> None:
    """One part of a record (its lines, or its packed leaves) against its count and digest."""
    seen, digest = 0, hashlib.sha256()
    for item in items:
        seen += 1
        digest.update(item)
    if seen != count or digest.hexdigest() != sha256:
        raise IntegrityError(f"parent record {path} does not match its digest (damaged)")


def _header(f: BinaryIO, path: str) -> dict:
    size = f.seek(0, os.SEEK_END)
    damaged = IntegrityError(f"parent record {path} cannot be read (damaged)")
    if size < _LENGTH.size:
        raise damaged
    f.seek(size - _LENGTH.size)
    (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
    if not 0 < length <= min(_MAX_HEADER, size - _LENGTH.size):
        raise damaged
    f.seek(size - _LENGTH.size - length)
    try:
        header = json.loads(f.read(length))
    except ValueError:
        raise damaged from None
    ints = ("bytes", "members_end", "lines", "lines_end", "leaves")
    if not isinstance(header, dict) or header.get("magic") != MAGIC \
            or header.get("version") != VERSION or not isinstance(header.get("snapshot"), str) \
            or not all(type(header.get(k)) is int and header[k] >= 0 for k in ints) \
            or not header["members_end"] <= header["bytes"] \
            or not header["lines_end"] <= size - _LENGTH.size - length \
            or not all(isinstance(header.get(k), str) for k in ("lines_sha256", "leaves_sha256")):
        raise damaged
    header["leaves_end"] = size - _LENGTH.size - length
    return header


class _Span(io.RawIOBase):
    """The bytes of `f` from its position to `end`: what one frame's reader may read
    (zstandard's reader reads ahead, across the end of its frame)."""

    def __init__(self, f: BinaryIO, end: int):
        self._f, self._left = f, end - f.tell()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(min(len(buffer), max(self._left, 0)))
        buffer[:len(data)] = data
        self._left -= len(data)
        return len(data)


def _frame(f: BinaryIO, end: int) -> Iterator[bytes]:
    """The plaintext of the zstd frame from f's position to `end`, in blocks."""
    reader = zstandard.ZstdDecompressor().stream_reader(_Span(f, end), closefd=False)
    try:
        while block := reader.read(_READ):
            yield block
    except zstandard.ZstdError as e:
        raise IntegrityError(f"parent record cannot be read: {e}") from None


def _lines(f: BinaryIO, end: int) -> Iterator[bytes]:
    rest = b""
    for block in _frame(f, end):
        data = rest + block
        start = 0
        while (stop := data.find(b"\n", start)) >= 0:
            yield data[start:stop + 1]
            start = stop + 1
        rest = data[start:]
        if len(rest) > MAX_LINE:
            raise IntegrityError("parent record has a line too long to be a catalogue line")
    if rest:
        raise IntegrityError("parent record ends within a line")


def _leaves(f: BinaryIO, end: int) -> Iterator[tuple[bytes, int]]:
    rest = b""
    for block in _frame(f, end):
        data = rest + block
        whole = len(data) - len(data) % _LEAF.size
        yield from _LEAF.iter_unpack(data[:whole])
        rest = data[whole:]
    if rest:
        raise IntegrityError("parent record ends within a leaf")


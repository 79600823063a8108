"""A repository in a local directory: temp file, fsync, rename, fsync the directory.

While a file is written, the disk writes of every 8 MiB are started at once and the
pages already on disk are dropped from the page cache (see _EarlyWriteback); reads
drop what they have read (_DropBehind).

What a repository holds is untrusted (another user of a shared directory may have put
it there), so every path below the root is walked one directory at a time with
O_NOFOLLOW: a symlink, FIFO or device is never followed, opened or written through, it
is reported (BadEntry, or a listed BlobInfo with `error`). Files are created 0600 and
directories 0700 whatever the umask: archives hold volume data such as secrets.
Every OSError becomes a RepositoryError naming the repository and the reason.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from volbackup.errors import RepositoryError
from volbackup.repo.backends.base import (
    Backend,
    BadEntry,
    BlobInfo,
    BlobNotFound,
    ForeignEntries,
    FreeSpace,
    MakesItsPlace,
    TempFile,
    TempFiles,
    beyond_end,
    check_range,
    check_temp_key,
    is_temp_name,
    temp_name,
    temp_owner,
)

WRITEBACK_EVERY = 8 << 20
FILE_MODE, DIR_MODE = 0o600, 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FULL = (errno.ENOSPC, errno.EDQUOT)
# Entries at the top of a directory that do not make it "something else" (a fresh file
# system has lost+found).
_IGNORED_TOP = {"lost+found"}


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _mib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


class LocalBackend(Backend, TempFiles, FreeSpace, MakesItsPlace, ForeignEntries):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return str(self.root)

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if not key or any(not p or p.startswith(".") for p in parts):
            raise ValueError(f"invalid blob key {key!r}")  # dot names are ours (temp files)
        return parts

    def _error(self, e: OSError, doing: str) -> RepositoryError:
        return RepositoryError(f"cannot {doing} in repository {self.root}: "
                               f"{e.strerror or os.strerror(e.errno or errno.EIO)}")

    def _not_regular(self, rel: str, mode: int) -> BadEntry:
        return BadEntry(f"{rel} in repository {self.root} is {_kind(mode)}, not a regular "
                        f"file (volbackup neither follows nor reads it)")

    def _full(self, e: OSError, key: str, written: int) -> RepositoryError:
        """ENOSPC/EDQUOT: how much had been written, and how much is free."""
        try:
            fs = os.statvfs(self.root)
            free = f"{_mib(fs.f_bavail * fs.f_frsize)} free of {_mib(fs.f_blocks * fs.f_frsize)}"
            if fs.f_files and not fs.f_favail:
                free += f", and no inode free of {fs.f_files}"
        except OSError:
            free = "free space unknown"
        return RepositoryError(
            f"repository {self.root} is full ({os.strerror(e.errno)}): writing {key} failed "
            f"after {_mib(written)}; {free}")

    def _open_dir(self, parts: list[str], create: bool = False) -> int:
        """An fd of the directory root/parts..., walked without following symlinks.

        BlobNotFound if a part is missing (and not `create`) or is a file; BadEntry if it
        is a symlink or other special file. Created directories get DIR_MODE.
        """
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise self._error(e, "open the directory") from None
        try:
            for i, name in enumerate(parts):
                rel = "/".join(parts[:i + 1])
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise BlobNotFound(f"{rel} is missing from repository {self.root}") from None
                    sub = self._make_dir(fd, name, rel)
                except (NotADirectoryError, OSError) as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise self._error(e, f"open {rel}/") from None
                    try:
                        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                    except OSError:
                        raise self._error(e, f"open {rel}/") from None
                    if stat.S_ISREG(mode):
                        raise BlobNotFound(f"{rel} is a file in repository {self.root}, not a "
                                           f"directory") from None
                    raise self._not_regular(rel, mode) from None
                os.close(fd)
                fd = sub
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _make_dir(self, parent: int, name: str, rel: str) -> int:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
            made = True
        except FileExistsError:
            made = False  # made meanwhile by another writer
        except OSError as e:
            raise (self._full(e, f"{rel}/", 0) if e.errno in _FULL
                   else self._error(e, f"write {rel}/ (a new directory)")) from None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            if made:
                os.fchmod(fd, DIR_MODE)  # whatever the umask
        except OSError as e:
            raise self._error(e, f"write {rel}/ (a new directory)") from None
        return fd

    def _lstat(self, parts: list[str]) -> tuple[int, os.stat_result]:
        """(fd of the parent directory, lstat of the entry); the caller closes the fd."""
        key = "/".join(parts)
        parent = self._open_dir(parts[:-1])
        try:
            return parent, os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.close(parent)
            raise BlobNotFound(f"{key} is missing from repository {self.root}") from None
        except OSError as e:
            os.close(parent)
            raise self._error(e, f"read {key}") from None

    def create_missing(self) -> bool:
        """The directory itself (DIR_MODE, whatever the umask), where its parent exists;
        never its parents: a missing parent is more likely a typo than a plan."""
        try:
            os.mkdir(self.root, DIR_MODE)
        except FileExistsError:
            return False  # there already: check() says whether it is a directory
        except FileNotFoundError:
            raise RepositoryError(
                f"repository {self.root} cannot be made: {self.root.parent} does not exist "
                f"(init makes the repository's directory, never its parents)") from None
        except OSError as e:
            raise self._error(e, "create the directory") from None
        os.chmod(self.root, DIR_MODE)
        return True

    def remove_if_empty(self) -> None:
        try:
            os.rmdir(self.root)
        except OSError:
            pass  # not empty (or gone): then it is not only what create_missing made

    def check(self, writable: bool) -> None:
        try:
            st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            raise RepositoryError(
                f"repository {self.root} does not exist (`volbackup init` makes one; other "
                f"commands need an existing directory)") from None
        except OSError as e:
            raise self._error(e, "open the directory") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RepositoryError(f"repository {self.root} is not a directory")
        if writable:
            probe = self.root / temp_name("volbackup-probe")
            try:
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, FILE_MODE))
                probe.unlink()
            except OSError as e:
                if e.errno in _FULL:
                    raise self._full(e, probe.name, 0) from None
                raise RepositoryError(
                    f"repository {self.root} is not writable ({os.strerror(e.errno or errno.EIO)})"
                ) from None

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        parts = self._parts(key)
        name = parts[-1]
        temp = temp_name(name)
        parent = self._open_dir(parts[:-1], create=True)
        try:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, FILE_MODE, dir_fd=parent)
            except OSError as e:
                raise (self._full(e, key, 0) if e.errno in _FULL
                       else self._error(e, f"write {key}")) from None
            handle = os.fdopen(fd, "wb")
            try:
                writer = _EarlyWriteback(handle, self, key)
                os.fchmod(fd, FILE_MODE)  # whatever the umask
                yield writer
                writer.finish()
                try:
                    handle.close()
                    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
                    os.fsync(parent)
                except OSError as e:
                    raise (self._full(e, key, writer.written) if e.errno in _FULL
                           else self._error(e, f"write {key}")) from None
            except BaseException:
                with suppress(OSError):
                    handle.close()  # a flush that fails again must not hide the first error
                with suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise
        finally:
            os.close(parent)

    def _open_regular(self, key: str) -> int:
        """A read-only fd of a regular file: lstat first (a FIFO or device is never
        opened), then open O_NOFOLLOW|O_NONBLOCK (nothing can hang) and fstat again
        (it may have been swapped meanwhile)."""
        parts = self._parts(key)
        parent, st = self._lstat(parts)
        try:
            if stat.S_ISDIR(st.st_mode):
                raise BlobNotFound(f"{key} is missing from repository {self.root}")
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular(key, st.st_mode)
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                raise BlobNotFound(f"{key} is missing from repository {self.root}") from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self._not_regular(key, stat.S_IFLNK) from None
                raise self._error(e, f"read {key}") from None
        finally:
            os.close(parent)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._not_regular(key, mode)
        os.set_blocking(fd, True)
        return fd

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        handle = os.fdopen(self._open_regular(key), "rb")
        with handle:
            yield _DropBehind(handle, self, key)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """pread at the offset (the file as `open_read` opens it: never through a symlink,
        FIFO or device), in a loop until `length` bytes are in: nothing before the range is
        read. The size is checked first, so a range past the end allocates nothing."""
        check_range(offset, length)
        fd = self._open_regular(key)
        try:
            size = os.fstat(fd).st_size
            if offset + length > size:
                raise beyond_end(key, str(self.root), offset, length, size)
            pieces, pos, end = [], offset, offset + length
            while pos < end:
                piece = os.pread(fd, end - pos, pos)
                if not piece:  # cut short since the fstat (repositories replace, never truncate)
                    raise beyond_end(key, str(self.root), offset, length, pos)
                pieces.append(piece)
                pos += len(piece)
        except OSError as e:
            raise self._error(e, f"read {key}") from None
        finally:
            os.close(fd)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def stat(self, key: str) -> BlobInfo:
        parent, st = self._lstat(self._parts(key))
        os.close(parent)
        if stat.S_ISDIR(st.st_mode):
            raise BlobNotFound(f"{key} is missing from repository {self.root}")
        if not stat.S_ISREG(st.st_mode):
            raise self._not_regular(key, st.st_mode)
        return BlobInfo(key, st.st_size)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Regular files, and (with `error`) every entry that is not one or that cannot be
        listed: special files, symlinks, unreadable directories (key ending in '/')."""
        start = prefix.rpartition("/")[0]
        found: list[BlobInfo] = []
        self._scan(start, found, temps=False)
        found = [info for info in found if info.key.startswith(prefix)]
        yield from sorted(found, key=lambda info: info.key)

    def _scan(self, start: str, found: list, temps: bool) -> None:
        parts = start.split("/") if start else []
        if any(not p or p.startswith(".") for p in parts):
            return
        try:
            fd = self._open_dir(parts)
        except BlobNotFound:
            return
        except RepositoryError as e:
            if not temps:
                found.append(BlobInfo(start + "/", 0, str(e)))
            return
        try:
            self._walk(fd, start, found, temps)
        finally:
            os.close(fd)

    def _walk(self, fd: int, rel: str, found: list, temps: bool) -> None:
        try:
            with os.scandir(fd) as it:
                entries = list(it)
        except OSError as e:
            if not temps:
                found.append(BlobInfo(f"{rel}/", 0, f"cannot list {rel or '.'}/ in repository "
                                                    f"{self.root}: {e.strerror}"))
            return
        for entry in entries:
            name = entry.name
            key = f"{rel}/{name}" if rel else name
            if name.startswith("."):
                if temps and is_temp_name(name):
                    with suppress(OSError):  # renamed or removed meanwhile
                        st = entry.stat(follow_symlinks=False)
                        pid, where = temp_owner(name)
                        found.append(TempFile(key, pid,
                                              datetime.fromtimestamp(st.st_mtime, timezone.utc),
                                              st.st_size, where))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            except OSError as e:
                if not temps:
                    found.append(BlobInfo(key, 0, f"cannot read {key} in repository "
                                                  f"{self.root}: {e.strerror}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if not temps:
                        found.append(BlobInfo(f"{key}/", 0, f"cannot list {key}/ in repository "
                                                            f"{self.root}: {e.strerror}"))
                    continue
                try:
                    self._walk(sub, key, found, temps)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                if not temps:
                    found.append(BlobInfo(key, st.st_size, modified=datetime.fromtimestamp(
                        st.st_mtime, timezone.utc)))
            elif not temps:
                found.append(BlobInfo(key + ("/" if stat.S_ISLNK(st.st_mode)
                                             and entry.is_dir() else ""), 0,
                                      str(self._not_regular(key, st.st_mode))))

    def delete(self, key: str) -> None:
        self._unlink(self._parts(key), f"delete {key}")

    def _unlink(self, parts: list[str], what: str) -> None:
        """Remove the file at `parts` without following a symlink on the way; gone is fine."""
        try:
            parent = self._open_dir(parts[:-1])
        except BlobNotFound:
            return
        try:
            os.unlink(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(e, what) from None
        finally:
            os.close(parent)

    def free_space(self) -> int | None:
        try:
            fs = os.statvfs(self.root)
        except OSError as e:
            raise self._error(e, "measure free space") from None
        return fs.f_bavail * fs.f_frsize

    def probe_write(self) -> None:
        self.check(writable=True)

    def foreign_entries(self) -> list[str]:
        """Names at the root that volbackup did not make (hidden ones and lost+found
        aside); [] when the root holds snapshots/, locks/ or config (it is a repository)."""
        try:
            names = sorted(n for n in os.listdir(self.root) if not n.startswith("."))
        except OSError as e:
            raise self._error(e, "list the directory") from None
        if "snapshots" in names or "locks" in names or "config" in names:
            return []
        return [n for n in names if n not in _IGNORED_TOP]

    def temp_files(self) -> list[TempFile]:
        found: list[TempFile] = []
        self._scan("", found, temps=True)
        return sorted(found, key=lambda t: t.key)

    def remove_temp(self, temp: TempFile) -> None:
        self._unlink(check_temp_key(temp.key).split("/"), f"remove {temp.key}")


class _EarlyWriteback:
    """A write-only file that starts the disk writes of each 8 MiB written, and drops
    from the page cache what is already on disk (POSIX_FADV_DONTNEED).

    Without it, a 600 MiB archive sat dirty in the page cache until the final fsync,
    which then took 0.3 s here with the CPUs idle. Dropping the written pages as it goes
    keeps the archive's cache footprint to a few MiB that the kernel reuses for the next
    writes: on a VM that hands free memory back to its host, writing into pages never
    used before cost 1.2 s more kernel time per 600 MiB (docs/performance.md). A backup
    also does not push the host's useful pages out of the cache.
    """

    def __init__(self, handle: BinaryIO, backend: LocalBackend, key: str):
        self._handle = handle
        self._fd = handle.fileno()
        self._backend, self._key = backend, key
        self._written = 0
        self._advised = 0  # offset up to which writeback was started

    @property
    def written(self) -> int:
        return self._written

    def _failed(self, e: OSError) -> RepositoryError:
        if e.errno in _FULL:
            return self._backend._full(e, self._key, self._written)
        return self._backend._error(e, f"write {self._key}")

    def write(self, data) -> int:
        try:
            return self._write(data)
        except OSError as e:
            raise self._failed(e) from None

    def _write(self, data) -> int:
        n = self._handle.write(data)
        self._written += n
        if self._written - self._advised >= WRITEBACK_EVERY:
            self._handle.flush()
            # Start writing the new range; drop all but the last range started before
            # it (long on disk by now). From 0, so pages still under writeback at an
            # earlier call are dropped as well.
            _advise_dontneed(self._fd, self._advised, self._written - self._advised)
            if self._advised > WRITEBACK_EVERY:
                _advise_dontneed(self._fd, 0, self._advised - WRITEBACK_EVERY)
            self._advised = self._written
        return n

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as e:
            raise self._failed(e) from None

    def finish(self) -> None:
        """Everything on disk (fsync), then out of the page cache."""
        try:
            self._handle.flush()
            os.fsync(self._fd)
        except OSError as e:
            raise self._failed(e) from None
        _advise_dontneed(self._fd, 0, 0)

    def fileno(self) -> int:
        return self._fd


class _DropBehind:
    """A read-only file that drops from the page cache what it has read, but for the
    last 8 MiB: reading an archive then reuses a few MiB of cache over and over, like
    _EarlyWriteback, instead of filling fresh pages and evicting the host's own."""

    def __init__(self, handle: BinaryIO, backend: LocalBackend, key: str):
        self._handle = handle
        self._backend, self._key = backend, key
        self._read = 0
        self._dropped = 0  # offset up to which pages were dropped

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._handle.read(size)
        except OSError as e:
            raise self._backend._error(e, f"read {self._key}") from None
        self._read += len(data)
        if self._read - self._dropped >= 2 * WRITEBACK_EVERY:
            self._dropped = self._read - WRITEBACK_EVERY
            _advise_dontneed(self._handle.fileno(), 0, self._dropped)
        return data

    def fileno(self) -> int:
        return self._handle.fileno()


def _advise_dontneed(fd: int, offset: int, length: int) -> None:
    """Write back and drop a file's pages in that range (0 length: to the end); advice
    only, the fsync is what counts."""
    if hasattr(os, "posix_fadvise"):
        with suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def open_url(url: str) -> LocalBackend:
    """`file:///PATH`: a directory, not wrapped in RetryBackend (a local disk has no
    transient failures: see docs/design.md)."""
    return LocalBackend(url[len("file://"):])

"""The direct path: read and write a volume's directory on this host with GNU tar.

The engine's archive endpoints cost the daemon more CPU than the whole host pipeline
(docs/performance.md). When volbackup runs as root beside a local engine, a volume of
the `local` driver without options is a plain directory on this host, and GNU tar can
read and fill it directly. The archive format stays the same (PAX, members `./...`,
the root first); GNU tar also keeps what the endpoints lose (sub-second mtimes, xattrs,
ACLs). Everything else (selection, stop/pause, fresh volumes, checks) is unchanged.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import stat
import subprocess
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from volbackup.errors import IntegrityError, StreamBroken, VolbackupError
from volbackup.signals import main_thread_only
from volbackup.stream.chunks import read_chunks

if TYPE_CHECKING:
    from volbackup.docker.engine import Engine

CHUNK = 1 << 20
# 128 KiB records (not tar's 10 KiB): far fewer writes into the pipe; the end padding
# stays well under archive.MAX_TAIL.
_CREATE = ["--create", "--file=-", "--blocking-factor=256", "--format=pax",
           "--pax-option=delete=atime,delete=ctime", "--numeric-owner", "--xattrs",
           "--xattrs-include=*", "--acls", "--sparse"]
# Extracting, tar reads the pipe a record at a time, and a writer waiting on a full pipe is
# woken for each: 128 KiB records, not 10 KiB, make about a fifth of the context switches
# and of tar's reads and writes, and a fifth less CPU in tar (docs/performance.md, "Where
# a restore's CPU goes"). A last record cut short is read as it is.
_EXTRACT = ["--extract", "--file=-", "--blocking-factor=256", "--numeric-owner",
            "--same-owner", "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls"]


@functools.lru_cache(maxsize=1)
def gnu_tar() -> str | None:
    """Path of GNU tar, or None (busybox tar lacks the options used here)."""
    tar = shutil.which("tar")
    if tar is None:
        return None
    try:
        version = subprocess.run([tar, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return tar if "GNU tar" in version.stdout else None


def directory_for(engine: Engine, path: str | None) -> str | None:
    """`path` if GNU tar on this host can read and fill it for `engine`: this process is
    root, GNU tar is here, and it is the engine's own directory (Engine.local_directory)."""
    if os.geteuid() != 0 or gnu_tar() is None:
        return None
    return engine.local_directory(path)


def missing(engine: Engine, volume_area: str | None) -> list[str]:
    """What this host lacks for the direct path ([] when it has everything): "root",
    "GNU tar", "a local engine" (one whose directories are this host's: not remote, not
    in another mount namespace, no user-namespace remapping). `volume_area`: a directory
    of the engine's (its volumes directory) to prove the last one on."""
    lacking = []
    if os.geteuid() != 0:
        lacking.append("root")
    if gnu_tar() is None:
        lacking.append("GNU tar")
    if volume_area is None or engine.local_directory(volume_area) is None:
        lacking.append("a local engine")
    return lacking


def volume_area(data_root: str) -> str | None:
    """The engine's volumes directory, DATA_ROOT/volumes, or the data root itself while
    that does not exist yet (Podman makes it with its first volume): either proves the
    direct path (missing) the same way."""
    if not data_root:
        return None
    volumes = os.path.join(data_root, "volumes")
    return volumes if os.path.isdir(volumes) else data_root


def owners_unreadable(engine: Engine) -> list[str]:
    """What this host lacks to read `engine`'s volumes with their owners ([] when
    nothing): dockerd's archive endpoint keeps them; Podman's does not, so its volumes
    are read by GNU tar here, which needs what `missing` says."""
    if engine.archive_keeps_owners:
        return []
    return missing(engine, volume_area(engine.facts().data_root))


def file_directory_for(engine: Engine, path: str | None) -> str | None:
    """For a bind of one file: the directory holding `path` if GNU tar can read it there
    (`directory_for`) and `path` is a regular file, not a symlink (tar would store the
    link, where the engine's bind mount follows it)."""
    if not path:
        return None
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    return directory_for(engine, os.path.dirname(path))


class _Stderr:
    """Drains a process's stderr in a thread, keeping its first and last few KiB.

    `text()` gives GNU tar's own reason: its first error line, not the closing
    "Exiting with failure status due to previous errors", which says nothing.
    """

    def __init__(self, stream):
        self.head = b""
        self.tail = b""
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        main_thread_only()  # Ctrl-C goes to the main thread (volbackup.signals)
        for block in iter(lambda: stream.read(4096), b""):
            if len(self.head) < _HEAD:
                self.head += block[:_HEAD - len(self.head)]
            self.tail = (self.tail + block)[-4096:]

    def text(self) -> str:
        self._thread.join(timeout=5)
        for line in self.head.decode(errors="replace").splitlines():
            line = line.strip()
            if line and not any(noise in line for noise in _NOISE):
                return line
        lines = self.tail.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


_HEAD = 4096
# Lines that are never the reason tar failed: its closing summary, and warnings that do
# not change the exit status.
_NOISE = ("Exiting with failure status", ": socket ignored", "Removing leading")


@contextmanager
def export(directory: str, only: str | None = None, sort: bool = False,
           listed: BinaryIO | None = None) -> Iterator[Iterator[bytes]]:
    """The tar stream of `directory` (members `./...`), read by GNU tar on this host.
    With `only` (a bind of one file, or one file read again: backup --exclude-path keeps a
    hard link whose first name it leaves out): the root `./` and `./ONLY`, nothing else.
    `sort`: names in each directory in byte order, as the engine's archive endpoint
    sends them, so that the same names of a hard-linked inode are the file and the links
    in both streams (migrate compares them: TarWalker digests).
    `listed`: a file of NUL-terminated names (`.`, `./a`, ...), archived in that order,
    each alone (a directory without what it holds): the files cache's plan."""
    if listed is not None:
        members = ["--no-recursion", "--null", "--verbatim-files-from", "--files-from=-"]
    else:
        members = ["."] if only is None else ["--no-recursion", ".", f"./{only}"]
    order = ["--sort=name"] if sort else []
    proc = subprocess.Popen([gnu_tar(), f"--directory={directory}", *_CREATE, *order,
                             *members], stdin=listed if listed is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _widen(proc.stdout)
    errors = _Stderr(proc.stderr)
    try:
        yield read_chunks(proc.stdout, CHUNK)
    except IntegrityError as broken:
        # The stream ended early or went bad. If tar stopped on its own, its reason ("file
        # changed as we read it", "Permission denied") says more than "truncated".
        proc.stdout.close()  # a tar still writing gets SIGPIPE (a negative code)
        code = _wait(proc)
        if code > 0:
            raise StreamBroken(_failed(directory, code, errors)) from broken
        raise
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        code = _wait(proc)
    if code != 0:
        # GNU tar exits 1 when files changed while it read them: worth reading again.
        raise StreamBroken(_failed(directory, code, errors))


def walk(directory: str, excludes: Callable[[str], bool] | None
         ) -> Iterator[tuple[bytes, os.stat_result]]:
    """Every entry of `directory` with its lstat, as (path relative to it, `.` for itself),
    in the order GNU tar's --sort=name archives them: a directory, then what it holds,
    names in byte order. `excludes(member name)` leaves an entry out, and all below it.
    Sockets are left out (tar skips them); an entry gone before its lstat too (tar would
    not find it either). Memory: the names of the directories on the way down."""
    top = os.fsencode(directory)
    yield b".", os.lstat(top)
    under = top.rstrip(b"/") + b"/"
    lstat, is_dir, is_sock = os.lstat, stat.S_ISDIR, stat.S_ISSOCK
    stack: list[tuple[bytes, Iterator[bytes]]] = [(b"", iter(_names(top)))]
    while stack:
        prefix, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel = prefix + name
        try:
            st = lstat(under + rel)
        except FileNotFoundError:
            continue
        mode = st.st_mode
        if is_sock(mode) or (excludes is not None and excludes("./" + os.fsdecode(rel))):
            continue
        yield rel, st
        if is_dir(mode):
            stack.append((rel + b"/", iter(_names(under + rel))))


def _names(path: bytes) -> list[bytes]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _wait(proc: subprocess.Popen, grace: float = 10) -> int:
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _failed(directory: str, code: int, errors: _Stderr) -> str:
    return f"tar could not read {directory} (exit {code}): {errors.text()}"


def _widen(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups between tar and us."""
    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default


# `volbackup extract` onto a host directory: the directory itself keeps its own owner and
# mode; root keeps the snapshot's owners and extended attributes, anyone else gets files
# of their own with the umask applied, as plain `tar -x` gives them.
_EXTRACT_HERE_ROOT = [*_EXTRACT, "--no-overwrite-dir"]
_EXTRACT_HERE_USER = ["--extract", "--file=-", "--blocking-factor=256", "--no-same-owner",
                      "--no-same-permissions", "--no-overwrite-dir"]


def extract_here(directory: str, chunks: Iterable[bytes]) -> None:
    """Extract a checked tar stream into `directory`, a directory on this host (not a
    volume): GNU tar, as root with the snapshot's owners, otherwise as the user's files."""
    if gnu_tar() is None:
        raise VolbackupError("extract needs GNU tar on this host (busybox tar lacks the "
                             "options used); install it, or restore into a volume")
    import_(directory, chunks, _EXTRACT_HERE_ROOT if os.geteuid() == 0 else _EXTRACT_HERE_USER)


def import_(directory: str, chunks: Iterable[bytes], options: list[str] = _EXTRACT) -> None:
    """Extract a tar stream into `directory` with GNU tar on this host."""
    proc = subprocess.Popen([gnu_tar(), f"--directory={directory}", *options],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _widen(proc.stdin)
    errors = _Stderr(proc.stderr)
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # tar stopped reading: its exit code says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    if code != 0:
        raise VolbackupError(f"tar could not extract into {directory} (exit {code}): "
                             f"{errors.text()}")

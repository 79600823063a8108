"""LocalBackend's own details (the contract it shares with every backend is in
test_contract.py): temp files, permissions, the page cache, and entries someone else put
into the repository directory."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import stat
import subprocess
import sys

import pytest

from tests.backends.test_contract import Boom, keys
from tests.conftest import deadline, umask
from volbackup.errors import RepositoryError
from volbackup.repo.backends import BadEntry, BlobNotFound, LocalBackend, open_backend


class TestLocal:
    def test_no_temp_file_left_after_a_failed_write(self, tmp_path):
        backend = LocalBackend(tmp_path)
        with pytest.raises(Boom):
            with backend.open_write("snapshots/v/x.tar.zst") as writer:
                writer.write(b"partial")
                assert len(_files(tmp_path)) == 1        # the temp file exists meanwhile
                raise Boom()
        assert _files(tmp_path) == []

    def test_temp_file_is_hidden_while_writing(self, tmp_path):
        backend = LocalBackend(tmp_path)
        with backend.open_write("k") as writer:
            writer.write(b"data")
            [temp] = _files(tmp_path)
            assert os.path.basename(temp).startswith(".") and list(backend.list()) == []
        assert _files(tmp_path) == [str(tmp_path / "k")]

    def test_invalid_key_writes_nothing_outside(self, tmp_path):
        root = tmp_path / "repo"
        root.mkdir()
        with pytest.raises(ValueError):
            with LocalBackend(root).open_write("../outside"):
                pass
        assert _files(tmp_path) == []

    def test_check_good_directory_leaves_no_probe(self, tmp_path):
        LocalBackend(tmp_path).check(writable=False)
        LocalBackend(tmp_path).check(writable=True)
        assert _files(tmp_path) == []

    def test_check_missing_directory(self, tmp_path):
        for writable in (False, True):
            with pytest.raises(RepositoryError, match="does not exist"):
                LocalBackend(tmp_path / "nope").check(writable)

    def test_check_file_instead_of_directory(self, tmp_path):
        (tmp_path / "file").write_bytes(b"")
        for writable in (False, True):
            with pytest.raises(RepositoryError, match="not a directory"):
                LocalBackend(tmp_path / "file").check(writable)

    def test_check_not_writable(self):
        """/proc is a directory in which no file can be created, even by root."""
        backend = LocalBackend("/proc")
        backend.check(writable=False)
        with pytest.raises(RepositoryError, match="not writable"):
            backend.check(writable=True)
        with pytest.raises(RepositoryError, match="cannot write"):
            backend.write_bytes("volbackup-test/x", b"x")

    @pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
    def test_check_read_only_directory(self, tmp_path):
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(RepositoryError, match="not writable"):
                LocalBackend(tmp_path).check(writable=True)
        finally:
            tmp_path.chmod(0o700)

    def test_written_blob_leaves_the_page_cache_as_it_goes(self, tmp_path):
        """A backup does not fill the cache with its archive: what is on disk is dropped
        while it writes (here the test puts the first 64 MiB on disk itself, as the disk
        would while zstd works), and all of it at the end."""
        _skip_unless_pages_can_be_dropped(tmp_path)
        backend = LocalBackend(tmp_path)
        piece = random.Random(3).randbytes(1 << 20)
        with backend.open_write("k") as writer:
            for _ in range(64):
                writer.write(piece)
            writer.flush()
            os.fsync(writer.fileno())
            [temp] = _files(tmp_path)
            for _ in range(32):
                writer.write(piece)
            writer.flush()
            assert _cached_mib(temp) <= 48  # the 64 MiB on disk, but for the last 8, dropped
        assert _cached_mib(tmp_path / "k") == 0
        assert backend.read_bytes("k", limit=None) == piece * 96

    def test_read_blob_leaves_the_page_cache_as_it_goes(self, tmp_path):
        _skip_unless_pages_can_be_dropped(tmp_path)
        data = random.Random(4).randbytes(64 << 20)
        _write_cached(tmp_path / "k", data)
        assert _cached_mib(tmp_path / "k") == 64
        read = bytearray()
        with LocalBackend(tmp_path).open_read("k") as reader:
            while chunk := reader.read(1 << 20):
                read += chunk
        assert read == data
        assert _cached_mib(tmp_path / "k") <= 24

    def test_open_backend(self, tmp_path):
        assert open_backend(str(tmp_path)).describe() == str(tmp_path)
        assert open_backend(f"file://{tmp_path}").describe() == str(tmp_path)
        with pytest.raises(RepositoryError, match="unsupported repository URL scheme 'ftp'"):
            open_backend("ftp://bucket/x")



def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)



@pytest.fixture
def tiny_tmpfs(tmp_path, request):
    """A 1 MiB tmpfs (with `nr_inodes=N` from a param): a repository that fills up."""
    root = tmp_path / "tiny"
    root.mkdir()
    options = "size=1m" + (f",{request.param}" if hasattr(request, "param") else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


class TestLocalPermissions:
    @pytest.mark.parametrize("mask", [0o022, 0o000])
    def test_files_0600_and_directories_0700_whatever_the_umask(self, tmp_path, mask):
        from volbackup.repo import locking

        backend = LocalBackend(tmp_path)
        with umask(mask):
            with backend.open_write("snapshots/v/a.tar.zst") as writer:
                writer.write(b"secret.env")
                [temp] = _files(tmp_path)
                assert _mode(temp) == 0o600
            backend.write_bytes("snapshots/v/a.json", b"{}")
            backend.check(writable=True)
            lock = locking.acquire(backend, locking.SHARED, 0)
            try:
                [lock_file] = _files(tmp_path / "locks")
                assert _mode(lock_file) == 0o600 and _mode(tmp_path / "locks") == 0o700
            finally:
                lock.release()
        for d in ("snapshots", "snapshots/v"):
            assert _mode(tmp_path / d) == 0o700, d
        for f in ("snapshots/v/a.tar.zst", "snapshots/v/a.json"):
            assert _mode(tmp_path / f) == 0o600, f

    def test_existing_world_readable_repository_keeps_working(self, tmp_path):
        (tmp_path / "snapshots" / "v").mkdir(parents=True)
        for d in (tmp_path / "snapshots", tmp_path / "snapshots" / "v"):
            d.chmod(0o755)
        (tmp_path / "snapshots" / "v" / "old.json").write_bytes(b"old")
        (tmp_path / "snapshots" / "v" / "old.json").chmod(0o644)
        backend = LocalBackend(tmp_path)
        assert backend.read_bytes("snapshots/v/old.json") == b"old"
        backend.write_bytes("snapshots/v/new.json", b"new")
        assert keys(backend) == ["snapshots/v/new.json", "snapshots/v/old.json"]
        assert _mode(tmp_path / "snapshots" / "v" / "new.json") == 0o600
        assert _mode(tmp_path / "snapshots" / "v") == 0o755  # left as the user had it


class TestLocalUntrusted:
    """Entries someone else put into the repository directory."""

    @pytest.fixture
    def backend(self, tmp_path):
        root = tmp_path / "repo"
        root.mkdir()
        return LocalBackend(root)

    def test_manifest_symlinked_to_dev_zero_is_refused_not_read(self, backend):
        backend.write_bytes("snapshots/v/good.json", b"{}")
        os.symlink("/dev/zero", backend.root / "snapshots/v/zero.json")
        with deadline(5), pytest.raises(BadEntry, match="zero.json .* is a symlink"):
            backend.read_bytes("snapshots/v/zero.json")
        with pytest.raises(BadEntry, match="a symlink"):
            backend.stat("snapshots/v/zero.json")
        infos = {i.key: i.error for i in backend.list("snapshots/")}
        assert infos["snapshots/v/good.json"] is None
        assert "zero.json" in infos["snapshots/v/zero.json"] and "symlink" in infos["snapshots/v/zero.json"]

    def test_fifo_and_device_are_refused_without_blocking(self, backend):
        (backend.root / "snapshots" / "v").mkdir(parents=True)
        os.mkfifo(backend.root / "snapshots/v/fifo.json")
        os.mknod(backend.root / "snapshots/v/null.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        with deadline(5):
            with pytest.raises(BadEntry, match="fifo.json .* is a FIFO"):
                backend.read_bytes("snapshots/v/fifo.json")
            with pytest.raises(BadEntry, match="null.json .* is a character device"):
                with backend.open_read("snapshots/v/null.json"):
                    pass
            errors = {i.key: i.error for i in backend.list()}
        assert "FIFO" in errors["snapshots/v/fifo.json"]
        assert "character device" in errors["snapshots/v/null.json"]

    def test_a_ranged_read_never_follows_a_symlink_or_opens_a_fifo_or_device(self, backend, tmp_path):
        (backend.root / "packs" / "ab").mkdir(parents=True)
        outside = tmp_path / "secret"
        outside.write_bytes(b"precious" * 100)
        os.symlink(outside, backend.root / "packs/ab/link")
        os.symlink("/dev/zero", backend.root / "packs/ab/zero")
        os.mkfifo(backend.root / "packs/ab/fifo")
        os.mknod(backend.root / "packs/ab/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        with deadline(5):
            for name, kind in [("link", "a symlink"), ("zero", "a symlink"), ("fifo", "a FIFO"),
                               ("null", "a character device")]:
                with pytest.raises(BadEntry, match=f"packs/ab/{name} .* is {kind}"):
                    backend.read_range(f"packs/ab/{name}", 0, 8)

    def test_a_ranged_read_of_a_directory_is_a_missing_blob(self, backend):
        (backend.root / "packs" / "ab" / "p").mkdir(parents=True)
        with pytest.raises(BlobNotFound):
            backend.read_range("packs/ab/p", 0, 1)

    def test_symlinked_directory_is_reported_never_followed(self, backend, tmp_path):
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "passwd.json").write_bytes(b"precious")
        (backend.root / "snapshots").mkdir()
        os.symlink(outside, backend.root / "snapshots" / "vol")
        listed = list(backend.list("snapshots/"))
        assert [(i.key, "symlink" in (i.error or "")) for i in listed] == [("snapshots/vol/", True)]
        assert [i.key for i in backend.list("snapshots/vol/")] == ["snapshots/vol/"]
        for call in (backend.read_bytes, backend.stat, backend.delete):
            with pytest.raises(BadEntry, match="snapshots/vol .* is a symlink"):
                call("snapshots/vol/passwd.json")
        with pytest.raises(BadEntry):
            backend.write_bytes("snapshots/vol/new.json", b"planted")
        assert sorted(os.listdir(outside)) == ["passwd.json"]
        assert (outside / "passwd.json").read_bytes() == b"precious"
        os.symlink(outside, backend.root / "locks")
        with pytest.raises(BadEntry):
            backend.write_bytes("locks/x.json", b"{}")
        assert sorted(os.listdir(outside)) == ["passwd.json"]

    def test_unreadable_directory_is_listed_as_an_error(self, backend):
        """Root reads any directory; without CAP_DAC_OVERRIDE/READ_SEARCH it is denied."""
        backend.write_bytes("snapshots/a/1.json", b"{}")
        backend.write_bytes("snapshots/b/2.json", b"{}")
        (backend.root / "snapshots" / "b").chmod(0o000)
        try:
            code = ("import sys; from volbackup.repo.backends import LocalBackend; "
                    "print([(i.key, i.error) for i in LocalBackend(sys.argv[1]).list('snapshots/')])")
            out = _without_dac_override(code, str(backend.root))
        finally:
            (backend.root / "snapshots" / "b").chmod(0o700)
        listed = eval(out)
        assert listed[0] == ("snapshots/a/1.json", None)
        assert listed[1][0] == "snapshots/b/" and "Permission denied" in listed[1][1]

    def test_os_errors_become_repository_errors(self, backend):
        (backend.root / "snapshots" / "v" / "dir.json" / "sub").mkdir(parents=True)
        with pytest.raises(RepositoryError, match="cannot write snapshots/v/dir.json in repository"):
            backend.write_bytes("snapshots/v/dir.json", b"{}")
        with pytest.raises(RepositoryError, match="cannot delete snapshots/v/dir.json in repository"):
            backend.delete("snapshots/v/dir.json")
        assert [p for p in _files(backend.root)] == []   # no temp file left

    def test_disk_full_says_where_how_much_written_and_free(self, tiny_tmpfs):
        backend = LocalBackend(tiny_tmpfs)
        with pytest.raises(RepositoryError) as caught:
            with backend.open_write("snapshots/v/big.tar.zst") as writer:
                for _ in range(4):
                    writer.write(os.urandom(512 * 1024))
        message = str(caught.value)
        assert type(caught.value) is RepositoryError and caught.value.exit_code == 5
        assert message.startswith(f"repository {tiny_tmpfs} is full (No space left on device)")
        assert "snapshots/v/big.tar.zst failed after 0.5 MiB" in message or \
            "failed after 1.0 MiB" in message, message
        assert "free of 1.0 MiB" in message
        assert _files(tiny_tmpfs) == []


    @pytest.mark.parametrize("tiny_tmpfs", ["nr_inodes=3"], indirect=True)
    def test_no_inode_left_is_a_full_repository_too(self, tiny_tmpfs):
        backend = LocalBackend(tiny_tmpfs)
        with pytest.raises(RepositoryError) as caught:
            backend.write_bytes("snapshots/v/a.json", b"{}")
        assert str(caught.value).startswith(f"repository {tiny_tmpfs} is full (No space left")
        assert "writing snapshots/v/a.json failed after 0.0 MiB" in str(caught.value)
        assert "and no inode free of 3" in str(caught.value)
        with pytest.raises(RepositoryError, match="is full"):
            backend.check(writable=True)


def _without_dac_override(code: str, *args: str) -> str:
    """Run python `code` as root without the capabilities that ignore file permissions."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                           "--bounding-set=-dac_override,-dac_read_search",
                           sys.executable, "-c", code, *args],
                          capture_output=True, text=True, env=env)
    if proc.returncode and "setpriv" in proc.stderr:
        pytest.skip(f"cannot drop capabilities: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _files(root) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def _write_cached(path, data: bytes) -> None:
    """Write and fsync a file the plain way: its pages stay in the cache, clean."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cached_mib(path) -> float:
    """How much of a file is in the page cache (mincore over a shared mapping)."""
    size = os.path.getsize(path)
    page = os.sysconf("SC_PAGE_SIZE")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * (-(-size // page)))()
            assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
            return sum(v & 1 for v in vec) * page / (1 << 20)
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)


def _skip_unless_pages_can_be_dropped(directory) -> None:
    """tmpfs, for one, keeps a file's pages whatever it is advised."""
    probe = directory / "probe"
    _write_cached(probe, bytes(1 << 20))
    fd = os.open(probe, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    cached = _cached_mib(probe)
    probe.unlink()
    if cached:
        pytest.skip(f"{directory} keeps pages in memory when advised not to (tmpfs?)")

"""The storage backend contract, run against every backend, then LocalBackend's own details.

To add a backend (S3 on moto, say), add a param to the `backend` fixture that yields a
fresh, empty, writable store; TestContract runs unchanged against it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random

import pytest

from volbackup.backends import BlobNotFound, LocalBackend, open_backend
from volbackup.errors import RepositoryError


@pytest.fixture(params=["local"])
def backend(request, tmp_path):
    if request.param == "local":
        root = tmp_path / "repo"
        root.mkdir()
        return LocalBackend(root)
    raise AssertionError(request.param)


def keys(backend, prefix: str = "") -> list[str]:
    return [info.key for info in backend.list(prefix)]


class Boom(Exception):
    pass


INVALID_KEYS = ["", "../x", "a//b", "/abs", "a/./b", "a/..", ".", "a/"]


class TestContract:
    def test_large_blob_written_in_many_pieces_reads_back(self, backend):
        rnd = random.Random(5)
        data = rnd.randbytes(9 * 1024 * 1024 + 17)
        pos = 0
        with backend.open_write("snapshots/v/big.tar.zst") as writer:
            while pos < len(data):
                size = rnd.choice([1, 4095, 65536, 1 << 20])
                writer.write(data[pos:pos + size])
                pos += size
        assert backend.stat("snapshots/v/big.tar.zst").size == len(data)
        assert keys(backend) == ["snapshots/v/big.tar.zst"]
        with backend.open_read("snapshots/v/big.tar.zst") as reader:
            assert reader.read(1000) + reader.read() == data

    def test_small_blobs_and_overwrite(self, backend):
        backend.write_bytes("a", b"")
        backend.write_bytes("b/c.json", b"one")
        backend.write_bytes("b/c.json", b"two!")
        assert backend.read_bytes("a") == b"" and backend.stat("a").size == 0
        assert backend.read_bytes("b/c.json") == b"two!"
        assert backend.stat("b/c.json").size == 4

    @pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
    def test_failed_write_leaves_nothing_visible(self, backend, error):
        raised = error("stop")
        with pytest.raises(error) as caught:
            with backend.open_write("snapshots/v/x.tar.zst") as writer:
                writer.write(b"partial" * 1000)
                raise raised
        assert caught.value is raised
        assert keys(backend) == []
        with pytest.raises(BlobNotFound):
            backend.stat("snapshots/v/x.tar.zst")
        with pytest.raises(BlobNotFound):
            backend.read_bytes("snapshots/v/x.tar.zst")

    def test_failed_overwrite_keeps_the_old_blob(self, backend):
        backend.write_bytes("m.json", b"old")
        with pytest.raises(Boom):
            with backend.open_write("m.json") as writer:
                writer.write(b"new and longer")
                raise Boom()
        assert backend.read_bytes("m.json") == b"old"
        assert [(i.key, i.size) for i in backend.list()] == [("m.json", 3)]

    def test_unfinished_write_is_not_listed(self, backend):
        backend.write_bytes("snapshots/v/done.json", b"{}")
        with backend.open_write("snapshots/v/open.tar.zst") as writer:
            writer.write(b"x" * 100_000)
            writer.flush()
            assert keys(backend) == ["snapshots/v/done.json"]
            with pytest.raises(BlobNotFound):
                backend.stat("snapshots/v/open.tar.zst")
        assert keys(backend) == ["snapshots/v/done.json", "snapshots/v/open.tar.zst"]

    def test_list_with_prefix_in_key_order(self, backend):
        names = ["snapshots/b/2.json", "snapshots/a/1.tar.zst", "other.txt", "snapshotsX",
                 "snapshots/a/1.json", "snapshots/a/0.json"]
        for i, name in enumerate(names):
            backend.write_bytes(name, b"x" * i)
        assert keys(backend) == sorted(names)
        assert keys(backend, "snapshots/a/") == ["snapshots/a/0.json", "snapshots/a/1.json",
                                                 "snapshots/a/1.tar.zst"]
        assert keys(backend, "snapshots/") == ["snapshots/a/0.json", "snapshots/a/1.json",
                                               "snapshots/a/1.tar.zst", "snapshots/b/2.json"]
        assert keys(backend, "snapshots") == keys(backend, "snapshots/") + ["snapshotsX"]
        assert keys(backend, "nothing/") == []
        sizes = {i.key: i.size for i in backend.list()}
        assert sizes == {name: i for i, name in enumerate(names)}

    @pytest.mark.parametrize("key", ["missing", "snapshots/none/x.json"])
    def test_missing_blob(self, backend, key):
        backend.write_bytes("present", b"1")
        with pytest.raises(BlobNotFound, match="missing"):
            backend.stat(key)
        with pytest.raises(BlobNotFound):
            with backend.open_read(key):
                pass
        assert issubclass(BlobNotFound, RepositoryError)

    def test_delete_is_idempotent(self, backend):
        backend.write_bytes("a/b", b"1")
        backend.write_bytes("a/c", b"2")
        backend.delete("a/b")
        backend.delete("a/b")
        backend.delete("never/was")
        assert keys(backend) == ["a/c"]
        with pytest.raises(BlobNotFound):
            backend.stat("a/b")

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_rejected(self, backend, key):
        with pytest.raises(ValueError):
            with backend.open_write(key) as writer:
                writer.write(b"escaped")
        for call in (backend.open_read, backend.stat, backend.delete):
            with pytest.raises(ValueError):
                result = call(key)
                if hasattr(result, "__enter__"):
                    with result:
                        pass
        assert keys(backend) == []
    def test_a_prefix_is_not_a_blob(self, backend):
        backend.write_bytes("snapshots/v/1.json", b"{}")
        with pytest.raises(BlobNotFound):
            backend.stat("snapshots/v")
    def test_key_below_a_blob_is_missing(self, backend):
        backend.write_bytes("a", b"1")
        with pytest.raises(BlobNotFound):
            backend.stat("a/b")
        with pytest.raises(BlobNotFound):
            backend.read_bytes("a/b")
    @pytest.mark.parametrize("key", [".hidden", "a/.b", ".dir/c"])
    def test_every_accepted_key_is_listed(self, backend, key):
        try:
            backend.write_bytes(key, b"x")
        except ValueError:
            return   # refusing such keys would be fine too
        assert key in keys(backend)


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
        assert backend.read_bytes("k") == piece * 96

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

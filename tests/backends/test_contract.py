"""The storage backend contract: the one gate every backend passes.

TestContract runs against each param of the `backend` fixture: the directory backend, S3
on moto's server, S3 on Ceph's RGW (a real S3-compatible store, see tests/rgw_s3.py), SFTP
on a real OpenSSH sshd (tests/sftp_server.py), and each inside RetryBackend (S3's as
`open_backend` returns it); WebDAV on Apache httpd, Azure on Azurite and Swift on RGW's Swift
API, as `open_backend` returns them (tests/opendal_servers.py). To add
a backend, add a param that gives a fresh, empty, writable store; no test changes. Each
backend's own details are in test_<backend>.py.
"""

from __future__ import annotations

import random

import pytest

from volbackup.errors import RepositoryError
from volbackup.repo.backends import (
    CAPABILITIES,
    MAX_RANGE,
    MAX_SMALL_BLOB,
    BadEntry,
    BlobNotFound,
    ForeignEntries,
    FreeSpace,
    LocalBackend,
    MakesItsPlace,
    RangeBeyondEnd,
    RetryBackend,
    TempFiles,
    UnfinishedUploads,
    open_backend,
)

BACKENDS = ["local", "s3", "rgw", "sftp", "retry-local", "retry-s3", "retry-rgw", "retry-sftp",
            "webdav", "azure", "swift"]
# Through OpenDAL (repo/backends/opendal.py), each as open_backend returns it: inside RetryBackend
OPENDAL = ("webdav", "azure", "swift")
# What each kind of store declares it can do beyond the core (docs/storage.md's table)
DECLARED = {
    "local": {TempFiles, FreeSpace, MakesItsPlace, ForeignEntries},
    "sftp": {TempFiles, FreeSpace, MakesItsPlace, ForeignEntries},
    "s3": {UnfinishedUploads},
    "rgw": {UnfinishedUploads},
    "webdav": {TempFiles, MakesItsPlace},
    "azure": set(),
    "swift": set(),
}


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param.endswith("local"):
        root = tmp_path / "repo"
        root.mkdir()
        local = LocalBackend(root)
        return RetryBackend(local, 3, sleep=_no_sleep) if request.param == "retry-local" else local
    if request.param.endswith("sftp"):
        # a fresh directory on a real sshd (tests/sftp_server.py), as open_backend opens it
        wrapped = open_backend(request.getfixturevalue("sftp_repo"))
        assert isinstance(wrapped, RetryBackend)
        request.addfinalizer(wrapped.inner.close)
        return wrapped if request.param.startswith("retry-") else wrapped.inner
    if request.param in OPENDAL:
        # the fixture points the env at its server while the test runs; open_backend reads it
        wrapped = open_backend(request.getfixturevalue(f"{request.param}_repo"))
        assert isinstance(wrapped, RetryBackend)
        return wrapped
    # rgw_bucket points the AWS env at RGW while the test runs; open_backend reads it
    on_rgw = request.param.endswith("rgw")
    bucket = request.getfixturevalue("rgw_bucket" if on_rgw else "s3_bucket")
    wrapped = open_backend(f"s3://{bucket}/repo/one")
    assert isinstance(wrapped, RetryBackend)
    server = request.getfixturevalue("rgw_endpoint" if on_rgw else "s3_endpoint")
    assert wrapped.inner.client.meta.endpoint_url == server
    return wrapped if request.param.startswith("retry-") else wrapped.inner


def _no_sleep(seconds: float) -> None:
    raise AssertionError("nothing fails transiently in the contract suite")


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

    def test_delete_many_removes_exactly_the_keys_given(self, backend):
        from concurrent.futures import ThreadPoolExecutor
        names = [f"chunks/{i % 3:02x}/{i:064x}" for i in range(1005)]  # > one S3 batch
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: backend.write_bytes(name, b"x"), names))
        backend.write_bytes("snapshots/keep/me.json", b"{}")
        doomed = names[:1002] + ["never/was"]
        assert backend.delete_many(doomed) == []
        assert keys(backend) == sorted(names[1002:] + ["snapshots/keep/me.json"])
        assert backend.delete_many([]) == []

    def test_writers_making_the_same_new_directory_at_once_all_succeed(self, backend):
        """A backup's writer threads often start a new fan-out directory together (WebDAV:
        Apache's mod_dav refuses the MKCOL that loses that race with a 403)."""
        import threading
        from concurrent.futures import ThreadPoolExecutor
        names = [f"chunks/{d:02x}/{i:064x}" for d in range(6) for i in range(12)]
        start = threading.Barrier(12)

        def write(name: str) -> None:
            start.wait(timeout=60)   # the 12 writers of one directory begin together
            backend.write_bytes(name, b"x")

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(write, names))
        assert keys(backend) == sorted(names)

    def test_listing_says_when_each_blob_was_written(self, backend):
        from datetime import datetime, timedelta, timezone
        before = datetime.now(timezone.utc) - timedelta(seconds=5)
        backend.write_bytes("a/b", b"1")
        (info,) = backend.list("a/")
        assert info.modified is not None and info.modified.tzinfo is not None
        assert before <= info.modified <= datetime.now(timezone.utc) + timedelta(seconds=5)

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
        for call in (backend.open_read, backend.stat, backend.delete,
                     lambda k: backend.read_range(k, 0, 1)):
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
    def test_read_bytes_is_capped(self, backend):
        """Manifests and locks are read whole: a huge blob must not be read into memory."""
        backend.write_bytes("snapshots/v/ok.json", b"x" * MAX_SMALL_BLOB)
        backend.write_bytes("snapshots/v/big.json", b"x" * (MAX_SMALL_BLOB + 1))
        assert len(backend.read_bytes("snapshots/v/ok.json")) == MAX_SMALL_BLOB
        with pytest.raises(BadEntry, match="snapshots/v/big.json .*larger than 1,048,576 bytes"):
            backend.read_bytes("snapshots/v/big.json")
        assert issubclass(BadEntry, RepositoryError)
        assert len(backend.read_bytes("snapshots/v/big.json", limit=None)) == MAX_SMALL_BLOB + 1
        with pytest.raises(BadEntry):
            backend.read_bytes("snapshots/v/ok.json", limit=10)

    @pytest.mark.parametrize("key", [".hidden", "a/.b", ".dir/c"])
    def test_every_accepted_key_is_listed(self, backend, key):
        try:
            backend.write_bytes(key, b"x")
        except ValueError:
            return   # refusing such keys would be fine too
        assert key in keys(backend)

    def test_capabilities_answer_as_declared(self, backend, request):
        """What a backend says it has works on a fresh store (a wrapper says what its inner
        backend has); what it does not have, callers never ask for."""
        kind = request.node.callspec.params["backend"].removeprefix("retry-")
        assert backend.capabilities == DECLARED[kind] and backend.capabilities <= set(CAPABILITIES)
        backend.write_bytes("config", b"{}")
        if backend.has(TempFiles):
            assert backend.temp_files() == []
        if backend.has(UnfinishedUploads):
            assert backend.leftovers() == []
        if backend.has(FreeSpace):
            free = backend.free_space()
            assert free is None or free > 0
        if backend.has(MakesItsPlace):
            assert backend.create_missing() is False  # there already
        if backend.has(ForeignEntries):
            assert backend.foreign_entries() == []

    # -- read_range: one blob out of a pack, never fewer bytes than asked for

    @pytest.mark.parametrize("offset, length", [
        (0, 10_000), (0, 1), (9_999, 1), (1234, 5000), (9_998, 2), (4096, 4096)])
    def test_read_range_returns_exactly_the_range(self, backend, offset, length):
        data = random.Random(7).randbytes(10_000)
        backend.write_bytes("packs/ab/pack", data)
        got = backend.read_range("packs/ab/pack", offset, length)
        assert type(got) is bytes and got == data[offset:offset + length]

    def test_a_large_range_across_an_upload_part_boundary(self, backend):
        """5 MiB from 4 MiB into a 9 MiB blob written in pieces (on S3: multipart, its
        first part 8 MiB, so the range spans two parts)."""
        data = random.Random(8).randbytes(9 * 1024 * 1024 + 17)
        with backend.open_write("packs/cd/big") as writer:
            for pos in range(0, len(data), 1 << 20):
                writer.write(data[pos:pos + (1 << 20)])
        offset, length = 4 * 1024 * 1024 - 5, 5 * 1024 * 1024   # ends past 8 MiB
        got = backend.read_range("packs/cd/big", offset, length)
        assert len(got) == length and got == data[offset:offset + length]
        tail = backend.read_range("packs/cd/big", len(data) - 17, 17)
        assert tail == data[-17:]

    @pytest.mark.parametrize("offset, length", [(90, 11), (0, 101), (99, 2), (0, MAX_RANGE)])
    def test_a_range_crossing_the_end_is_an_error_not_fewer_bytes(self, backend, offset, length):
        backend.write_bytes("packs/ab/short", b"x" * 100)
        with pytest.raises(RangeBeyondEnd) as caught:
            backend.read_range("packs/ab/short", offset, length)
        message = str(caught.value)
        assert "packs/ab/short" in message and f"bytes {offset:,}-{offset + length - 1:,}" in message
        assert "holds only 100 bytes" in message and "\n" not in message
        assert isinstance(caught.value, RepositoryError) and caught.value.exit_code == 5

    @pytest.mark.parametrize("size, offset", [(100, 100), (100, 101), (100, 10 ** 12), (0, 0)])
    def test_a_range_starting_past_the_end_is_an_error(self, backend, size, offset):
        backend.write_bytes("packs/ab/p", b"y" * size)
        with pytest.raises(RangeBeyondEnd, match=f"packs/ab/p .*bytes {offset:,}-{offset + 9:,} "
                                                 r"\(10 bytes\) are past its end"):
            backend.read_range("packs/ab/p", offset, 10)

    @pytest.mark.parametrize("key", ["missing", "packs/none/x", "a/b"])
    def test_read_range_of_a_missing_blob(self, backend, key):
        backend.write_bytes("a", b"1")  # "a/b": a key below a blob
        with pytest.raises(BlobNotFound, match="missing|not a directory"):
            backend.read_range(key, 0, 1)

    @pytest.mark.parametrize("offset, length", [
        (-1, 1), (0, 0), (5, 0), (0, -1), (0, MAX_RANGE + 1), (0.0, 1), (0, 1.0), (True, 1)])
    def test_read_range_refuses_a_range_no_caller_may_ask_for(self, backend, offset, length):
        """Programming errors, checked before the store is asked: ValueError even for a
        missing blob, and never a RepositoryError (which would blame the repository)."""
        backend.write_bytes("packs/ab/p", b"z" * 100)
        for key in ("packs/ab/p", "missing"):
            with pytest.raises(ValueError):
                backend.read_range(key, offset, length)


def test_the_range_bound_holds_the_largest_stored_chunk():
    from volbackup.repo.chunkstore import MAX_STORED
    assert MAX_STORED <= MAX_RANGE <= 64 << 20

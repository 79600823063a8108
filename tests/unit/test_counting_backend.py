"""CountingBackend counts read requests, objects read whole and bytes read, by the key's
first component."""

from __future__ import annotations

import pytest

from volbackup.repo.backends import BlobNotFound, RangeBeyondEnd
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.backends.local import LocalBackend


def test_reads_are_counted_by_kind_and_writes_pass_through(tmp_path):
    backend = CountingBackend(LocalBackend(str(tmp_path)))
    backend.write_bytes("chunks/ab/abcd", b"x" * 1000)
    backend.write_bytes("snapshots/v/1.json", b"{}")
    assert backend.read_bytes("snapshots/v/1.json") == b"{}"
    with backend.open_read("chunks/ab/abcd") as reader:
        assert reader.read(600) + reader.read() == b"x" * 1000
    assert (dict(backend.objects), dict(backend.bytes)) == (
        {"snapshots": 1, "chunks": 1}, {"snapshots": 2, "chunks": 1000})
    assert dict(backend.requests) == {"snapshots": 1, "chunks": 1}
    assert [info.key for info in backend.list("chunks/")] == ["chunks/ab/abcd"]
    backend.reset()
    assert not backend.objects and not backend.bytes and not backend.requests


def test_a_ranged_read_is_a_request_with_its_bytes_not_an_object_read_whole(tmp_path):
    backend = CountingBackend(LocalBackend(str(tmp_path)))
    backend.write_bytes("packs/ab/pack", bytes(range(200)))
    assert backend.read_range("packs/ab/pack", 10, 5) == bytes(range(10, 15))
    assert backend.read_range("packs/ab/pack", 199, 1) == bytes([199])
    assert dict(backend.requests) == {"packs": 2} and dict(backend.bytes) == {"packs": 6}
    assert not backend.objects


def test_a_failed_ranged_read_counts_nothing(tmp_path):
    backend = CountingBackend(LocalBackend(str(tmp_path)))
    backend.write_bytes("packs/ab/pack", b"x" * 10)
    with pytest.raises(RangeBeyondEnd):
        backend.read_range("packs/ab/pack", 5, 6)
    with pytest.raises(BlobNotFound):
        backend.read_range("packs/ab/none", 0, 1)
    assert not backend.requests and not backend.bytes

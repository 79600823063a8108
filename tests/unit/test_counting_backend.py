"""CountingBackend counts objects opened and bytes read, by the key's first component."""

from __future__ import annotations

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
    assert [info.key for info in backend.list("chunks/")] == ["chunks/ab/abcd"]
    backend.reset()
    assert not backend.objects and not backend.bytes

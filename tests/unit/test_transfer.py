"""volbackup.ops.transfer on a real directory repository (both layouts), no engine needed:
import a foreign tar, export it again, and what either leaves behind when it fails."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from contextlib import contextmanager

import pytest
import zstandard

from tests.unit.tars import BIG_FILE_BYTES, ROOT_XATTR, corpus_members, make_tar
from volbackup.errors import InputRefused, IntegrityError, TargetNotEmpty
from volbackup.ops.transfer import export_snapshot, import_archive
from volbackup.repo.backends import LocalBackend
from volbackup.repo.config import RepoConfig
from volbackup.repo.repository import Repository


@pytest.fixture(params=["archive", "chunked"])
def repo(request, tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    if request.param == "chunked":
        return Repository.init(str(path), config=RepoConfig.new())
    return Repository(LocalBackend(path))


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def members_of(zst: bytes) -> dict[str, tuple]:
    tar = tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj()
                                          .decompress(zst)), errors="surrogateescape")
    return {m.name: (m.type, m.mode, m.mtime, m.linkname,
                     tar.extractfile(m).read() if m.isreg() else None) for m in tar}


def test_import_then_export_gives_the_members_back(repo, tmp_path):
    source = make_tar(corpus_members())
    result = import_archive(repo, io.BytesIO(gzip.compress(source)), "vbt-io-vol",
                            labels={"k": "v"})
    manifest = repo.load(result.snapshot)
    assert (manifest.source_kind, manifest.driver, manifest.driver_options, manifest.labels) \
        == ("import", "local", {}, {"k": "v"})
    assert manifest.layout == repo.layout.name and result.format == "gzip"
    assert result.bytes == manifest.bytes and result.entries == len(corpus_members())

    out = tmp_path / "out.tar.zst"
    exported = export_snapshot(repo, "vbt-io-vol", str(out))
    assert exported.snapshot == result.snapshot and exported.bytes == out.stat().st_size
    assert out.stat().st_mode & 0o777 == 0o600
    assert members_of(out.read_bytes()) == members_of(
        zstandard.ZstdCompressor().compress(source))
    back = tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj()
                                           .decompress(out.read_bytes())))
    assert back.getmember(".").pax_headers[ROOT_XATTR[0]] == ROOT_XATTR[1]

    stream = io.BytesIO()
    export_snapshot(repo, result.snapshot, stream)   # a stream: the same archive
    assert members_of(stream.getvalue()) == members_of(out.read_bytes())


def test_export_refuses_an_existing_file_unless_forced(repo, tmp_path):
    import_archive(repo, io.BytesIO(make_tar(corpus_members(big=False))), "vbt-io-vol")
    out = tmp_path / "taken"
    out.write_bytes(b"keep me")
    with pytest.raises(TargetNotEmpty):
        export_snapshot(repo, "vbt-io-vol", str(out))
    assert out.read_bytes() == b"keep me"
    export_snapshot(repo, "vbt-io-vol", str(out), force=True)
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, IntegrityError])
def test_an_interrupted_or_failed_export_leaves_nothing(repo, tmp_path, stop):
    import_archive(repo, io.BytesIO(make_tar(corpus_members())), "vbt-io-vol")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    @contextmanager
    def progress(label: str, total: int | None):
        def update(n: int) -> None:
            raise stop("stopped half way")
        yield update

    with pytest.raises(stop):
        export_snapshot(repo, "vbt-io-vol", str(out_dir / "v.tar.zst"), progress=progress)
    assert os.listdir(out_dir) == []


def test_a_damaged_snapshot_is_not_exported(repo, tmp_path):
    import_archive(repo, io.BytesIO(make_tar(corpus_members())), "vbt-io-vol")
    root = tmp_path / "repo"
    biggest = max((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert biggest.stat().st_size > BIG_FILE_BYTES // 2
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IntegrityError):
        export_snapshot(repo, "vbt-io-vol", str(out_dir / "v.tar.zst"))
    assert os.listdir(out_dir) == []


def test_refused_import_leaves_no_snapshot_and_no_named_blob(repo, tmp_path):
    before = files(tmp_path / "repo")
    tar = gzip.compress(make_tar(corpus_members()))
    with pytest.raises(InputRefused, match="^junk.tgz refused, no snapshot made: the gzip"):
        import_archive(repo, io.BytesIO(tar[:-300]), "vbt-io-vol", name="junk.tgz")
    assert repo.snapshots().snapshots == [] and repo.orphans() == []
    assert repo.unfinished_writes() == []
    left = [f for f in files(tmp_path / "repo") if f not in before]
    assert all(f.startswith("chunks/") for f in left), left   # chunked: swept by prune
    assert repo.locks() == []


def test_export_onto_a_filesystem_without_hard_links(repo, tmp_path, monkeypatch):
    """vfat or exFAT (a USB stick) refuses link(): the file is renamed into place instead."""
    import errno

    import_archive(repo, io.BytesIO(make_tar(corpus_members(big=False))), "vbt-io-vol")

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "usb" / "v.tar.zst"
    out.parent.mkdir()
    export_snapshot(repo, "vbt-io-vol", str(out))
    assert os.listdir(out.parent) == ["v.tar.zst"]
    assert members_of(out.read_bytes())["./hello.txt"][-1] == b"hello, volume\n"

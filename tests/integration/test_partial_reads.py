"""A partial read fetches only the chunks that hold what it wants: a single-file restore
out of a volume of many chunks reads a handful of chunk objects in a chunked repository, a
few ranges of packs in a packed one (counted at the backend, not timed), locally and on S3."""

from __future__ import annotations

import os

import pytest

from tests.integration.helpers import contents, fill
from volbackup.docker.engine import Engine
from volbackup.ops.restore import RestoreOptions, restore
from volbackup.repo.backends import open_backend
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.partial import file_bytes
from volbackup.repo.repository import Repository, read_config
from volbackup.stream.catalog import Selection

DATA_MIB = 24      # about 20 chunks of the default 1.25 MiB
HANDFUL = 3        # data chunks a small file may straddle (two) and one to spare


@pytest.fixture(params=["local", "s3"])
def url(request, repo_dir):
    if request.param == "local":
        return str(repo_dir)
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/vb"


def counting_repo(url: str) -> tuple[Repository, CountingBackend]:
    backend = CountingBackend(open_backend(url))
    repo = Repository(backend, read_config(backend))
    backend.reset()
    return repo, backend


def source_volume(make_volume, mountpoint):
    """24 MiB in three files, and two small ones beside them."""
    source = make_volume("src")
    root = mountpoint(source.name)
    for i in range(3):
        fill(root, {f"data/part-{i}.bin": os.urandom(DATA_MIB // 3 << 20)})
    fill(root, {"conf/app.ini": b"[app]\nport = 5432\n", "conf/other.ini": b"x\n"})
    return source


def test_a_single_file_reads_a_handful_of_chunks(url, cli, make_volume, mountpoint, names):
    source = source_volume(make_volume, mountpoint)
    assert cli("init", "-r", url, "--layout", "chunked").code == 0   # chunk objects counted
    backed_up = cli("backup", source.name, "-r", url)
    assert backed_up.code == 0, backed_up.stderr

    repo, backend = counting_repo(url)
    (manifest,) = repo.snapshots(source.name).snapshots
    assert manifest.chunks >= 15, manifest.chunks     # reading it all would be many
    catalog_chunks = manifest.catalog.get("chunks", 0)

    (entry,) = [e for e in repo.select(manifest, Selection(include=("conf/app.ini",)))()
                if e.path == "conf/app.ini"]
    data = b"".join(file_bytes(repo.partial(manifest, lambda: iter([entry])).chunks(), entry))
    assert data == b"[app]\nport = 5432\n"
    assert backend.objects["chunks"] <= catalog_chunks + HANDFUL, dict(backend.objects)

    backend.reset()
    target = names("part")
    (done,) = restore(Engine.connect(), repo, [manifest.snapshot], target,
                      options=RestoreOptions(paths=Selection(include=("conf/app.ini",)))).volumes
    assert not done.failed, done.message
    assert contents(mountpoint(target)) == {"conf/app.ini": b"[app]\nport = 5432\n"}
    assert backend.objects["chunks"] <= catalog_chunks + HANDFUL, dict(backend.objects)
    assert backend.bytes["chunks"] < manifest.stored_bytes / 4, dict(backend.bytes)

    backend.reset()  # the counter sees every chunk a whole read fetches
    repo.unpacker(manifest).drain()
    assert backend.objects["chunks"] >= manifest.chunks > catalog_chunks + HANDFUL


def test_a_single_file_in_a_packed_repository_reads_a_few_ranges(url, cli, make_volume,
                                                                mountpoint, names):
    """What `init` makes by default: a blob is a ranged read of its pack, so a single file
    costs a few small requests, never a pack read whole."""
    source = source_volume(make_volume, mountpoint)
    assert cli("init", "-r", url).code == 0
    backed_up = cli("backup", source.name, "-r", url)
    assert backed_up.code == 0, backed_up.stderr

    repo, backend = counting_repo(url)
    assert repo.layout.name == "packed"
    (manifest,) = repo.snapshots(source.name).snapshots
    (entry,) = [e for e in repo.select(manifest, Selection(include=("conf/app.ini",)))()
                if e.path == "conf/app.ini"]
    data = b"".join(file_bytes(repo.partial(manifest, lambda: iter([entry])).chunks(), entry))
    assert data == b"[app]\nport = 5432\n"
    partial = backend.bytes["packs"]
    assert backend.objects["packs"] == 0 and 0 < partial < manifest.stored_bytes / 8, (
        dict(backend.requests), dict(backend.bytes))

    backend.reset()
    target = names("part")
    (done,) = restore(Engine.connect(), repo, [manifest.snapshot], target,
                      options=RestoreOptions(paths=Selection(include=("conf/app.ini",)))).volumes
    assert not done.failed, done.message
    assert contents(mountpoint(target)) == {"conf/app.ini": b"[app]\nport = 5432\n"}
    assert backend.bytes["packs"] < manifest.stored_bytes / 8, dict(backend.bytes)
    print(f"packed, one file: {dict(backend.requests)} requests, {dict(backend.bytes)} bytes "
          f"of {manifest.stored_bytes} stored")

    backend.reset()  # the counter sees every blob a whole read fetches
    repo.unpacker(manifest).drain()
    assert backend.bytes["packs"] >= DATA_MIB << 20 > 8 * partial, dict(backend.bytes)

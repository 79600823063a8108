"""What `copy` pays for checking the chunks its target holds already (issue 23, item 5).

    PYTHONPATH=. python benchmarks/copy_check.py [--size-mib 256] [--stores local,rgw]

No engine: a tar stream of --size-mib of random data (one file) is stored twice in a local
chunked repository (defaults of `init`): snapshots A and B, the same chunks. A is copied
into a fresh chunked target (every chunk sent); then B, whose every chunk the target holds:
the case the check costs most. B's copy is timed, and the target's reads are counted
(volbackup.repo.backends.counting), twice: as copy does it (each chunk the target holds is
read back and checked once), and with that check stubbed out (what copy did before: trust
the name), into a fresh target each time. The target is a local directory, and a bucket on
Ceph RGW when VOLBACKUP_RGW_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY) is set.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import partial
from volbackup.ops import copy as copy_ops
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.chunkstore import ChunkObjects
from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository, new_snapshot_id
from volbackup.timefmt import utc_iso


def tar_of(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./data.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return out.getvalue()


def snapshot(repo: Repository, tar: bytes, when: datetime) -> Manifest:
    snap = new_snapshot_id("bench", when)
    with repo.snapshot_writer(snap) as writer:
        packed = writer.pack((tar[i:i + (1 << 20)] for i in range(0, len(tar), 1 << 20)), 3)
    manifest = Manifest(snap, "bench", "local", {}, {}, utc_iso(when, "milliseconds"), "bench",
                        "bench", writer.archive, "zstd", 3, packed.bytes, packed.stored_bytes,
                        packed.sha256, packed.entries, 0.0, **writer.fields(packed))
    repo.commit(manifest)
    return manifest


def rgw_target():
    """A fresh bucket on RGW (partial.bucket makes and empties it)."""
    return partial.bucket({
        "AWS_ENDPOINT_URL": os.environ["VOLBACKUP_RGW_ENDPOINT"],
        "AWS_ACCESS_KEY_ID": os.environ.get("VOLBACKUP_RGW_ACCESS_KEY", ""),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("VOLBACKUP_RGW_SECRET_KEY", ""),
        "AWS_DEFAULT_REGION": "us-east-1"})


@contextmanager
def local_target():
    path = tempfile.mkdtemp(prefix="vbbench-")
    try:
        yield path
    finally:
        shutil.rmtree(path)


def measure(source: Repository, a: Manifest, b: Manifest, url: str, check: bool) -> dict:
    target = Repository.init(url)
    copy_ops.copy(source, target, copy_ops.Choice([a.snapshot]))
    counting = CountingBackend(target.backend)
    target = Repository(counting, target.config)
    holds = ChunkObjects.holds
    if not check:
        ChunkObjects.holds = lambda self, chunk_id, length: True  # what copy did before
    try:
        started = time.monotonic()
        (outcome,) = copy_ops.copy(source, target, copy_ops.Choice([b.snapshot])).snapshots
        seconds = time.monotonic() - started
    finally:
        ChunkObjects.holds = holds
    assert outcome.status == "copied", outcome.message
    return {"check": check, "seconds": round(seconds, 2), "chunks": outcome.chunks,
            "sent": outcome.chunks_sent, "objects_read": dict(counting.objects),
            "bytes_read": dict(counting.bytes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--stores", default="local,rgw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vbbench-") as src:
        source = Repository.init(src)
        tar = tar_of(args.size_mib << 20)
        now = datetime.now(timezone.utc)
        a = snapshot(source, tar, now - timedelta(minutes=2))
        b = snapshot(source, tar, now - timedelta(minutes=1))
        del tar
        stores = {"local": local_target}
        if os.environ.get("VOLBACKUP_RGW_ENDPOINT"):
            stores["rgw"] = rgw_target
        for name in args.stores.split(","):
            if name not in stores:
                print(f"{name}: skipped (not configured)", file=sys.stderr)
                continue
            for check in (False, True):
                with stores[name]() as url:
                    print(name, args.size_mib, "MiB", measure(source, a, b, url, check),
                          flush=True)


if __name__ == "__main__":
    main()

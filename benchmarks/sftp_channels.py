"""SFTP from several threads: a channel per thread (the backend's pool) against one channel
behind a lock, on chunk-sized blobs, as the chunk writers and fetch-ahead readers use them.

Starts its own sshd on 127.0.0.1 (tests/sftp_server.py's SshServer, so the repository is
on this machine's disk: loopback, no network). Run as a user that may start sshd (root):

    python benchmarks/sftp_channels.py [--blobs 400] [--size-kib 512] [--json]

Writes `--blobs` blobs with 4 threads (chunked.WRITERS), reads them back with 8 threads
(chunked.READERS), for each way of sharing, and prints MiB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paramiko  # noqa: E402

from tests.sftp_server import SshServer  # noqa: E402
from volbackup.repo.backends.sftp import SFTPBackend  # noqa: E402


class OneChannel:
    """The other way: every verb of every thread takes turns on one SFTP channel."""

    def __init__(self, backend: SFTPBackend):
        self.backend, self.lock, self.sftp = backend, threading.Lock(), None

    @contextmanager
    def channel(self):
        with self.lock:
            if self.sftp is None:
                self.sftp = paramiko.SFTPClient.from_transport(self.backend._connect())
            yield self.sftp

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.get_channel().get_transport().close()


def measure(url: str, way: str, blobs: int, size: int) -> dict:
    backend = SFTPBackend(url)
    if way == "one channel, locked":
        backend.connections = OneChannel(backend)
    data = [os.urandom(size) for _ in range(8)]
    keys = [f"chunks/{i % 256:02x}/{i:064x}" for i in range(blobs)]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: backend.write_bytes(k, data[hash(k) % 8]), keys))
        wrote = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: backend.read_bytes(k, limit=None), keys))
        read = time.perf_counter() - start
    finally:
        backend.close()
    mib = blobs * size / (1 << 20)
    return {"way": way, "blobs": blobs, "size_kib": size >> 10,
            "write_mib_s": round(mib / wrote, 1), "read_mib_s": round(mib / read, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=400)
    parser.add_argument("--size-kib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vbbench-sftp-", dir="/tmp"))
    server = SshServer(root)
    server.start()
    os.environ.update(server.env)
    rows = []
    try:
        for r in range(args.rounds):
            for way in ("channel per thread", "one channel, locked") if r % 2 == 0 else \
                    ("one channel, locked", "channel per thread"):
                repo = tempfile.mkdtemp(dir=server.data)
                try:
                    rows.append(measure(server.url(os.path.basename(repo)), way, args.blobs,
                                        args.size_kib << 10))
                finally:
                    shutil.rmtree(repo)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['way']:<22} write {row['write_mib_s']:>7} MiB/s   "
                  f"read {row['read_mib_s']:>7} MiB/s   ({row['blobs']} x {row['size_kib']} KiB)")


if __name__ == "__main__":
    main()

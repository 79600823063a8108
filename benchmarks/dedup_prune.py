"""Time `volbackup prune` of a chunked repository with many chunks on S3 (moto's server).

    python benchmarks/dedup_prune.py --chunks 100000 [--json]

The repository is made directly through volbackup's own Backend (backups would take far
longer to make 100k chunks): `volbackup init`, then --chunks chunks of 64-192 random bytes
(real chunks: zstd frames named by their sha256), and two chunk lists without manifests
naming half of them each: one stamped 2020 (an old leftover: prune removes it, and its
chunks are swept) and one stamped tomorrow (a young leftover: it and its chunks are kept).
Prune then lists every chunk, reads one list, and deletes half the chunks
(DeleteObjects, 1,000 keys a request). moto's server runs in a child process (so it
does not share this process's GIL) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from benchrun import timed, volbackup_cmd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.moto_s3 import S3_ENV  # noqa: E402

SERVER = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen) -> None:
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("dedup_prune.py: moto server did not start")


def write_chunks(url: str, n: int) -> list[str]:
    import zstandard
    from volbackup.repo.repository import Repository

    store = Repository.open(url, writable=True).chunk_store

    def put(i: int) -> str:
        data = secrets.token_bytes(64 + i % 128)
        chunk_id = hashlib.sha256(data).hexdigest()
        store.put(chunk_id, data, zstandard.ZstdCompressor(level=1, write_checksum=True))
        return chunk_id

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(put, range(n), chunksize=256))


def write_list(url: str, key: str, ids: list[str]) -> None:
    from volbackup.repo.repository import Repository

    body = "".join(f"{i} {64 + n % 128}\n" for n, i in enumerate(ids)).encode()
    with Repository.open(url, writable=True).backend.open_write(key) as out:
        out.write(body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_ready(server)
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        os.environ.pop("AWS_PROFILE", None)
        import boto3
        bucket = f"vbbench-{secrets.token_hex(3)}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/repo"
        timed([*volbackup_cmd(), "init", "-r", url], "volbackup init")
        started = time.monotonic()
        ids = write_chunks(url, args.chunks)
        write_seconds = time.monotonic() - started
        half = len(ids) // 2
        # "young": stamped a day ahead, so it stays young however long the prune takes
        young = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
        write_list(url, "snapshots/vbbench-old/20200101T000000Z-0000.chunks", ids[:half])
        write_list(url, f"snapshots/vbbench-young/{young}-0001.chunks", ids[half:])
        time.sleep(2)
        common = ["prune", "-r", url, "--keep-last", "1", "--leftover-age", "1s", "--json"]
        printed: list[str] = []
        dry_seconds, _ = timed([*volbackup_cmd(), *common, "--dry-run"], "prune --dry-run", printed)
        printed.clear()
        seconds, rss = timed([*volbackup_cmd(), *common], "prune", printed, rss=True)
        answer = json.loads(printed[0])
        sweep = answer.get("chunks") or {}
        out = {"chunks": args.chunks, "write_seconds": round(write_seconds, 1),
               "dry_run_seconds": round(dry_seconds, 2), "prune_seconds": round(seconds, 2),
               "prune_rss_mib": round(rss, 1), "referenced": sweep.get("referenced"),
               "removed": sweep.get("removed"), "stored": sweep.get("stored"), "sweep": sweep}
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['chunks']} chunks written in {out['write_seconds']} s; prune "
              f"{out['prune_seconds']} s (removed {out['removed']}, referenced "
              f"{out['referenced']}), dry run {out['dry_run_seconds']} s, RSS {out['prune_rss_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

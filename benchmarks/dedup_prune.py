"""Time `volbackup prune` of a chunked repository with many chunks on S3 (moto's server).

    python benchmarks/dedup_prune.py --chunks 100000 [--json]

moto's server runs in a child process on 127.0.0.1. The repository is made by
`volbackup init`, then filled inside the server process, straight into moto's store
(through HTTP moto takes about 8 ms a PUT on this machine: 14 min for 100k chunks):
--chunks chunks of 64-192 random bytes (real chunks: zstd frames named by their sha256)
and two chunk lists without manifests naming half of them each: one stamped 2020 (an old
leftover: prune removes it, and its chunks are swept) and one stamped tomorrow (a young
leftover: it and its chunks are kept). Then, over HTTP, `volbackup prune --dry-run` and
`volbackup prune` (--leftover-age 1s): each lists every chunk and reads one list; the
real one also deletes half the chunks (DeleteObjects, 1,000 keys a request).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time

from benchrun import timed, volbackup_cmd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.moto_s3 import S3_ENV  # noqa: E402

SERVER = """
import hashlib, logging, secrets, sys
from datetime import datetime, timedelta, timezone
import zstandard
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
for line in sys.stdin:
    bucket, prefix, n = line.split()
    store = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    lines = []
    for i in range(int(n)):
        data = secrets.token_bytes(64 + i % 128)
        chunk_id = hashlib.sha256(data).hexdigest()
        store.put_object(bucket, f"{prefix}/chunks/{chunk_id[:2]}/{chunk_id}",
                         compressor.compress(data))
        lines.append(f"{chunk_id} {len(data)}\\n")
    half = len(lines) // 2
    young = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    for key, part in ((f"{prefix}/snapshots/vbbench-old/20200101T000000Z-0000.chunks", lines[:half]),
                      (f"{prefix}/snapshots/vbbench-young/{young}-0001.chunks", lines[half:])):
        store.put_object(bucket, key, "".join(part).encode())
    print("done", flush=True)
server.stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc: subprocess.Popen, word: str) -> None:
    if proc.stdout.readline().strip() != word:
        raise SystemExit(f"dedup_prune.py: moto server did not say {word!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_for(server, "ready")
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        os.environ.pop("AWS_PROFILE", None)
        import boto3
        bucket = f"vbbench-{secrets.token_hex(3)}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/repo"
        timed([*volbackup_cmd(), "init", "-r", url, "--layout", "chunked"], "volbackup init")
        started = time.monotonic()
        server.stdin.write(f"{bucket} repo {args.chunks}\n")
        server.stdin.flush()
        wait_for(server, "done")
        write_seconds = time.monotonic() - started
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

"""Peak RSS of `volbackup backup` to S3 and `restore` from it, for volumes of different sizes.

S3 is moto's server on 127.0.0.1 in a process of its own (each volbackup run is a child
whose own peak RSS, VmHWM, is reported; see benchmarks/benchrun.py). Run as root beside a
Docker engine:

    python benchmarks/s3_memory.py --sizes 256,2048 [--json]

Each size gets a fresh volume of incompressible data plus 1,000 small files (see
benchmarks/memory.py), a backup into a fresh bucket and a restore into a fresh volume.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time

import boto3
import docker
from memory import print_rows, round_trip  # benchmarks/memory.py, next to this script


def measure(mib: int, client, s3) -> dict:
    bucket = f"vbbench-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    try:
        return round_trip(mib, client, f"s3://{bucket}/bench")
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,2048", help="MiB per volume, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        s3 = boto3.client("s3")
        for _ in range(100):
            try:
                s3.list_buckets()
                break
            except Exception:  # not listening yet
                time.sleep(0.1)
        rows = [measure(int(s), docker.from_env(timeout=600), s3) for s in args.sizes.split(",")]
    finally:
        server.terminate()
        server.wait()
    print_rows(rows, args.json)


if __name__ == "__main__":
    main()

"""Throughput and peak RSS of `volbackup backup` and `restore` to each kind of repository:
a directory, SFTP over loopback, S3 (Ceph RGW, or moto's server without one).

The SFTP server is a throwaway OpenSSH sshd on 127.0.0.1 (tests/sftp_server.py's
SshServer: its own host key, client key and ssh_config), so the bytes cross the SSH stack
but no network. S3 is the RGW that VOLBACKUP_RGW_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY) names
(`source /work/svc/env`), else a moto server this script starts. Run as root beside a
Docker engine:

    python benchmarks/backends.py --mib 1024 [--targets local,sftp,s3] [--layout chunked] [--json]

Each target gets the same kind of fresh volume (benchmarks/memory.py's fill: 64 MiB files,
alternately incompressible and highly compressible, plus 1,000 small files), a backup into a
fresh repository (`init` first for the chunked layout) and a restore into a fresh volume,
each in its own process (its own VmHWM is the peak RSS).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.sftp_server

from memory import print_rows, round_trip, run  # noqa: E402  benchmarks/memory.py

from tests.sftp_server import SshServer  # noqa: E402


def s3_store() -> tuple[object, subprocess.Popen | None]:
    """(boto3 client, moto process or None); the AWS env points at the store."""
    moto = None
    if os.environ.get("VOLBACKUP_RGW_ENDPOINT"):
        os.environ.update(AWS_ENDPOINT_URL=os.environ["VOLBACKUP_RGW_ENDPOINT"],
                          AWS_ACCESS_KEY_ID=os.environ["VOLBACKUP_RGW_ACCESS_KEY"],
                          AWS_SECRET_ACCESS_KEY=os.environ["VOLBACKUP_RGW_SECRET_KEY"],
                          AWS_DEFAULT_REGION="us-east-1")
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    s3 = boto3.client("s3")
    for _ in range(100):
        try:
            s3.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    return s3, moto


def empty_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)


def measure(target: str, mib: int, layout: str, client, places: dict) -> dict:
    if target == "local":
        repo_dir = tempfile.mkdtemp(prefix="vbbench-repo-")
        repo, done = repo_dir, lambda: shutil.rmtree(repo_dir)
    elif target == "sftp":
        server: SshServer = places["sftp"]
        repo_dir = tempfile.mkdtemp(prefix="repo-", dir=server.data)
        repo, done = server.url(os.path.basename(repo_dir)), lambda: shutil.rmtree(repo_dir)
    else:
        s3 = places["s3"]
        bucket = f"vbbench-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        repo, done = f"s3://{bucket}/bench", lambda: empty_bucket(s3, bucket)
    try:
        if layout == "chunked":
            run("init", "-r", repo)
        return {"target": target, "layout": layout, **round_trip(mib, client, repo)}
    finally:
        done()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="volume size in MiB")
    parser.add_argument("--targets", default="local,sftp,s3")
    parser.add_argument("--layout", choices=["archive", "chunked"], default="chunked")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    targets = args.targets.split(",")
    places: dict = {}
    moto = None
    root = None
    try:
        if "sftp" in targets:
            root = Path(tempfile.mkdtemp(prefix="vbbench-sftp-", dir="/tmp"))
            places["sftp"] = SshServer(root)
            places["sftp"].start()
            os.environ.update(places["sftp"].env)
        if "s3" in targets:
            places["s3"], moto = s3_store()
        client = docker.from_env()
        rows = [measure(t, args.mib, args.layout, client, places) for t in targets]
    finally:
        if "sftp" in places:
            places["sftp"].stop()
        if root:
            shutil.rmtree(root, ignore_errors=True)
        if moto:
            moto.terminate()
            moto.wait()
    if args.json:
        print_rows(rows, True)
        return
    for row in rows:
        print(f"{row['target']:<6} {row['layout']:<8}"
              f"{row['mib']:>5} MiB  backup {row['backup_mib_s']:>6} MiB/s, RSS "
            f"{row['backup_rss_mib']:>6} MiB   restore {row['restore_mib_s']:>6} MiB/s, RSS "
            f"{row['restore_rss_mib']:>6} MiB")


if __name__ == "__main__":
    main()

"""Partial reads measured: what `dump` of one small file and a restore of one small
directory read from a chunked repository, against a full restore (issue 16).

    PYTHONPATH=. python benchmarks/partial.py [--size-mib 512] [--stores local,moto,rgw] [--json FILE]

Run as root beside a Docker engine. A volume of --size-mib of unique data
(uniquevolume.py: 4 large files, thousands of small ones in small/dNNN/) is backed up
once per store into a fresh chunked repository: a local directory, a bucket on moto's S3
server (started here), and one on Ceph RGW when VOLBACKUP_RGW_ENDPOINT (+ _ACCESS_KEY,
_SECRET_KEY) is set. Then, in this process, through a backend wrapper that counts every
object opened and every byte read (volbackup.repo.backends.counting):
  dump     one small file's bytes (the catalogue read, then only its chunk: the read
           path of `volbackup dump`: Repository.select, partial, file_bytes);
  part     `restore --include small/d001` (about 100 files) into a fresh volume;
  full     a restore of the whole snapshot into a fresh volume.
A local repository is evicted from the page cache before each read. Everything made is
named vbbench-<random>- and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import boto3
import docker

import benchrun
import uniquevolume
from volbackup.docker.engine import Engine
from volbackup.ops.restore import RestoreOptions, restore
from volbackup.repo.backends import open_backend
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.partial import file_bytes
from volbackup.repo.repository import Repository, read_config
from volbackup.stream.catalog import Selection

PREFIX = f"vbbench-{secrets.token_hex(3)}-"
PART = "small/d001"


@contextmanager
def moto_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.terminate()
        server.wait(10)


@contextmanager
def bucket(env: dict):
    """A fresh bucket on the endpoint `env` names; this process's AWS env points there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = boto3.session.Session().client("s3")  # not the default session: its keys stick
    for _ in range(100):
        try:
            s3.list_buckets()
            break
        except Exception:  # moto not listening yet
            time.sleep(0.1)
    name = f"{PREFIX}{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=name)
    try:
        yield f"s3://{name}/bench"
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=obj["Key"])
        s3.delete_bucket(Bucket=name)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(*args: str) -> None:
    done = subprocess.run([*benchrun.volbackup_cmd(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise benchrun.StepFailed(f"volbackup {' '.join(args)}: {done.stderr.strip()}")


def measure(store: str, url: str, volume: str, client, local: str | None) -> list[dict]:
    run("init", "-r", url, "--layout", "chunked")
    started = time.monotonic()
    run("backup", volume, "-r", url)
    backup_seconds = time.monotonic() - started
    backend = CountingBackend(open_backend(url))
    repo = Repository(backend, read_config(backend))
    (manifest,) = repo.snapshots(volume).snapshots
    small = next(e for e in repo.catalog(manifest)
                 if e.type == "file" and e.path.startswith("small/") and e.size < 16 << 10)
    engine = Engine.connect()
    rows = []

    def step(what: str, detail: str, action) -> None:
        if local:
            benchrun.evict(local)
        backend.reset()
        started = time.monotonic()
        action()
        row = {"store": store, "read": what, "detail": detail,
               "seconds": round(time.monotonic() - started, 3),
               "chunk_objects": backend.objects["chunks"],
               "objects": sum(backend.objects.values()), "bytes": sum(backend.bytes.values()),
               "snapshot_chunks": manifest.chunks,
               "catalog_chunks": (manifest.catalog or {}).get("chunks", 0),
               "stored_bytes": manifest.stored_bytes, "backup_seconds": round(backup_seconds, 1)}
        rows.append(row)
        show(row)

    def dump() -> None:
        (entry,) = [e for e in repo.select(manifest, Selection(include=(small.path,)))()
                    if e.path == small.path]
        data = b"".join(file_bytes(repo.partial(manifest, lambda: iter([entry])).chunks(),
                                   entry))
        assert len(data) == small.size

    def restored(selection: Selection | None):
        target = f"{PREFIX}{secrets.token_hex(3)}"
        try:
            (done,) = restore(engine, repo, [manifest.snapshot], target,
                              options=RestoreOptions(paths=selection)).volumes
            if done.failed:
                raise benchrun.StepFailed(done.message)
        finally:
            try:
                client.volumes.get(target).remove(force=True)
            except docker.errors.NotFound:
                pass

    def show(r: dict) -> None:
        print(f"{r['store']:6} {r['read']:5} {r['chunk_objects']:>10} {r['objects']:>8} "
              f"{r['bytes'] / (1 << 20):>9.2f} {r['seconds']:>8.2f}  of {r['snapshot_chunks']:>6}"
              f"  {r['detail']}", flush=True)

    step("dump", f"{small.path} ({small.size} B)", dump)
    step("part", f"restore --include {PART}", lambda: restored(Selection(include=(PART,))))
    step("full", "restore (whole snapshot)", lambda: restored(None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--stores", default="local,moto,rgw",
                        help="comma-separated; rgw only where VOLBACKUP_RGW_ENDPOINT is set")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    stores = args.stores.split(",")
    client = docker.from_env(timeout=600)
    volume = client.volumes.create(f"{PREFIX}src")
    work = tempfile.mkdtemp(prefix=PREFIX)
    rows: list[dict] = []
    print(f"{'store':6} {'read':5} {'chunk objs':>10} {'objects':>8} {'MiB read':>9} "
          f"{'seconds':>8}  of {'chunks':>6}", flush=True)
    try:
        uniquevolume.fill(client.api.inspect_volume(volume.name)["Mountpoint"], args.size_mib)
        if "local" in stores:
            repo = os.path.join(work, "repo")
            os.mkdir(repo)
            rows += measure("local", repo, volume.name, client, repo)
        if "moto" in stores:
            with moto_server() as env, bucket(env) as url:
                rows += measure("moto", url, volume.name, client, None)
        if "rgw" in stores and os.environ.get("VOLBACKUP_RGW_ENDPOINT"):
            env = {"AWS_ENDPOINT_URL": os.environ["VOLBACKUP_RGW_ENDPOINT"],
                   "AWS_ACCESS_KEY_ID": os.environ.get("VOLBACKUP_RGW_ACCESS_KEY", ""),
                   "AWS_SECRET_ACCESS_KEY": os.environ.get("VOLBACKUP_RGW_SECRET_KEY", ""),
                   "AWS_DEFAULT_REGION": "us-east-1"}
            with bucket(env) as url:
                rows += measure("rgw", url, volume.name, client, None)
    finally:
        volume.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size_mib": args.size_mib, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

"""Backup and restore of one volume to each kind of store over loopback: throughput and the
peak RSS of each volbackup process, in a chunked repository (`volbackup init`) or, with
`--layout archive`, an archive one.

Stores: a directory (local), SFTP on OpenSSH's sshd, S3 on Ceph RGW, WebDAV on Apache httpd +
mod_dav, Azure on Azurite, Swift on RGW's Swift API. sshd, Apache and Azurite are started
here, in temp dirs on free ports of 127.0.0.1, and stopped at the end (tests/sftp_server.py,
tests/opendal_servers.py); RGW is the running one named by VOLBACKUP_RGW_ENDPOINT (+
_ACCESS_KEY, _SECRET_KEY; its Swift subuser as tests/ceph_rgw.sh makes it). Run as root
beside a Docker engine, from the repository root:

    python benchmarks/stores.py --mib 1024 [--stores local,sftp,s3,webdav,azure,swift]
                                [--layout chunked|archive] [--json]

The volume is benchmarks/memory.py's: 64 MiB files, alternately incompressible and highly
compressible, plus 1,000 small files; one backup into a fresh repository, one restore into a
fresh volume, each in its own process (peak RSS: its VmHWM, benchmarks/benchrun.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import docker
from memory import print_rows, round_trip, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.*_server(s)
from tests import opendal_servers as servers  # noqa: E402
from tests.sftp_server import SshServer  # noqa: E402

STORES = ("local", "sftp", "s3", "webdav", "azure", "swift")


@contextmanager
def repository(store: str, stack: ExitStack):
    """(URL, env) of a fresh, empty repository on `store`; removed afterwards."""
    name = f"vbbench-{secrets.token_hex(4)}"
    if store == "local":
        directory = tempfile.mkdtemp(prefix="vbbench-")
        try:
            yield directory, {}
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif store == "sftp":
        server = stack.enter_context(_started(_start_sshd))
        directory = tempfile.mkdtemp(prefix="repo-", dir=server.data)
        try:
            yield server.url(os.path.basename(directory)), server.env
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif store == "s3":
        import boto3

        env = {"AWS_ENDPOINT_URL": os.environ["VOLBACKUP_RGW_ENDPOINT"],
               "AWS_ACCESS_KEY_ID": os.environ["VOLBACKUP_RGW_ACCESS_KEY"],
               "AWS_SECRET_ACCESS_KEY": os.environ["VOLBACKUP_RGW_SECRET_KEY"],
               "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name="us-east-1")
        s3.create_bucket(Bucket=name)
        try:
            yield f"s3://{name}/bench", env
        finally:
            from tests.rgw_s3 import remove_bucket
            remove_bucket(s3, name)
    elif store == "webdav":
        server = stack.enter_context(_started(servers.start_apache))
        data = server["dir"] / "data" / name
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "www-data", "www-data")
        try:
            yield (f"webdav://127.0.0.1:{server['port']}/{name}",
                   {"VOLBACKUP_WEBDAV_USER": servers.WEBDAV_USER,
                    "VOLBACKUP_WEBDAV_PASSWORD": servers.WEBDAV_PASSWORD})
        finally:
            shutil.rmtree(data, ignore_errors=True)
    elif store == "azure":
        server = stack.enter_context(_started(servers.start_azurite))
        servers.azure_request(server["endpoint"], "PUT", name)
        try:
            yield f"azure://{name}/bench", {"AZURE_STORAGE_CONNECTION_STRING":
                                            f"AccountName={servers.AZURITE_ACCOUNT};"
                                            f"AccountKey={servers.AZURITE_KEY};"
                                            f"BlobEndpoint={server['endpoint']}"}
        finally:
            servers.azure_request(server["endpoint"], "DELETE", name)
    elif store == "swift":
        env = {"ST_AUTH": f"{os.environ['VOLBACKUP_RGW_ENDPOINT']}/auth/1.0",
               "ST_USER": os.environ.get("VOLBACKUP_RGW_SWIFT_USER", servers.SWIFT_DEFAULTS[0]),
               "ST_KEY": os.environ.get("VOLBACKUP_RGW_SWIFT_KEY", servers.SWIFT_DEFAULTS[1])}
        storage, token = servers.swift_token(env)
        servers.swift_call(storage, token, "PUT", name)
        try:
            yield f"swift://{name}/bench", env
        finally:
            while names := json.loads(servers.swift_call(storage, token, "GET",
                                                         f"{name}?format=json") or b"[]"):
                for obj in names:
                    servers.swift_call(storage, token, "DELETE", f"{name}/{obj['name']}")
            servers.swift_call(storage, token, "DELETE", name)


_running: dict = {}


def _start_sshd() -> SshServer:
    server = SshServer(Path(tempfile.mkdtemp(prefix="vbbench-sftp-", dir="/tmp")))
    server.start()
    return server


@contextmanager
def _started(start):
    """One server per kind for the whole run."""
    if start not in _running:
        _running[start] = start()
    yield _running[start]


def measure(store: str, mib: int, layout: str, client, stack: ExitStack) -> dict:
    with repository(store, stack) as (url, env):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            if layout == "chunked":
                run("init", "-r", url, "--layout", "chunked")
            return {"store": store, "layout": layout, **round_trip(mib, client, url)}
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.update({k: v})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="volume size in MiB")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--layout", choices=["archive", "chunked"], default="chunked")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    rows = []
    with ExitStack() as stack:
        try:
            for store in args.stores.split(","):
                rows.append(measure(store, args.mib, args.layout, client, stack))
        finally:
            for server in _running.values():
                if isinstance(server, SshServer):
                    server.stop()
                    shutil.rmtree(server.root, ignore_errors=True)
                else:
                    servers.stop(server["proc"])
                    shutil.rmtree(server["dir"], ignore_errors=True)
    if args.json:
        print_rows(rows, True)
        return
    for r in rows:
        print(f"{r['store']:<7} {r['layout']:<8} {r['mib']:>5} MiB  backup {r['backup_mib_s']:>6} "
              f"MiB/s, RSS {r['backup_rss_mib']:>6} MiB   restore {r['restore_mib_s']:>6} MiB/s, "
              f"RSS {r['restore_rss_mib']:>6} MiB")


if __name__ == "__main__":
    main()

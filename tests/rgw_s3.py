"""S3 on a real S3-compatible store: Ceph's RADOS gateway (RGW), one bucket per test.

Where RGW comes from, in this order:
- VOLBACKUP_RGW_ENDPOINT (+ VOLBACKUP_RGW_ACCESS_KEY, VOLBACKUP_RGW_SECRET_KEY): a running
  RGW, e.g. the one .ci/run starts with tests/ceph_rgw.sh;
- else, where `radosgw` is installed, the session starts its own with tests/ceph_rgw.sh in
  a temporary directory (on a free port) and stops it at the end; in a parallel run
  (pytest-xdist) the first worker that needs it starts one for all workers
  (tests/shared_services.py), and the controller stops it at the end;
- else the RGW tests are skipped, unless VOLBACKUP_REQUIRE_ENGINE=1 or CI is set: there a
  missing RGW fails them (CI must never skip a real store).

`rgw_bucket` points this process's AWS env at RGW for the duration of one test only (moto's
session fixture points it at moto otherwise); `any_s3_bucket` runs a test against both.
The fixtures are imported by tests/backends/conftest.py and tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVERS
from tests.moto_s3 import BUCKET_PREFIX
from tests.shared_services import shared_dir, shared_service

SCRIPT = Path(__file__).with_name("ceph_rgw.sh")
DEFAULT_KEYS = ("vbtest-rgw-access", "vbtest-rgw-secret-key")  # tests/ceph_rgw.sh's

_shared: dict = {"users": 0}


def _start_own() -> dict:
    """Start RGW with tests/ceph_rgw.sh in a fresh directory; fail if that does not work."""
    directory = tempfile.mkdtemp(prefix="vbtest-rgw-")  # short: ceph's sockets live there
    env = {**os.environ, "CEPH_RGW_PORT": "0", "CEPH_RGW_ACCESS_KEY": DEFAULT_KEYS[0],
           "CEPH_RGW_SECRET_KEY": DEFAULT_KEYS[1]}
    proc = subprocess.run(["bash", str(SCRIPT), "start", directory], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"radosgw is installed but {SCRIPT.name} start failed "
                    f"(logs in {directory}/log):\n{proc.stderr[-2000:]}")
    return {"endpoint": proc.stdout.strip().splitlines()[-1], "keys": list(DEFAULT_KEYS),
            "dir": directory}


def _stop_own(directory: str) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", directory], check=True, timeout=120)


def _start_for_workers() -> dict:
    """An RGW for every worker of a parallel run; the controller stops it (rgw_dir)."""
    started = _start_own()
    return {"endpoint": started["endpoint"], "keys": started["keys"], "rgw_dir": started["dir"]}


@pytest.fixture(scope="session")
def rgw_endpoint():
    """The RGW endpoint URL (http://127.0.0.1:PORT); its keys are in `rgw_env`."""
    if not _shared["users"]:
        endpoint = os.environ.get("VOLBACKUP_RGW_ENDPOINT")
        if endpoint:
            keys = (os.environ.get("VOLBACKUP_RGW_ACCESS_KEY", DEFAULT_KEYS[0]),
                    os.environ.get("VOLBACKUP_RGW_SECRET_KEY", DEFAULT_KEYS[1]))
            _shared.update(endpoint=endpoint, keys=keys, dir=None)
        elif shutil.which("radosgw") and shared_dir():
            record = shared_service("rgw", _start_for_workers)
            _shared.update(endpoint=record["endpoint"], keys=record["keys"], dir=None)
        elif shutil.which("radosgw"):
            _shared.update(_start_own())
        else:
            why = ("no Ceph RGW: set VOLBACKUP_RGW_ENDPOINT, or install radosgw (apt-get install "
                   "--no-install-recommends ceph-mon ceph-osd radosgw ceph-common)")
            if REQUIRE_SERVERS:
                pytest.fail(f"{why}; required here (VOLBACKUP_REQUIRE_ENGINE=1 or CI)")
            pytest.skip(why)
    _shared["users"] += 1
    try:
        yield _shared["endpoint"]
    finally:
        _shared["users"] -= 1
        if not _shared["users"] and _shared["dir"]:
            _stop_own(_shared["dir"])


@pytest.fixture(scope="session")
def rgw_env(rgw_endpoint) -> dict:
    """The AWS env variables that point boto3 (and volbackup) at RGW."""
    access, secret = _shared["keys"]
    return {"AWS_ENDPOINT_URL": rgw_endpoint, "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "3"}


@pytest.fixture
def rgw_client(rgw_env):
    import boto3

    return boto3.client("s3", endpoint_url=rgw_env["AWS_ENDPOINT_URL"],
                        aws_access_key_id=rgw_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=rgw_env["AWS_SECRET_ACCESS_KEY"],
                        region_name=rgw_env["AWS_DEFAULT_REGION"])


def remove_bucket(client, name: str) -> None:
    """Abort its multipart uploads, delete its objects, delete it."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    client.delete_bucket(Bucket=name)


@pytest.fixture
def rgw_bucket(rgw_env, rgw_client, monkeypatch):
    """A fresh bucket on RGW; during the test this process's AWS env points at RGW (undone
    after it, so moto's tests still reach moto). Emptied and removed after the test."""
    name = f"{BUCKET_PREFIX}{secrets.token_hex(4)}"
    rgw_client.create_bucket(Bucket=name)
    try:
        with monkeypatch.context() as patch:
            for key, value in rgw_env.items():
                patch.setenv(key, value)
            for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
                patch.delenv(key, raising=False)
            yield name
    finally:
        remove_bucket(rgw_client, name)


@pytest.fixture(params=["moto", "rgw"])
def any_s3_bucket(request):
    """A fresh bucket on moto, then on RGW, with the AWS env pointed at that server."""
    return request.getfixturevalue("s3_bucket" if request.param == "moto" else "rgw_bucket")


@pytest.fixture
def any_s3_client(any_s3_bucket):
    """A boto3 client for the server `any_s3_bucket` is on (from the env it set). A session
    of its own: boto3's default session keeps the credentials it found first."""
    import boto3

    return boto3.session.Session().client("s3")

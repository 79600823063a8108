"""S3 on moto's server on 127.0.0.1 (real HTTP), one bucket per test; needs no Docker engine.

The fixtures are imported by tests/backends/conftest.py and tests/integration/conftest.py.
Both share one server per test process (the env variables point at one endpoint only). In a
parallel run each worker has its own too, unlike RGW (tests/shared_services.py): tests change
moto's global state (its IAM users and whether it checks credentials, test_s3_cli), which
one server shared by the workers would leak into the other workers' tests; and moto in one
process would serve every worker's requests on one core.
"""

from __future__ import annotations

import logging
import os
import secrets

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "vbtest-access-key", "AWS_SECRET_ACCESS_KEY": "vbtest-secret-key",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "3"}
BUCKET_PREFIX = f"vbtest-{secrets.token_hex(3)}-"

_shared: dict = {"users": 0}


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's ThreadedMotoServer; point this process and its children at it."""
    if not _shared["users"]:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        os.environ.pop("AWS_PROFILE", None)
        _shared.update(server=server, endpoint=endpoint, saved=saved)
    _shared["users"] += 1
    try:
        yield _shared["endpoint"]
    finally:
        _shared["users"] -= 1
        if not _shared["users"]:
            for key, value in _shared["saved"].items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _shared["server"].stop()


@pytest.fixture
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def s3_bucket(s3_client):
    """A fresh bucket named with the session prefix; emptied and removed after the test."""
    name = f"{BUCKET_PREFIX}{secrets.token_hex(4)}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for upload in s3_client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3_client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)

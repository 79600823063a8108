"""S3's own details, on moto's server on 127.0.0.1 (the contract it shares with every backend
is in test_contract.py): multipart uploads and their leftovers, options, bad URLs, part
sizes, resumed downloads, and which requests are retried and how often."""

from __future__ import annotations

import os

import pytest

from tests.backends.test_contract import Boom, keys
from volbackup.backends import open_backend
from volbackup.backends.s3 import BASE_PART, part_size
from volbackup.errors import RepositoryError


@pytest.fixture
def backend(s3_bucket):
    return open_backend(f"s3://{s3_bucket}/repo/one")


def uploads(s3_client, bucket):
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_large_blob_goes_multipart_and_streams_back(backend, s3_client, s3_bucket):
    data = os.urandom(3 * BASE_PART + 12345)
    with backend.open_write("snapshots/v/big.tar.zst") as writer:
        for pos in range(0, len(data), 300_000):
            writer.write(data[pos:pos + 300_000])
        assert len(uploads(s3_client, s3_bucket)) == 1  # parts are on their way
        assert keys(backend) == []
    head = s3_client.head_object(Bucket=s3_bucket, Key="repo/one/snapshots/v/big.tar.zst")
    assert head["ETag"].endswith('-4"')  # 3 full parts and the rest: a multipart ETag
    assert uploads(s3_client, s3_bucket) == []
    with backend.open_read("snapshots/v/big.tar.zst") as reader:
        first = reader.read(1 << 20)
        assert len(first) == 1 << 20
        rest = b"".join(iter(lambda: reader.read(1 << 20), b""))
    assert first + rest == data


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_interrupted_multipart_write_leaves_no_upload(backend, s3_client, s3_bucket, error):
    with pytest.raises(error):
        with backend.open_write("snapshots/v/x.tar.zst") as writer:
            writer.write(os.urandom(2 * BASE_PART + 1))
            assert len(uploads(s3_client, s3_bucket)) == 1
            raise error()
    assert uploads(s3_client, s3_bucket) == []
    assert keys(backend) == [] and backend.leftovers() == []


def test_a_dangling_upload_is_a_leftover_until_removed(backend, s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="repo/other/x", Body=b"1")
    up = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="repo/one/snapshots/v/k.tar.zst")
    s3_client.upload_part(Bucket=s3_bucket, Key="repo/one/snapshots/v/k.tar.zst",
                          UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1000)
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="repo/other/y")  # not ours
    (left,) = backend.leftovers()
    assert (left.key, left.ident, left.size) == ("snapshots/v/k.tar.zst", up["UploadId"], 1000)
    backend.remove_leftover(left)
    backend.remove_leftover(left)  # gone already: not an error
    assert backend.leftovers() == []
    assert [u["Key"] for u in uploads(s3_client, s3_bucket)] == ["repo/other/y"]


def test_storage_class_and_encryption_are_applied(s3_bucket, s3_client):
    backend = open_backend(f"s3://{s3_bucket}", {"storage_class": "STANDARD_IA", "sse": "AES256"})
    backend.write_bytes("small", b"abc")
    with backend.open_write("big") as writer:
        writer.write(os.urandom(BASE_PART + 1))
    for key in ("small", "big"):
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"


@pytest.mark.parametrize("url, options, message", [
    ("s3://", None, "needs a bucket"),
    ("s3://AKIAX:secret@bucket/x", None, "takes no credentials"),
    ("s3://bucket/a//b", None, "invalid blob key"),
    ("s3://bucket", {"storage_class": "GLACIER"}, "not one of"),
    ("s3://bucket", {"sse": "AES256", "sse_kms_key_id": "k"}, "needs server-side encryption aws:kms"),
    ("/tmp/somewhere", {"sse": "AES256"}, "apply only to s3:// repositories"),
])
def test_bad_urls_and_options(s3_endpoint, url, options, message):
    with pytest.raises((RepositoryError, ValueError), match=message) as caught:
        open_backend(url, options)
    assert "secret" not in str(caught.value)


def test_missing_bucket_is_a_repository_error(s3_endpoint):
    with pytest.raises(RepositoryError, match="bucket vbtest-none-here does not exist") as e:
        open_backend("s3://vbtest-none-here").check(writable=True)
    assert e.value.exit_code == 5


def test_part_size_schedule_fits_100_gib_in_1000_parts():
    sizes = [part_size(n) for n in range(1, 10_001)]
    assert sizes[:256] == [BASE_PART] * 256 and sizes[256] == 2 * BASE_PART
    assert all(5 << 20 <= s <= 5 << 30 for s in sizes)
    assert sum(sizes[:256]) == 2 << 30
    assert sum(sizes[:1000]) >= 100 << 30
    assert sizes == sorted(sizes)


def test_a_broken_download_resumes_where_it_stopped(backend):
    import botocore.exceptions

    data = os.urandom(3 << 20)
    backend.write_bytes("blob", data)
    with backend.open_read("blob") as reader:
        first = reader.read(1 << 20)
        real_read, broken = reader.body.read, []

        def break_once(size=None):
            if not broken:
                broken.append(size)
                raise botocore.exceptions.ResponseStreamingError(error="connection reset")
            return real_read(size)

        reader.body.read = break_once
        rest = b"".join(iter(lambda: reader.read(1 << 20), b""))
    assert broken and first + rest == data

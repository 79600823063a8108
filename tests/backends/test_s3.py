"""S3's own details, on moto's server on 127.0.0.1 (the contract it shares with every backend
is in test_contract.py): multipart uploads and their leftovers, options, bad URLs, part
sizes, resumed downloads, and which requests are retried and how often."""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.backends.test_contract import Boom, keys
from volbackup.errors import RepositoryError
from volbackup.repo.backends import RangeBeyondEnd, open_backend
from volbackup.repo.backends.s3 import BASE_PART, part_size


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


# -- which requests are retried, and how often: a fake endpoint that answers 503 ----------

SLOW_DOWN = (503, {"Content-Type": "application/xml"},
             b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>")


@pytest.fixture
def flaky_endpoint(monkeypatch):
    """A real HTTP endpoint on 127.0.0.1; `answer(method, path)` gives each response.

    Yields a dict: `answer` (replace it), `requests` (method and path of each request),
    `headers` (the headers of each request).
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state: dict = {"requests": [], "headers": [], "answer": lambda method, path: SLOW_DOWN}

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Transfer-Encoding") == "chunked":
                while (size := int(self.rfile.readline().split(b";")[0], 16)):
                    self.rfile.read(size + 2)
                self.rfile.readline()
            elif length:
                self.rfile.read(length)
            state["requests"].append((self.command, self.path))
            state["headers"].append(dict(self.headers))
            status, headers, body = state["answer"](self.command, self.path)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "vbtest", "AWS_SECRET_ACCESS_KEY": "vbtest",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "3",
                        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def flaky_backend(slept: list):
    """What open_backend builds (AWS_MAX_ATTEMPTS=3), with the pauses recorded, not slept."""
    from volbackup.repo.backends import RetryBackend
    from volbackup.repo.backends.retry import Retry
    from volbackup.repo.backends.s3 import S3Backend

    retry = Retry(3, backoff=lambda n: float(n), sleep=slept.append)
    return RetryBackend(S3Backend("s3://bucket/repo", retry=retry), 3, retry.backoff, retry.sleep)


def test_open_backend_wraps_s3_with_aws_max_attempts(flaky_endpoint):
    from volbackup.repo.backends import RetryBackend
    from volbackup.repo.backends.s3 import S3Backend

    backend = open_backend("s3://bucket/repo")
    assert isinstance(backend, RetryBackend) and isinstance(backend.inner, S3Backend)
    assert backend.retry.attempts == backend.inner.retry.attempts == 3


@pytest.mark.parametrize("verb, doing", [
    (lambda b: b.stat("k"), "reading k"),
    (lambda b: b.read_bytes("k"), "reading k"),
    (lambda b: b.read_range("k", 0, 10), "reading bytes 0-9 of k"),
    (lambda b: list(b.list("snapshots/")), "listing"),
    (lambda b: b.check(writable=True), "checking the bucket"),
    (lambda b: b.delete("k"), "deleting k"),
    # a small blob: the writer's own PUT tries, settled, are not tried again by the wrapper
    (lambda b: b.write_bytes("k", b"{}"), "writing repo/k"),
])
def test_a_store_that_keeps_failing_gets_exactly_the_attempts(flaky_endpoint, verb, doing):
    """3 requests with AWS_MAX_ATTEMPTS=3: not botocore's 3 times ours, not ours twice."""
    slept: list = []
    with pytest.raises(RepositoryError) as caught:
        verb(flaky_backend(slept))
    assert type(caught.value).__name__ == "RepositoryUnreachable" and caught.value.exit_code == 10
    assert re.search(f" kept failing for s3://bucket/repo while {doing} "
                     r"\((SlowDown|503), gave up after retries\)$", str(caught.value)), caught.value
    assert len(flaky_endpoint["requests"]) == 3, flaky_endpoint["requests"]
    assert slept == [1.0, 2.0]


def test_a_flaky_store_answers_on_the_third_try(flaky_endpoint):
    def answer(method, path):
        if len(flaky_endpoint["requests"]) < 3:
            return SLOW_DOWN
        return 200, {"Content-Length": "42", "ETag": '"abc"'}, b""

    flaky_endpoint["answer"] = answer
    slept: list = []
    assert flaky_backend(slept).stat("k").size == 42
    assert [m for m, _ in flaky_endpoint["requests"]] == ["HEAD"] * 3 and slept == [1.0, 2.0]


def test_each_part_of_an_upload_is_retried_inside_the_writer(flaky_endpoint):
    """The wrapper cannot replay a stream, so the multipart writer retries each request."""
    failed: set = set()

    def answer(method, path):
        step = _step(method, path)
        if step not in failed:       # every kind of request fails once, then works
            failed.add(step)
            return SLOW_DOWN
        if step == ("POST", "uploads="):
            return 200, {}, (b"<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>repo/big"
                             b"</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>")
        if method == "PUT":
            return 200, {"ETag": f'"{len(flaky_endpoint["requests"])}"'}, b""
        return 200, {}, (b"<CompleteMultipartUploadResult><Bucket>bucket</Bucket><Key>repo/big"
                         b"</Key><ETag>\"x-2\"</ETag></CompleteMultipartUploadResult>")

    flaky_endpoint["answer"] = answer
    slept: list = []
    with flaky_backend(slept).open_write("big") as writer:
        writer.write(b"x" * (BASE_PART + 10))
    steps = [_step(m, p) for m, p in flaky_endpoint["requests"]]
    parts = sorted(steps[2:-2])   # sent concurrently
    assert steps[:2] == [("POST", "uploads=")] * 2 and steps[-2:] == [("POST", "uploadId=up-1")] * 2
    assert parts == [("PUT", "partNumber=1")] * 2 + [("PUT", "partNumber=2")] * 2, steps
    assert slept == [1.0] * 4


def _step(method: str, path: str) -> tuple[str, str]:
    """("PUT", "partNumber=2"): the request's method and the query item that says what it is."""
    query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
    for name in ("uploads", "partNumber", "uploadId"):
        if name in query:
            return method, f"{name}={query[name]}"
    return method, ""


def test_a_denied_request_is_not_retried(flaky_endpoint):
    flaky_endpoint["answer"] = lambda method, path: (
        403, {}, b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    slept: list = []
    with pytest.raises(RepositoryError) as caught:
        flaky_backend(slept).read_bytes("k")
    assert caught.value.exit_code == 9 and "access denied to s3://bucket/repo" in str(caught.value)
    assert len(flaky_endpoint["requests"]) == 1 and slept == []


def test_an_upload_aborted_while_leftovers_are_listed_is_no_error(any_s3_bucket, any_s3_client):
    """leftovers() lists the uploads, then sizes each with ListParts: one aborted in between
    is skipped, whatever the store answers (AWS and moto: NoSuchUpload; Ceph RGW: NoSuchKey)."""
    backend = open_backend(f"s3://{any_s3_bucket}/repo/one").inner
    key = "repo/one/snapshots/v/k.tar.zst"
    up = any_s3_client.create_multipart_upload(Bucket=any_s3_bucket, Key=key)
    any_s3_client.upload_part(Bucket=any_s3_bucket, Key=key, UploadId=up["UploadId"],
                              PartNumber=1, Body=b"x" * 100)
    (left,) = backend.leftovers()
    assert left.size == 100
    any_s3_client.abort_multipart_upload(Bucket=any_s3_bucket, Key=key, UploadId=up["UploadId"])
    unsized = dataclasses.replace(left, size=None)
    assert backend._with_size(unsized) == unsized   # the step of leftovers() after the listing
    assert backend.leftovers() == []
    backend.remove_leftover(left)  # gone already: not an error


# -- read_range against stores that answer something else than the range asked for -------

def test_a_ranged_read_sends_one_range_request_and_is_retried_whole(flaky_endpoint):
    def answer(method, path):
        if len(flaky_endpoint["requests"]) < 2:
            return SLOW_DOWN
        return 206, {"Content-Range": "bytes 10-19/1000", "ETag": '"abc"'}, b"0123456789"

    flaky_endpoint["answer"] = answer
    slept: list = []
    assert flaky_backend(slept).read_range("packs/p", 10, 10) == b"0123456789"
    assert [m for m, _ in flaky_endpoint["requests"]] == ["GET"] * 2 and slept == [1.0]
    assert {h.get("Range") for h in flaky_endpoint["headers"]} == {"bytes=10-19"}


@pytest.mark.parametrize("status, headers, body", [
    (200, {}, b"x" * 1000),                                  # Range ignored: the whole object
    (206, {"Content-Range": "bytes 0-9/1000"}, b"x" * 10),   # another range
    (206, {"Content-Range": "bytes 10-29/1000"}, b"x" * 20),  # more than asked for
    (206, {"Content-Range": "bytes 10-14/1000"}, b"x" * 5),  # fewer, though the object is longer
    (206, {"Content-Range": "bytes 10-19/1000"}, b"x" * 5),  # a body shorter than its range says
    (206, {}, b"x" * 10),                                    # no Content-Range at all
], ids=["whole", "other", "more", "fewer", "body-short", "no-content-range"])
def test_an_answer_for_another_range_is_refused_not_returned(flaky_endpoint, status, headers, body):
    flaky_endpoint["answer"] = lambda method, path: (status, {"ETag": '"abc"', **headers}, body)
    with pytest.raises(RepositoryError) as caught:
        flaky_backend([]).read_range("packs/p", 10, 10)
    message = str(caught.value)
    assert type(caught.value) is RepositoryError and caught.value.exit_code == 5   # not retried
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+ answered a read of bytes 10-19 of packs/p in "
                        r"s3://bucket/repo with .* bytes\): a store that does not honour Range", message)
    assert len(flaky_endpoint["requests"]) == 1


def test_a_body_cut_off_is_retried_then_unreachable(flaky_endpoint):
    """The store promises 10 bytes and closes after 5: a broken body, tried again whole."""
    flaky_endpoint["answer"] = lambda method, path: (
        206, {"Content-Range": "bytes 10-19/1000", "Content-Length": "10"}, b"x" * 5)
    slept: list = []
    with pytest.raises(RepositoryError) as caught:
        flaky_backend(slept).read_range("packs/p", 10, 10)
    assert type(caught.value).__name__ == "RepositoryUnreachable", caught.value
    assert "broke while reading bytes 10-19 of packs/p" in str(caught.value)
    assert len(flaky_endpoint["requests"]) == 3 and slept == [1.0, 2.0]


def test_416_says_how_long_the_object_is_and_is_not_retried(flaky_endpoint):
    flaky_endpoint["answer"] = lambda method, path: (
        416, {"Content-Range": "bytes */100", "Content-Type": "application/xml"},
        b"<Error><Code>InvalidRange</Code><Message>The requested range is not satisfiable"
        b"</Message></Error>")
    slept: list = []
    with pytest.raises(RangeBeyondEnd, match=r"^packs/p in repository s3://bucket/repo holds only "
                                             r"100 bytes: bytes 200-209 \(10 bytes\) are past its end$"):
        flaky_backend(slept).read_range("packs/p", 200, 10)
    assert len(flaky_endpoint["requests"]) == 1 and slept == []


@pytest.mark.parametrize("size", [0, 15])
def test_a_whole_object_too_short_for_the_range_is_beyond_its_end(flaky_endpoint, size):
    """A store that answers a range of a short object with 200 and the whole of it."""
    flaky_endpoint["answer"] = lambda method, path: (200, {"ETag": '"abc"'}, b"x" * size)
    with pytest.raises(RangeBeyondEnd, match=f"packs/p in repository s3://bucket/repo holds only "
                                             f"{size} bytes: bytes 10-19"):
        flaky_backend([]).read_range("packs/p", 10, 10)
    assert len(flaky_endpoint["requests"]) == 1

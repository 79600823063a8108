"""A repository in an S3 bucket (AWS or an S3-compatible store): `s3://BUCKET[/PREFIX]`.

The only module that imports boto3. Credentials, region and endpoint come from the standard
AWS chain (AWS_PROFILE, AWS_ACCESS_KEY_ID..., AWS_REGION, AWS_ENDPOINT_URL[_S3]).

Writes stream into a multipart upload: the writer fills one part in memory and hands it to
a small pool of upload threads (bounded bytes in flight), so memory depends on the part
size, never on the blob size. Small blobs (under one part) are a single PUT. A blob becomes
visible only with CompleteMultipartUpload; any exception, KeyboardInterrupt included, aborts
the upload. The part size grows as parts accumulate (see `part_size`), since the archive
size is not known in advance.

Each request is sent once (botocore's own retries are off); a failure worth retrying is a
`TransientError`. Verbs are retried by the `RetryBackend` that `open_backend` wraps around
this backend; inside a stream, where that wrapper cannot replay bytes, this module retries
each request itself with the same policy (`self.retry`): starting, sending each part of,
completing and aborting an upload, a small blob's PUT, and re-opening a broken download at
its offset.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import timezone
from typing import BinaryIO, Iterator

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from volbackup.errors import RepositoryDenied, RepositoryError
from volbackup.repo.backends.base import (
    Backend,
    BlobInfo,
    BlobNotFound,
    Leftover,
    TransientError,
    UnfinishedUploads,
    beyond_end,
    check_key,
    check_range,
)
from volbackup.repo.backends.retry import Retry, RetryBackend, attempts_from, settled
from volbackup.urls import safe_url, scrub

MiB = 1 << 20
BASE_PART = 8 * MiB        # parts 1..FLAT_PARTS (the first 2 GiB)
FLAT_PARTS = 256
GROW_EVERY = 20            # then the part size grows by BASE_PART every GROW_EVERY parts
MAX_PARTS = 10_000         # the AWS limit; many S3-compatible stores allow only 1,000
MAX_PART = 5 * 1024 * MiB  # the AWS limit for one part
IN_FLIGHT_BYTES = 32 * MiB  # parts uploading while the next one fills (at least one)
READ_RETRIES = 3

STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER_IR", "REDUCED_REDUNDANCY")  # readable at once, manifests too
SSE_MODES = ("AES256", "aws:kms")

_DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId",
                    "AuthorizationHeaderMalformed"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_STREAM_ERRORS = (bce.ResponseStreamingError, bce.ReadTimeoutError, bce.IncompleteReadError,
                  bce.ConnectionClosedError)
# Content-Range of a 206 answer ("bytes 0-99/1234"), and of a 416 one ("bytes */1234")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED = re.compile(r"bytes \*/(\d+)")


def part_size(number: int) -> int:
    """Size of part `number` (1-based): 8 MiB for the first 2 GiB, then growing linearly.

    1,000 parts hold 118 GiB (the last at 312 MiB); 10,000 parts hold 18 TiB.
    """
    if number <= FLAT_PARTS:
        return BASE_PART
    return min(MAX_PART, BASE_PART * (2 + (number - FLAT_PARTS - 1) // GROW_EVERY))


def parse_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET[/PREFIX]` -> (bucket, prefix without slashes at either end)."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # Never echo it: it may hold a secret.
        raise RepositoryError("an s3:// repository URL takes no credentials or port; use "
                              "AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_ENDPOINT_URL")
    if not bucket:
        raise RepositoryError("an s3:// repository URL needs a bucket: s3://BUCKET[/PREFIX]")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return bucket, prefix


def attempts_from_env() -> int:
    """Tries per request in all (AWS_MAX_ATTEMPTS, as botocore reads it; default 8)."""
    return attempts_from("AWS_MAX_ATTEMPTS")


def _client():
    # One try per request: retrying is RetryBackend's (and, inside streams, self.retry's).
    # The mode still matters: "adaptive" rate-limits requests on the client.
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    config = Config(retries={"mode": mode, "total_max_attempts": 1},
                    connect_timeout=10, read_timeout=120, max_pool_connections=16)
    try:
        return boto3.session.Session().client("s3", config=config)
    except (bce.BotoCoreError, ValueError) as e:
        # botocore quotes AWS_ENDPOINT_URL whole, also when it is no URL: never repeat it
        why = ("AWS_ENDPOINT_URL is not a valid URL" if str(e).startswith("Invalid endpoint")
               else scrub(str(e)))
        raise RepositoryError(f"cannot set up the S3 client: {why}") from None


class S3Backend(Backend, UnfinishedUploads):
    def __init__(self, url: str, storage_class: str | None = None, sse: str | None = None,
                 sse_kms_key_id: str | None = None, client=None, retry: Retry | None = None):
        self.bucket, self.prefix = parse_url(url)
        self.retry = retry or Retry(attempts_from_env())
        if storage_class and storage_class not in STORAGE_CLASSES:
            raise RepositoryError(f"storage class {storage_class} is not one of "
                                  f"{', '.join(STORAGE_CLASSES)}")
        if sse and sse not in SSE_MODES:
            raise RepositoryError(f"server-side encryption {sse} is not one of {', '.join(SSE_MODES)}")
        if sse_kms_key_id and sse not in (None, "aws:kms"):
            raise RepositoryError("a KMS key id needs server-side encryption aws:kms")
        self.put_args: dict = {}
        if storage_class:
            self.put_args["StorageClass"] = storage_class
        if sse or sse_kms_key_id:
            self.put_args["ServerSideEncryption"] = sse or "aws:kms"
        if sse_kms_key_id:
            self.put_args["SSEKMSKeyId"] = sse_kms_key_id
        self.client = client or _client()
        endpoint = self.client.meta.endpoint_url
        self.endpoint = safe_url(endpoint) if endpoint else "S3"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def error(self, e: Exception, doing: str) -> RepositoryError:
        """A one-line error for a boto3/botocore exception; never carries credentials."""
        where = self.describe()
        if isinstance(e, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return RepositoryDenied(f"no usable AWS credentials for {where} (set AWS_PROFILE, or "
                                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if isinstance(e, (bce.EndpointConnectionError, bce.ConnectTimeoutError,
                          bce.ConnectionClosedError, bce.ReadTimeoutError)):
            return TransientError(f"cannot reach the S3 endpoint {self.endpoint} for "
                                  f"{where} while {doing} (gave up after retries)")
        if isinstance(e, bce.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "")) or str(e.response.get("ResponseMetadata", {})
                                                   .get("HTTPStatusCode", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and doing == "checking the bucket"):
                return RepositoryError(f"bucket {self.bucket} does not exist at {self.endpoint}")
            if code in _BAD_CREDENTIALS:
                return RepositoryDenied(f"{self.endpoint} rejected the AWS credentials for "
                                        f"{where} ({code}); check AWS_PROFILE or AWS_ACCESS_KEY_ID")
            if code in _DENIED:
                return RepositoryDenied(f"access denied to {where} while {doing} (check the "
                                        f"IAM policy, see docs/s3.md)")
            if status and status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return TransientError(f"{self.endpoint} kept failing for {where} while "
                                      f"{doing} ({code}, gave up after retries)")
            message = scrub(" ".join(str(err.get("Message", "")).split())[:200])
            return RepositoryError(f"S3 refused {doing} in {where}: {code}"
                                   + (f": {message}" if message else ""))
        return RepositoryError(f"S3 error in {where} while {doing}: "
                               f"{type(e).__name__}: {scrub(' '.join(str(e).split()))[:200]}")

    @contextmanager
    def _calls(self, doing: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore exceptions into VolbackupErrors; a missing key into BlobNotFound."""
        try:
            yield
        except (bce.BotoCoreError, bce.ClientError) as e:
            if key is not None and isinstance(e, bce.ClientError) and \
                    str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                raise BlobNotFound(f"{key} is missing from repository {self.describe()}") from None
            raise self.error(e, doing) from None

    # -- the Backend verbs
    def check(self, writable: bool) -> None:
        """The bucket exists and we may list it; write permission shows at the first write.

        A one-key listing, not HeadBucket: a HEAD error has no body, so it cannot tell bad
        credentials from a missing permission.
        """
        with self._calls("checking the bucket"):
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1,
                                        Prefix=f"{self.prefix}/" if self.prefix else "")

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        writer = _MultipartWriter(self, self._key(key))
        try:
            yield writer  # type: ignore[misc]
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        reader = _Reader(self, key)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """One GetObject with `Range: bytes=offset-last`. S3 answers what exists of a range
        (206 with fewer bytes) and 416 for one that starts past the end: both are a
        RangeBeyondEnd. An answer for any other range than the one asked for (a store that
        ignores Range sends the whole object with 200) is refused before its body is read,
        so memory stays within the range. A broken body is a TransientError: the whole
        verb can be tried again, unlike a stream handed out by open_read."""
        check_range(offset, length)
        last = offset + length - 1
        doing = f"reading bytes {offset}-{last} of {key}"
        with self._calls(doing, key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                                  Range=f"bytes={offset}-{last}")
            except bce.ClientError as e:
                meta = e.response.get("ResponseMetadata", {})
                if meta.get("HTTPStatusCode") == 416 or \
                        e.response.get("Error", {}).get("Code") == "InvalidRange":
                    size = _UNSATISFIED.fullmatch(meta.get("HTTPHeaders", {}).get("content-range", ""))
                    raise beyond_end(key, self.describe(), offset, length,
                                     int(size[1]) if size else None) from None
                raise
        body = response["Body"]
        try:
            got = _CONTENT_RANGE.fullmatch(response.get("ContentRange") or "")
            sent = response.get("ContentLength")
            whole = response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200
            if got is None and whole and sent is not None and sent < offset + length:
                # 200, the whole object (some stores answer so for a range of an empty
                # one): too short for the range anyway
                raise beyond_end(key, self.describe(), offset, length, sent)
            first, end, size = (int(n) for n in got.groups()) if got else (-1, -1, -1)
            if first != offset or end > last or sent != end - first + 1 \
                    or (end < last and end + 1 != size):
                raise RepositoryError(
                    f"{self.endpoint} answered a read of bytes {offset}-{last} of {key} in "
                    f"{self.describe()} with {(response.get('ContentRange') or 'the whole object')[:80]} "
                    f"({sent} bytes): a store that does not honour Range")
            if end < last:
                raise beyond_end(key, self.describe(), offset, length, size)
            data = _read_exactly(body, length)
        except _STREAM_ERRORS as e:
            raise TransientError(f"the connection to {self.endpoint} broke while {doing} from "
                                 f"{self.describe()} ({type(e).__name__}, gave up after retries)") from None
        finally:
            body.close()
        if len(data) != length:  # the body ended early without botocore noticing
            raise TransientError(f"{self.endpoint} sent {len(data)} of {length} bytes while {doing} "
                                 f"from {self.describe()} (gave up after retries)")
        return data

    def stat(self, key: str) -> BlobInfo:
        with self._calls(f"reading {key}", key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return BlobInfo(key, head["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        with self._calls("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield BlobInfo(self._rel(obj["Key"]), obj["Size"],
                                   modified=obj.get("LastModified"))

    def delete(self, key: str) -> None:
        with self._calls(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """DeleteObjects, 1000 keys a request; a key S3 reports as failed comes back."""
        failed = []
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            with self._calls(f"deleting {len(batch)} objects"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True})
            failed += [(self._rel(e["Key"]), f"{e.get('Code')}: {e.get('Message')}")
                       for e in answer.get("Errors", [])]
        return failed

    def leftovers(self) -> list[Leftover]:
        """Multipart uploads under the prefix that were neither completed nor aborted."""
        found = []
        root = f"{self.prefix}/" if self.prefix else ""
        with self._calls("listing multipart uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=root)
            for page in pages:
                for up in page.get("Uploads", []):
                    found.append(Leftover(self._rel(up["Key"]), up["UploadId"],
                                          up["Initiated"].astimezone(timezone.utc)))
        found = [self._with_size(f) for f in found]
        return sorted(found, key=lambda f: (f.started, f.key))

    def _with_size(self, leftover: Leftover) -> Leftover:
        size = 0
        with self._calls("listing multipart upload parts"):
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._key(leftover.key), UploadId=leftover.ident)
            try:
                for page in pages:
                    size += sum(p["Size"] for p in page.get("Parts", []))
            except bce.ClientError as e:
                # finished or aborted meanwhile; Ceph RGW answers NoSuchKey, AWS NoSuchUpload
                if e.response.get("Error", {}).get("Code") in ("NoSuchUpload", "NoSuchKey"):
                    return leftover
                raise
        return Leftover(leftover.key, leftover.ident, leftover.started, size)

    def remove_leftover(self, leftover: Leftover) -> None:
        try:
            with self._calls(f"aborting the upload of {leftover.key}"):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(leftover.key),
                                                   UploadId=leftover.ident)
        except RepositoryError as e:
            if "NoSuchUpload" not in str(e):
                raise


def _read_exactly(body, length: int) -> bytes:
    """Up to `length` bytes of a response body, fewer only if it ends first."""
    pieces, got = [], 0
    while got < length:
        piece = body.read(length - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _MultipartWriter:
    """A write-only file object that uploads whole parts while the next one fills."""

    def __init__(self, backend: S3Backend, key: str):
        self.backend, self.key = backend, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.number = 0                       # parts shipped so far
        self.parts: dict[int, str] = {}       # part number -> ETag
        self.pending: set[Future] = set()
        self.pool: ThreadPoolExecutor | None = None

    def write(self, data) -> int:
        self.buffer += data
        while len(self.buffer) >= part_size(self.number + 1):
            self._ship(part_size(self.number + 1))
        return len(data)

    def flush(self) -> None:
        pass

    def _ship(self, size: int) -> None:
        with memoryview(self.buffer) as view:
            body = view[:size].tobytes()
        del self.buffer[:size]
        self.number += 1
        if self.number > MAX_PARTS:
            raise RepositoryError(f"{self.key} needs more than {MAX_PARTS} parts, the S3 limit")
        if self.upload_id is None:
            self.upload_id = self.backend.retry.call(self._create)
            self.pool = ThreadPoolExecutor(max_workers=max(1, IN_FLIGHT_BYTES // BASE_PART),
                                           thread_name_prefix="s3-part")
        while len(self.pending) * size >= max(IN_FLIGHT_BYTES, size):
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)
        assert self.pool is not None
        self.pending.add(self.pool.submit(self._upload_part, self.number, body))

    def _create(self) -> str:
        with self.backend._calls(f"starting the upload of {self.key}"):
            return self.backend.client.create_multipart_upload(
                Bucket=self.backend.bucket, Key=self.key, **self.backend.put_args)["UploadId"]

    def _upload_part(self, number: int, body: bytes) -> None:
        self.backend.retry.call(self._send_part, number, body)

    def _send_part(self, number: int, body: bytes) -> None:
        with self.backend._calls(f"uploading part {number} of {self.key}"):
            response = self.backend.client.upload_part(
                Bucket=self.backend.bucket, Key=self.key, UploadId=self.upload_id,
                PartNumber=number, Body=body)
        self.parts[number] = response["ETag"]

    def _collect(self, done) -> None:
        for future in done:
            self.pending.discard(future)
            future.result()  # raises the part's error

    def finish(self) -> None:
        if self.upload_id is None:
            self.backend.retry.call(self._put, bytes(self.buffer))
            return
        if self.buffer:
            self._ship(len(self.buffer))
        self._collect(wait(self.pending).done)
        parts = [{"PartNumber": n, "ETag": self.parts[n]} for n in sorted(self.parts)]
        self.backend.retry.call(self._complete, parts)
        self._close_pool()

    def _put(self, body: bytes) -> None:
        with self.backend._calls(f"writing {self.key}"):
            self.backend.client.put_object(Bucket=self.backend.bucket, Key=self.key,
                                           Body=body, **self.backend.put_args)

    def _complete(self, parts: list[dict]) -> None:
        with self.backend._calls(f"completing the upload of {self.key}"):
            self.backend.client.complete_multipart_upload(
                Bucket=self.backend.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        """Stop uploading and abort; a failure here leaves a leftover for `cleanup`."""
        self.buffer = bytearray()
        if self.upload_id is None:
            return
        for future in self.pending:
            future.cancel()
        self._close_pool()
        try:
            self.backend.retry.call(self._abort)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass

    def _abort(self) -> None:
        with self.backend._calls(f"aborting the upload of {self.key}"):
            self.backend.client.abort_multipart_upload(
                Bucket=self.backend.bucket, Key=self.key, UploadId=self.upload_id)

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class _Reader:
    """Streams an object's body; a broken stream resumes with a ranged GET of the same ETag."""

    def __init__(self, backend: S3Backend, key: str):
        self.backend, self.key, self.full = backend, key, backend._key(key)
        self.pos = 0
        self.etag: str | None = None
        self.body = self._open()

    def _open(self):
        extra = {"Range": f"bytes={self.pos}-", "IfMatch": self.etag} if self.etag else {}
        with self.backend._calls(f"reading {self.key}", self.key):
            response = self.backend.client.get_object(Bucket=self.backend.bucket, Key=self.full,
                                                      **extra)
        self.etag = self.etag or response.get("ETag")
        return response["Body"]

    def read(self, size: int = -1) -> bytes:
        for attempt in range(READ_RETRIES + 1):
            try:
                data = self.body.read(None if size is None or size < 0 else size)
                self.pos += len(data)
                return data
            except _STREAM_ERRORS as e:
                self.body.close()
                if attempt == READ_RETRIES:
                    # part of the stream was handed out: nothing may retry it whole
                    raise settled(self.backend.error(e, f"reading {self.key}")) from None
                self.body = self.backend.retry.call(self._open)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.body.close()


def open_url(url: str, **options) -> Backend:
    """`s3://BUCKET[/PREFIX]` inside a RetryBackend with the backend's own policy: one
    policy, the wrapper's for whole verbs, the backend's inside its streams."""
    s3 = S3Backend(url, **options)
    return RetryBackend(s3, s3.retry.attempts, s3.retry.backoff, s3.retry.sleep)

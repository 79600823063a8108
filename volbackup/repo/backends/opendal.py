"""Repositories on WebDAV, Azure Blob Storage and OpenStack Swift, through Apache OpenDAL.

    webdav://[USER@]HOST[:PORT]/PATH     plain HTTP    (webdavs:// for HTTPS)
    azure://CONTAINER[/PREFIX]           Azure Blob Storage (or Azurite)
    swift://CONTAINER[/PREFIX]           OpenStack Swift (or Ceph RGW's Swift API)

The only module that imports `opendal`. Credentials come from each service's environment
(never from the URL, never printed), see `webdav_config`, `azure_config`, `swift_config` and
docs/storage.md.

What the services do not do the way the backend contract needs, and what this module does
about it (the contract suite, tests/backends/test_contract.py, runs on a real server of each):
- A write visible only when complete. Azure: a streamed write stages blocks and commits them
  when the `with` block ends; a failed write never commits (Azure drops uncommitted blocks
  after a week). Swift and WebDAV: OpenDAL's writer for them sends a blob in one request (its
  WebDAV writer takes one piece; its Swift writer would make a Static Large Object whose
  segments outlive a failed write and a delete), so the blob is held in memory and sent at
  the end with one PUT, at most ONE_PUT_MAX bytes: chunks, packs and lists of a chunked
  repository are far smaller; an archive repository's `.tar.zst` is not (docs/storage.md).
  On WebDAV the PUT goes to a temp name beside the blob (`.NAME.tmp-PID-PLACE-xxxx`, as in a
  directory repository) and is then MOVEd into place, since a server may write a PUT in place;
  a killed run leaves that temp file, which `cleanup` removes (`temp_files`).
- Listing in key order: Azure and Swift list in byte order (checked as the listing goes);
  WebDAV lists directories, so its listing is gathered and sorted.
- Ranged reads: all three honour Range; a short answer is a RangeBeyondEnd with the size.
- Conditional writes: not used (volbackup's locks do not need them).

Retrying is `RetryBackend`'s (open_url wraps this backend in it), so a request is tried
at most the wrapper's `attempts` times; a blob held in memory is sent again whole on a
TransientError, as S3's parts are. Only inside an Azure stream, which the wrapper cannot
replay, does OpenDAL's retry layer resend a block (as many tries in all). Every request has
a time limit (OpenDAL's timeout layer; its HTTP client has none), after which it counts as
transient.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import re
import threading
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

import opendal

from volbackup.errors import RepositoryDenied, RepositoryError, RepositoryUnreachable
from volbackup.repo.backends.base import (
    Backend,
    BlobInfo,
    BlobNotFound,
    MakesItsPlace,
    TempFile,
    TempFiles,
    TransientError,
    beyond_end,
    check_key,
    check_range,
    check_temp_key,
    is_temp_name,
    temp_name,
    temp_owner,
)
from volbackup.repo.backends.retry import Retry, RetryBackend, attempts_from, settled
from volbackup.urls import safe_url, scrub

MiB = 1 << 20
SCHEMES = ("webdav", "webdavs", "azure", "swift")
# WebDAV and Swift: the most one blob may hold (it is held in memory, then sent in one PUT).
# A packed repository's largest blob is a pack (--pack-size, at most 128 MiB, plus one chunk);
# a chunked repository's a chunk (about 17.2 MiB) or a chunk list.
ONE_PUT_MAX = 256 * MiB
AZURE_BLOCK = 8 * MiB       # a streamed Azure write stages blocks of this size
AZURE_CONCURRENT = 4        # blocks uploading at once (memory: about this many blocks)
CONTROL_TIMEOUT = 120.0     # seconds for a stat, list page or delete (S3's read timeout)
IO_TIMEOUT = 300.0          # seconds for one read or write of a body to make progress
DELETE_THREADS = 8          # delete_many: no batch call in OpenDAL's Python binding
_KIND = re.compile(r"^(\w+) \((permanent|temporary|persistent)\)")
_STATUS = re.compile(r"status: (\d{3})")
_AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in Microsoft's docs): what
# `UseDevelopmentStorage=true` means.
_AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
                "KBHBeksoGMGw==")
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")  # Azure's rule


@dataclass
class Service:
    """How to reach one repository: OpenDAL's scheme and options (secrets included: never
    shown), the URL without secrets for messages, and the variables to name when access is
    refused."""

    scheme: str                    # OpenDAL's: webdav, azblob, swift
    options: dict[str, str]
    where: str                     # the repository URL as messages show it
    endpoint: str                  # scheme://host[:port] of the server
    credentials: str               # "set ..." advice for a refusal
    refresh: Callable[[], dict[str, str]] | None = field(default=None, repr=False)


def _no_secret_in_netloc(url: str, scheme: str, form: str) -> str:
    netloc = urlsplit(url).netloc
    if ":" in netloc.rpartition("@")[0]:
        # Never echo it: it holds a password.
        raise RepositoryError(f"a {scheme}:// repository URL takes no password; set it in the "
                              f"environment instead (docs/storage.md): {form}")
    return netloc


def _container_and_prefix(url: str, scheme: str) -> tuple[str, str]:
    rest = url[len(scheme) + 3:]
    container, _, prefix = rest.partition("/")
    form = f"{scheme}://CONTAINER[/PREFIX]"
    if "@" in container or ":" in container:
        raise RepositoryError(f"a {scheme}:// repository URL takes no credentials or port; "
                              f"set them in the environment (docs/storage.md): {form}")
    if not container:
        raise RepositoryError(f"a {scheme}:// repository URL needs a container: {form}")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return container, prefix


def _root(prefix: str) -> str:
    return f"/{prefix}/" if prefix else "/"


def webdav_config(url: str, env: dict[str, str]) -> Service:
    """`webdav[s]://[USER@]HOST[:PORT]/PATH`. USER from the URL or VOLBACKUP_WEBDAV_USER,
    VOLBACKUP_WEBDAV_PASSWORD; or a bearer token in VOLBACKUP_WEBDAV_TOKEN."""
    scheme = url.partition("://")[0]
    form = f"{scheme}://[USER@]HOST[:PORT]/PATH"
    netloc = _no_secret_in_netloc(url, scheme, form)
    user, _, hostport = netloc.rpartition("@")
    try:
        parts = urlsplit(f"http://{hostport}")
        port = parts.port   # ValueError for a port out of range or not a number
    except ValueError:
        raise RepositoryError(f"the host of a {scheme}:// repository URL is not valid: {form}") from None
    if not parts.hostname or parts.path or parts.query or port == 0:
        raise RepositoryError(f"a {scheme}:// repository URL needs a host: {form}")
    path = urlsplit(url).path.strip("/")
    if urlsplit(url).query or urlsplit(url).fragment:
        raise RepositoryError(f"a {scheme}:// repository URL takes no query or fragment: {form}")
    if path:
        check_key(path)
    http = "https" if scheme == "webdavs" else "http"
    endpoint = f"{http}://{hostport}"
    options = {"endpoint": endpoint, "root": _root(path)}
    user = user or env.get("VOLBACKUP_WEBDAV_USER", "")
    if env.get("VOLBACKUP_WEBDAV_TOKEN"):
        options["token"] = env["VOLBACKUP_WEBDAV_TOKEN"]
    elif user:
        options["username"] = user
        options["password"] = env.get("VOLBACKUP_WEBDAV_PASSWORD", "")
    where = f"{scheme}://{hostport}/{path}" if path else f"{scheme}://{hostport}"
    return Service("webdav", options, where, safe_url(endpoint),
                   "check VOLBACKUP_WEBDAV_USER and VOLBACKUP_WEBDAV_PASSWORD, or "
                   "VOLBACKUP_WEBDAV_TOKEN")


def _connection_string(text: str) -> dict[str, str]:
    pairs = {}
    for item in text.split(";"):
        name, sep, value = item.strip().partition("=")
        if sep:
            pairs[name.strip()] = value.strip()
    return pairs


def azure_config(url: str, env: dict[str, str]) -> Service:
    """`azure://CONTAINER[/PREFIX]`: AZURE_STORAGE_CONNECTION_STRING (AccountName,
    AccountKey or SharedAccessSignature, BlobEndpoint or EndpointSuffix; or
    UseDevelopmentStorage=true), else AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or
    AZURE_STORAGE_SAS_TOKEN, as the az CLI reads them."""
    container, prefix = _container_and_prefix(url, "azure")
    if not _CONTAINER.fullmatch(container):
        raise RepositoryError(f"{container!r} is not an Azure container name (3 to 63 lowercase "
                              f"letters, digits and single hyphens)")
    text = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    parts = _connection_string(text) if text else {}
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        parts = {"AccountName": _AZURITE_ACCOUNT, "AccountKey": _AZURITE_KEY,
                 "BlobEndpoint": f"http://127.0.0.1:10000/{_AZURITE_ACCOUNT}"}
    if text and not parts.get("AccountName") and not parts.get("BlobEndpoint"):
        raise RepositoryError("AZURE_STORAGE_CONNECTION_STRING holds no AccountName or "
                              "BlobEndpoint")
    account = parts.get("AccountName") or env.get("AZURE_STORAGE_ACCOUNT", "")
    key = parts.get("AccountKey") or ("" if text else env.get("AZURE_STORAGE_KEY", ""))
    sas = parts.get("SharedAccessSignature") or ("" if text else
                                                 env.get("AZURE_STORAGE_SAS_TOKEN", ""))
    endpoint = parts.get("BlobEndpoint", "")
    if not endpoint:
        if not account:
            raise RepositoryDenied("no Azure storage account for azure:// (set "
                                   "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT "
                                   "and AZURE_STORAGE_KEY)")
        protocol = parts.get("DefaultEndpointsProtocol", "https")
        suffix = parts.get("EndpointSuffix", "core.windows.net")
        endpoint = f"{protocol}://{account}.blob.{suffix}"
    options = {"endpoint": endpoint.rstrip("/"), "container": container, "root": _root(prefix)}
    if account:
        options["account_name"] = account
    if key:
        options["account_key"] = key
    elif sas:
        options["sas_token"] = sas.lstrip("?")
    where = f"azure://{container}/{prefix}" if prefix else f"azure://{container}"
    return Service("azblob", options, where, safe_url(endpoint),
                   "check AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and "
                   "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN")


def swift_auth_v1(auth_url: str, user: str, key: str) -> tuple[str, str]:
    """(storage URL, token) from a Swift v1 auth endpoint (tempauth, swauth, Ceph RGW)."""
    request = urllib.request.Request(auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key})
    where = safe_url(auth_url)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            storage, token = answer.headers.get("X-Storage-Url"), answer.headers.get("X-Auth-Token")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise RepositoryDenied(f"{where} rejected the Swift credentials (HTTP {e.code}); "
                                   f"check ST_USER and ST_KEY") from None
        if e.code >= 500:
            raise TransientError(f"the Swift auth endpoint {where} kept failing (HTTP "
                                 f"{e.code}, gave up after retries)") from None
        raise RepositoryError(f"the Swift auth endpoint {where} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TransientError(f"cannot reach the Swift auth endpoint {where} "
                             f"({scrub(str(reason))[:100]}, gave up after retries)") from None
    if not storage or not token:
        raise RepositoryError(f"the Swift auth endpoint {where} sent no X-Storage-Url or "
                              f"X-Auth-Token")
    return storage, token


def swift_config(url: str, env: dict[str, str]) -> Service:
    """`swift://CONTAINER[/PREFIX]`: OS_STORAGE_URL and OS_AUTH_TOKEN (what `swift auth`
    prints), else v1 auth with ST_AUTH, ST_USER and ST_KEY (as the swift client reads
    them), re-done when the token expires."""
    container, prefix = _container_and_prefix(url, "swift")
    where = f"swift://{container}/{prefix}" if prefix else f"swift://{container}"
    base = {"container": container, "root": _root(prefix)}
    advice = "check OS_STORAGE_URL and OS_AUTH_TOKEN, or ST_AUTH, ST_USER and ST_KEY"
    if env.get("OS_STORAGE_URL") and env.get("OS_AUTH_TOKEN"):
        storage = env["OS_STORAGE_URL"].rstrip("/")
        return Service("swift", {**base, "endpoint": storage, "token": env["OS_AUTH_TOKEN"]},
                       where, safe_url(storage), advice)
    if env.get("ST_AUTH") and env.get("ST_USER"):
        auth, user, key = env["ST_AUTH"], env["ST_USER"], env.get("ST_KEY", "")

        def refresh() -> dict[str, str]:
            storage, token = swift_auth_v1(auth, user, key)
            return {**base, "endpoint": storage.rstrip("/"), "token": token}

        options = refresh()
        return Service("swift", options, where, safe_url(options["endpoint"]), advice, refresh)
    raise RepositoryDenied(f"no Swift credentials for {where} (set OS_STORAGE_URL and "
                           f"OS_AUTH_TOKEN, or ST_AUTH, ST_USER and ST_KEY)")


_CONFIGS = {"webdav": webdav_config, "webdavs": webdav_config, "azure": azure_config,
            "swift": swift_config}


def open_url(url: str, env: dict[str, str] | None = None) -> Backend:
    """The backend of a webdav[s]://, azure:// or swift:// URL, inside a RetryBackend."""
    scheme = url.partition("://")[0]
    service = _CONFIGS[scheme](url, dict(os.environ if env is None else env))
    backend = (WebDAVBackend if service.scheme == "webdav" else OpenDALBackend)(service)
    return RetryBackend(backend, backend.retry.attempts, backend.retry.backoff,
                        backend.retry.sleep)


def attempts_from_env() -> int:
    """Tries per request in all (VOLBACKUP_STORE_ATTEMPTS; default 8, as S3's)."""
    return attempts_from("VOLBACKUP_STORE_ATTEMPTS")


class _Loop:
    """One event loop on a daemon thread, for OpenDAL's async listing: its blocking lister
    holds the GIL while it waits for the server, so listings on many threads (a backup lists
    the 256 chunk fan-outs 8 at a time) ran one after the other; awaited here, they overlap."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def run(cls, coroutine):
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                cls._thread = threading.Thread(target=cls._loop.run_forever,
                                               name="opendal-loop", daemon=True)
                cls._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result()

    @classmethod
    def stop(cls) -> None:
        """At exit: stop the loop and wait for its thread."""
        with cls._lock:
            loop, thread, cls._loop, cls._thread = cls._loop, cls._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


async def _listing(aop, folder: str):
    return await aop.list(folder, recursive=True)


async def _next_entries(entries, count: int) -> list:
    batch = []
    try:
        while len(batch) < count:
            batch.append(await entries.__anext__())
    except StopAsyncIteration:
        pass
    return batch


def _entries(aop, folder: str, batch: int = 1000) -> Iterator:
    """Every entry OpenDAL lists below `folder`, fetched `batch` at a time on the loop."""
    entries = _Loop.run(_listing(aop, folder))
    while True:
        got = _Loop.run(_next_entries(entries, batch))
        yield from got
        if len(got) < batch:
            return


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Drop every OpenDAL operator while the interpreter is whole: dropped during its
    finalization instead, OpenDAL's runtime now and then aborted the process (SIGABRT or
    SIGSEGV after a command had done its work)."""
    for backend in list(_OPEN):
        backend.op = backend.aop = None
    gc.collect()
    _Loop.stop()


def _hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))


class OpenDALBackend(Backend):
    def __init__(self, service: Service, retry: Retry | None = None):
        self.service = service
        self.retry = retry or Retry(attempts_from_env())
        self.webdav = service.scheme == "webdav"
        self.streams = service.scheme == "azblob"   # the others: one PUT per blob
        self._lock = threading.Lock()
        self.op = self._operator(service.options)
        _OPEN.add(self)

    def _operator(self, options: dict[str, str]):
        try:
            op = opendal.Operator(self.service.scheme, **options).layer(
                opendal.layers.TimeoutLayer(timeout=CONTROL_TIMEOUT, io_timeout=IO_TIMEOUT))
            self.aop = op.to_async_operator()
            # A streamed write cannot be sent again by RetryBackend: OpenDAL retries each
            # of its blocks itself, with the same number of tries in all.
            retries = self.retry.attempts - 1
            self.stream_op = op.layer(opendal.layers.RetryLayer(
                max_times=retries, jitter=True, min_delay=0.5, max_delay=20)) if retries else op
            return op
        except Exception as e:  # noqa: BLE001 - OpenDAL's config errors, never with secrets
            raise RepositoryError(f"cannot set up {self.service.where}: "
                                  f"{self._summary(e)}") from None

    def describe(self) -> str:
        return self.service.where

    def _key(self, key: str) -> str:
        return check_key(key)

    # -- errors

    @staticmethod
    def _summary(e: BaseException) -> str:
        """OpenDAL's first line, without the server's body or request details (which
        may name a URL with a SAS token in it)."""
        first = str(e).split("\n", 1)[0].split(" => ", 1)[0].split(", context:", 1)[0]
        return scrub(first)[:160]

    def error(self, e: BaseException, doing: str, key: str | None = None) -> RepositoryError:
        """A one-line error for an OpenDAL exception (its kind is the class name, or the
        first word of an OSError's text from a file object); never carries credentials."""
        text = str(e)
        match = _KIND.match(text)
        kind = type(e).__name__ if type(e).__module__.startswith("opendal") else (
            match[1] if match else type(e).__name__)
        status_match = _STATUS.search(text)
        status = int(status_match[1]) if status_match else None
        where, server = self.service.where, self.service.endpoint
        if key is not None and (kind == "NotFound" or (
                self.webdav and status in (400, 409) and doing.startswith(("reading", "opening")))):
            # WebDAV answers 400 or 409 for a path below a file ("a/b" where "a" is a blob)
            return BlobNotFound(f"{key} is missing from repository {where}")
        if kind == "NotFound" and doing == "checking the repository":
            what = ("container" if self.service.scheme != "webdav" else "directory")
            return RepositoryError(f"the {what} of {where} does not exist at {server}")
        if self.webdav and kind == "PermissionDenied" and "(temporary)" in text:
            # Apache's mod_dav answers 403 to a MKCOL that loses a race with another writer
            # making the same directory (EEXIST); OpenDAL marks that 403 temporary. Tried
            # again, the directory is there.
            return TransientError(f"{server} kept refusing to make a directory of {where} "
                                  f"while {doing} (HTTP 403 to MKCOL, gave up after retries)")
        if kind == "PermissionDenied" or status in (401, 403):
            return RepositoryDenied(f"{server} refused access to {where} while {doing} "
                                    f"({self.service.credentials})")
        # "persistent": temporary until OpenDAL's retry layer (an Azure stream's blocks)
        # gave up on it, such as a refused connection: the server is as unreachable
        if kind == "RateLimited" or "(temporary)" in text or "(persistent)" in text or (status and (
                status >= 500 or status in (408, 429))):
            return TransientError(f"cannot reach {server} or it kept failing for {where} "
                                  f"while {doing} ({self._summary(e)}, gave up after retries)")
        return RepositoryError(f"{server} refused {doing} in {where}: {self._summary(e)}"
                               + (f" (HTTP {status})" if status else ""))

    @contextmanager
    def _calls(self, doing: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (Exception,) as e:  # noqa: BLE001 - narrowed below
            if isinstance(e, (RepositoryError, ValueError)) or not _is_opendal(e):
                raise
            error = self.error(e, doing, key)
            if isinstance(error, RepositoryDenied) and self._refresh():
                error = TransientError(f"the Swift token for {self.service.where} expired "
                                       f"while {doing}; authenticated again")
            raise error from None

    def _refresh(self) -> bool:
        """A refused request with v1 Swift credentials: the token may have expired. Get a
        new one (RetryBackend then tries the verb again); False if there is no way to."""
        if self.service.refresh is None:
            return False
        with self._lock:
            options = self.service.refresh()
            self.op = self._operator(options)
        return True

    # -- the Backend verbs

    def check(self, writable: bool) -> None:
        """The directory (WebDAV) or the container exists and can be listed; writing shows
        at the first write (doctor's probe_write)."""
        with self._calls("checking the repository"):
            if self.webdav and self._folder():
                meta = self._top().stat(self._folder())
                if not meta.is_dir:
                    raise RepositoryError(f"{self.service.where} is a file, not a directory")
            else:
                for _ in self.op.list("", limit=1):
                    break

    def _folder(self) -> str:
        """WebDAV: the repository's directory below the server's root ('' for the root)."""
        root = self.service.options["root"].strip("/")
        return f"{root}/" if root else ""

    def _top(self):
        """WebDAV: an operator at the server's root (OpenDAL answers a stat of its own root
        without asking the server)."""
        return opendal.Operator("webdav", **{**self.service.options, "root": "/"})

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        full = self._key(key)
        if self.streams:
            writer = _StreamWriter(self, full)
        else:
            writer = _OnePutWriter(self, full)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            writer.abort()
            raise
        writer.finish()

    def _put(self, key: str, data: bytes) -> None:
        """One blob in one request; on WebDAV to a temp name, then MOVEd into place."""
        if not self.webdav:
            with self._calls(f"writing {key}"):
                self.op.write(key, data)
            return
        folder, _, name = key.rpartition("/")
        temp = f"{folder}/{temp_name(name)}" if folder else temp_name(name)
        try:
            with self._calls(f"writing {key}"):
                self.op.write(temp, data)
                self.op.rename(temp, key)
        except BaseException:
            try:
                self.op.delete(temp)
            except Exception:  # noqa: BLE001 - the first error matters; cleanup finds it
                pass
            raise

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        info = self.stat(key)   # BlobNotFound now, and the size the stream must reach
        with self._calls(f"opening {key}", key):
            handle = self.op.open(self._key(key), "rb")
        reader = _Reader(self, key, handle, info.size)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """One GET with a Range. A blob that ends inside or before the range is a
        RangeBeyondEnd with its size (a stat tells it, as OpenDAL says only "too little
        data" or 416); a short answer from a blob long enough is a TransientError."""
        check_range(offset, length)
        full = self._key(key)
        doing = f"reading bytes {offset}-{offset + length - 1} of {key}"
        try:
            with self._calls(doing, key):
                data = self.op.read(full, offset=offset, size=length)
        except (BlobNotFound, TransientError):
            raise
        except RepositoryError as e:
            size = self.stat(key).size
            if offset + length > size:
                raise beyond_end(key, self.describe(), offset, length, size) from None
            raise e from None
        if len(data) != length:
            size = self.stat(key).size
            if offset + length > size:
                raise beyond_end(key, self.describe(), offset, length, size)
            raise TransientError(f"{self.service.endpoint} sent {len(data)} of {length} bytes "
                                 f"while {doing} from {self.describe()} (gave up after retries)")
        return bytes(data)

    def stat(self, key: str) -> BlobInfo:
        full = self._key(key)
        with self._calls(f"reading {key}", key):
            meta = self.op.stat(full)
        if not meta.is_file:  # a WebDAV directory, a prefix
            raise BlobNotFound(f"{key} is missing from repository {self.describe()}")
        return BlobInfo(key, meta.content_length, modified=meta.last_modified)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        start = prefix.rpartition("/")[0]
        folder = f"{start}/" if start else ""
        if _hidden(start):
            return
        if self.webdav:
            found = [info for info in self._walk(folder) if info.key.startswith(prefix)]
            yield from sorted(found, key=lambda info: info.key)
            return
        last = None
        with self._calls("listing"):
            for entry in _entries(self.aop, folder):
                path = entry.path
                if path.endswith("/") or not path.startswith(prefix) or _hidden(path):
                    continue
                if last is not None and path <= last:
                    raise RepositoryError(f"{self.service.endpoint} listed {self.describe()} out "
                                          f"of key order ({path!r} after {last!r})")
                last = path
                meta = entry.metadata
                yield BlobInfo(path, meta.content_length, modified=meta.last_modified)

    def _walk(self, folder: str, temps: bool = False) -> list:
        """WebDAV: every file below `folder` (TempFiles if `temps`), unsorted."""
        found: list = []
        with self._calls("listing"):
            try:
                entries = list(_entries(self.aop, folder))
            except Exception as e:  # noqa: BLE001
                status = _STATUS.search(str(e))
                if status and int(status[1]) in (400, 409):  # a "folder" that is a file
                    return []
                raise
        for entry in entries:
            path = entry.path
            if path.endswith("/"):
                continue
            parents, _, name = path.rpartition("/")
            if _hidden(parents) if parents else False:
                continue
            meta = entry.metadata
            if name.startswith("."):
                if temps and is_temp_name(name):
                    pid, where = temp_owner(name)
                    found.append(TempFile(path, pid,
                                          meta.last_modified or datetime.now(timezone.utc),
                                          meta.content_length, where))
                continue
            if not temps:
                found.append(BlobInfo(path, meta.content_length, modified=meta.last_modified))
        return found

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._calls(f"deleting {key}"):
            self.op.delete(full)

    def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """A few deletes at once (one request per blob: no batch call here)."""
        def one(key: str) -> tuple[str, str] | None:
            try:
                self.retry.call(self.delete, key)
            except RepositoryError as e:
                return key, str(e)
            return None

        if len(keys) <= 1:
            return [failed for failed in map(one, keys) if failed]
        with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="opendal-delete") as pool:
            return [failed for failed in pool.map(one, keys) if failed]


class WebDAVBackend(OpenDALBackend, TempFiles, MakesItsPlace):
    """WebDAV also has a place `init` may make (a directory, by MKCOL) and temp files of
    writes killed before their MOVE (see `_put`); Azure and Swift have neither."""

    def create_missing(self) -> bool:
        """Make the directory (MKCOL, parents too). (An Azure or Swift container is made
        by its owner, as a bucket is: those backends lack this capability.)"""
        if not self._folder():
            return False
        with self._calls("checking the repository"):
            top = self._top()
            try:
                top.stat(self._folder())
                return False
            except opendal.exceptions.NotFound:
                pass
            top.create_dir(self._folder())
        return True

    def remove_if_empty(self) -> None:
        if not self._folder():
            return
        with self._calls("removing the empty directory"):
            if not any(e.path.strip("/") for e in self.op.list("")):
                self._top().delete(self._folder())

    def temp_files(self) -> list[TempFile]:
        """The temp files of writes that were killed before their MOVE."""
        return sorted(self._walk("", temps=True), key=lambda t: t.key)

    def remove_temp(self, temp: TempFile) -> None:
        check_temp_key(temp.key)
        with self._calls(f"removing {temp.key}"):
            self.op.delete(temp.key)


def _is_opendal(e: BaseException) -> bool:
    """OpenDAL's exceptions, and the OSError its file objects raise with its text."""
    return type(e).__module__.startswith("opendal") or (
        isinstance(e, OSError) and bool(_KIND.match(str(e))))


class _OnePutWriter:
    """WebDAV and Swift: gathers the blob in memory, sends it in one PUT at the end."""

    def __init__(self, backend: OpenDALBackend, key: str):
        self.backend, self.key = backend, key
        self.buffer = bytearray()

    def write(self, data) -> int:
        if len(self.buffer) + len(data) > ONE_PUT_MAX:
            raise RepositoryError(
                f"{self.key} would be larger than {ONE_PUT_MAX // MiB} MiB, the most one blob "
                f"may hold in {self.backend.describe()} (each is sent in one request): use a "
                f"packed or chunked repository there (`volbackup init`), see docs/storage.md")
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        data, self.buffer = bytes(self.buffer), bytearray()
        self.backend.retry.call(self.backend._put, self.key, data)

    def abort(self) -> None:
        self.buffer = bytearray()


class _StreamWriter:
    """Azure: blocks staged as the data comes, committed only by finish(). An abort drops
    the writer without committing: nothing becomes visible (uncommitted blocks expire)."""

    def __init__(self, backend: OpenDALBackend, key: str):
        self.backend, self.key = backend, key
        with backend._calls(f"starting to write {key}"):
            self.handle = backend.stream_op.open(key, "wb", chunk=AZURE_BLOCK,
                                          concurrent=AZURE_CONCURRENT)

    def write(self, data) -> int:
        with self.backend._calls(f"writing {self.key}"):
            self.handle.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        with self.backend._calls(f"completing {self.key}"):
            self.handle.close()
        self.handle = None

    def abort(self) -> None:
        self.handle = None   # dropped unclosed: OpenDAL commits nothing


class _Reader:
    """A blob's bytes as a stream; it must end at the size stat said, not before."""

    def __init__(self, backend: OpenDALBackend, key: str, handle, size: int):
        self.backend, self.key, self.handle, self.size = backend, key, handle, size
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.handle.read(None if size is None or size < 0 else size)
        except Exception as e:  # noqa: BLE001
            if not _is_opendal(e):
                raise
            # part of the stream was handed out: nothing may retry it whole
            raise settled(self.backend.error(e, f"reading {self.key}")) from None
        self.pos += len(data)
        if not data and self.pos < self.size and (size is None or size != 0):
            raise RepositoryUnreachable(
                f"{self.backend.service.endpoint} ended {self.key} in {self.backend.describe()} "
                f"after {self.pos:,} of {self.size:,} bytes")
        return bytes(data)

    def close(self) -> None:
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - a reader's close frees only
            pass

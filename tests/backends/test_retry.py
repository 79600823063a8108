"""RetryBackend around a fake backend of our own: what is retried, how often, with which
pauses, and what is never retried (denied, missing, a stream already handed out)."""

from __future__ import annotations

import io
from contextlib import contextmanager

import pytest

from volbackup.errors import RepositoryDenied, RepositoryError, RepositoryUnreachable
from volbackup.repo.backends import (
    CAPABILITIES,
    Backend,
    FreeSpace,
    TempFiles,
    UnfinishedUploads,
    BlobInfo,
    BlobNotFound,
    RangeBeyondEnd,
    RetryBackend,
    TransientError,
)
from volbackup.repo.backends.base import Leftover, TempFile
from volbackup.repo.backends.retry import MAX_BACKOFF, Retry, jittered

FAILING = "cannot reach the store for fake://x while doing it (gave up after retries)"
LEFTOVER = Leftover("k", "upload-1", None)  # type: ignore[arg-type]
TEMP = TempFile(".k.tmp-1-ab", 1, None, 0)   # type: ignore[arg-type]


class Flaky(Backend):
    """Fails every call with `error` `failures` times, then answers; counts the calls."""

    def __init__(self, failures: int = 0, error: Exception | None = None):
        self.failures, self.error = failures, error or TransientError(FAILING)
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures:
            self.failures -= 1
            raise self.error

    def describe(self) -> str:
        return "fake://x"

    def check(self, writable):
        self._call("check")

    @contextmanager
    def open_write(self, key):
        self._call("open_write")
        yield io.BytesIO()

    @contextmanager
    def open_read(self, key):
        self._call("open_read")
        yield io.BytesIO(b"data")

    def stat(self, key):
        self._call("stat")
        return BlobInfo(key, 4)

    def read_range(self, key, offset, length):
        self._call("read_range")
        return b"data"[offset:offset + length]

    def list(self, prefix=""):
        self._call("list")
        yield BlobInfo("a", 1)

    def delete(self, key):
        self._call("delete")

    def foreign_entries(self):
        self._call("foreign_entries")
        return ["x"]

    def create_missing(self):
        self._call("create_missing")
        return True

    def remove_if_empty(self):
        self._call("remove_if_empty")

    def leftovers(self):
        self._call("leftovers")
        return [LEFTOVER]

    def remove_leftover(self, leftover):
        self._call("remove_leftover")

    def temp_files(self):
        self._call("temp_files")
        return [TEMP]

    def remove_temp(self, temp):
        self._call("remove_temp")

    def read_bytes(self, key, limit=None):
        self._call("read_bytes")
        return b"data"

    def write_bytes(self, key, data):
        self._call("write_bytes")


def _open_and_read(backend):
    with backend.open_read("k") as reader:
        return reader.read()


# Each verb that is retried whole, and what it returns once the inner backend answers.
VERBS = {
    "check": (lambda b: b.check(True), None),
    "stat": (lambda b: b.stat("k"), BlobInfo("k", 4)),
    "list": (lambda b: list(b.list()), [BlobInfo("a", 1)]),
    "delete": (lambda b: b.delete("k"), None),
    "foreign_entries": (lambda b: b.foreign_entries(), ["x"]),
    "create_missing": (lambda b: b.create_missing(), True),
    "remove_if_empty": (lambda b: b.remove_if_empty(), None),
    "leftovers": (lambda b: b.leftovers(), [LEFTOVER]),
    "remove_leftover": (lambda b: b.remove_leftover(LEFTOVER), None),
    "temp_files": (lambda b: b.temp_files(), [TEMP]),
    "remove_temp": (lambda b: b.remove_temp(TEMP), None),
    "read_bytes": (lambda b: b.read_bytes("k"), b"data"),
    "read_range": (lambda b: b.read_range("k", 1, 2), b"at"),
    "write_bytes": (lambda b: b.write_bytes("k", b"data"), None),
    "open_read": (_open_and_read, b"data"),
}


def wrapped(inner: Backend, attempts: int = 4):
    slept: list[float] = []
    return RetryBackend(inner, attempts, backoff=lambda n: 10.0 * n, sleep=slept.append), slept


@pytest.mark.parametrize("verb", VERBS)
def test_flaky_then_ok(verb):
    call, expected = VERBS[verb]
    inner = Flaky(failures=2)
    backend, slept = wrapped(inner)
    assert call(backend) == expected
    assert inner.calls == [verb] * 3
    assert slept == [10.0, 20.0]


@pytest.mark.parametrize("verb", VERBS)
def test_always_failing_is_unreachable_after_the_attempts(verb):
    call, _ = VERBS[verb]
    inner = Flaky(failures=100)
    backend, slept = wrapped(inner, attempts=4)
    with pytest.raises(RepositoryUnreachable) as caught:
        call(backend)
    # settled: a plain RepositoryUnreachable, which no outer wrapper retries again
    assert type(caught.value) is RepositoryUnreachable
    assert str(caught.value) == FAILING and caught.value.exit_code == 10
    assert inner.calls == [verb] * 4
    assert slept == [10.0, 20.0, 30.0]


@pytest.mark.parametrize("error", [RepositoryDenied("access denied to fake://x"),
                                   BlobNotFound("k is missing"), RepositoryError("broken"),
                                   RangeBeyondEnd("k holds only 3 bytes"),
                                   RepositoryUnreachable("gave up already"), ValueError("bad key")])
@pytest.mark.parametrize("verb", VERBS)
def test_other_errors_are_not_retried(verb, error):
    call, _ = VERBS[verb]
    inner = Flaky(failures=1, error=error)
    backend, slept = wrapped(inner)
    with pytest.raises(type(error)) as caught:
        call(backend)
    assert caught.value is error
    assert inner.calls == [verb] and slept == []


def test_a_denied_error_is_exit_9_not_10():
    backend, slept = wrapped(Flaky(failures=1, error=RepositoryDenied("access denied")))
    with pytest.raises(RepositoryDenied) as caught:
        backend.stat("k")
    assert caught.value.exit_code == 9 and slept == []


def test_one_attempt_means_no_retry():
    inner = Flaky(failures=1)
    backend, slept = wrapped(inner, attempts=1)
    with pytest.raises(RepositoryUnreachable):
        backend.stat("k")
    assert inner.calls == ["stat"] and slept == []
    with pytest.raises(ValueError):
        RetryBackend(inner, 0)


class Streams(Flaky):
    """A reader and a writer that fail in the middle of their stream."""

    @contextmanager
    def open_read(self, key):
        self.calls.append("open_read")

        class Reader(io.BytesIO):
            def read(self, size=-1):
                raise TransientError(FAILING)

        yield Reader()

    def open_write(self, key):
        self.calls.append("open_write")
        raise TransientError(FAILING)


def test_a_stream_handed_out_is_not_retried():
    inner = Streams()
    backend, slept = wrapped(inner)
    with pytest.raises(TransientError), backend.open_read("k") as reader:
        reader.read(10)
    with pytest.raises(TransientError):
        backend.open_write("k")
    assert inner.calls == ["open_read", "open_write"] and slept == []


class Listing(Flaky):
    """Lists a, b, c, d in order, failing transiently after the keys in `breaks`, once each."""

    def __init__(self, breaks):
        super().__init__()
        self.breaks = list(breaks)

    def list(self, prefix=""):
        self.calls.append("list")
        for key in "abcd":
            yield BlobInfo(key, 1)
            if self.breaks and self.breaks[0] == key:
                self.breaks.pop(0)
                raise TransientError(FAILING)


def test_list_resumes_after_the_last_key_it_yielded():
    inner = Listing(breaks=["b", "b", "c"])
    backend, slept = wrapped(inner, attempts=3)
    assert [i.key for i in backend.list()] == ["a", "b", "c", "d"]
    # two failures in a row at b, then progress (c) starts the count again
    assert inner.calls == ["list"] * 4 and slept == [10.0, 20.0, 10.0]


def test_list_without_progress_gives_up():
    inner = Listing(breaks=["a"] * 5)
    backend, _ = wrapped(inner, attempts=3)
    seen = []
    with pytest.raises(RepositoryUnreachable):
        for info in backend.list():
            seen.append(info.key)
    assert seen == ["a"] and inner.calls == ["list"] * 3


def test_every_backend_verb_is_wrapped():
    """A verb added to Backend or to a capability must be added here too (retried, or passed
    through on purpose); `has` reads `capabilities`, which RetryBackend answers."""
    verbs = {name for cls in (Backend, *CAPABILITIES) for name in dir(cls)
             if not name.startswith("_")} - {"has"}
    assert verbs <= set(vars(RetryBackend)), verbs - set(vars(RetryBackend))


def test_the_wrapper_has_the_capabilities_of_the_backend_inside():
    assert Flaky().capabilities == frozenset()
    assert RetryBackend(Flaky()).capabilities == frozenset()

    class Uploading(Flaky, UnfinishedUploads, FreeSpace):
        def free_space(self):
            return 1

    backend = RetryBackend(Uploading())
    assert backend.capabilities == {UnfinishedUploads, FreeSpace}
    assert backend.has(UnfinishedUploads) and not backend.has(TempFiles)


def test_describe_and_inner_pass_through():
    inner = Flaky()
    backend, _ = wrapped(inner)
    assert backend.describe() == "fake://x" and backend.inner is inner and inner.calls == []


def test_the_default_backoff_is_jittered_and_capped():
    for retry in range(1, 12):
        delays = [jittered(retry) for _ in range(200)]
        cap = min(MAX_BACKOFF, 2.0 ** (retry - 1))
        assert all(0 <= d <= cap for d in delays)
        assert len(set(delays)) > 1   # not in step with other hosts
    assert Retry().attempts == 8

"""Retries as a wrapper around any backend (restic's RetryBackend), not inside each one.

A backend raises `TransientError` for a failure that may pass (S3: no connection, a
timeout, 5xx, throttling) and tries each request once. `RetryBackend` tries a verb again,
after a growing, jittered pause, up to `attempts` tries in all; then it raises a plain
RepositoryUnreachable (exit 10) with the backend's message. Anything else (denied, missing,
a bad key, a full disk) passes through at once.

What is retried whole: check, opening a read (up to the first byte), stat, list (resumed
after the last key it yielded, as keys come in order), delete, read_bytes, read_range,
write_bytes and the capability verbs (leftovers, temp files, free space ...). What is not:
a stream once it has been handed out. The wrapper cannot replay bytes the caller has
already read or written, so `open_write` and a reader's `read` pass through; a backend that
can retry inside a stream does so itself with the same `Retry` policy (S3 retries each part,
and resumes a broken download at its offset with a ranged GET of the same ETag).
"""

from __future__ import annotations

import os
import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, TypeVar

from volbackup.errors import RepositoryError, RepositoryUnreachable
from volbackup.repo.backends.base import MAX_SMALL_BLOB, Backend, BlobInfo, Leftover, TempFile, TransientError

DEFAULT_ATTEMPTS = 8
MAX_BACKOFF = 20.0

T = TypeVar("T")


def attempts_from(variable: str) -> int:
    """Tries per request in all, from environment variable `variable` (default
    DEFAULT_ATTEMPTS, at least 1); each store names its own (AWS_MAX_ATTEMPTS for S3)."""
    try:
        return max(1, int(os.environ.get(variable, DEFAULT_ATTEMPTS)))
    except ValueError:
        raise RepositoryError(f"{variable} is not a whole number") from None


def jittered(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): a random share of 1, 2, 4 ...
    up to 20 s ("full jitter", as botocore's standard mode, which retried S3 before), so
    hosts sharing a store do not retry in step."""
    return random.random() * min(MAX_BACKOFF, 2.0 ** (retry - 1))


def settled(error: RepositoryError) -> RepositoryError:
    """A TransientError that must not be retried any more (its attempts are used up, or a
    stream was partly consumed) as a plain RepositoryUnreachable with the same message."""
    if isinstance(error, TransientError):
        settled_error = RepositoryUnreachable(str(error))
        settled_error.__cause__ = error
        return settled_error
    return error


@dataclass(frozen=True)
class Retry:
    """The policy: how many tries in all, how long to wait before each retry, and how."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: Callable[[int], float] = jittered
    sleep: Callable[[float], None] = time.sleep

    def wait(self, error: TransientError, failures: int) -> None:
        """Pause before the next try, or raise `error` settled if `failures` used them up."""
        if failures >= self.attempts:
            raise settled(error)
        self.sleep(self.backoff(failures))

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs), tried again after each TransientError."""
        failures = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except TransientError as e:
                failures += 1
                self.wait(e, failures)


class RetryBackend(Backend):
    """`inner`, with each verb tried again on a TransientError (see the module docstring)."""

    def __init__(self, inner: Backend, attempts: int = DEFAULT_ATTEMPTS,
                 backoff: Callable[[int], float] = jittered,
                 sleep: Callable[[float], None] = time.sleep):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.retry = Retry(attempts, backoff, sleep)

    @property
    def capabilities(self) -> frozenset[type]:
        """Those of the backend inside: the capability verbs below are retried like the rest,
        and exist here whatever `inner` has, so callers ask `has()` first."""
        return self.inner.capabilities

    def describe(self) -> str:
        return self.inner.describe()

    def check(self, writable: bool) -> None:
        self.retry.call(self.inner.check, writable)

    def open_write(self, key: str):
        """Not retried here: the caller's bytes cannot be replayed (see the module docstring)."""
        return self.inner.open_write(key)

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """Opening is retried; reading from the stream it hands out is not."""
        def enter() -> tuple[ExitStack, BinaryIO]:
            with ExitStack() as stack:
                reader = stack.enter_context(self.inner.open_read(key))
                return stack.pop_all(), reader

        stack, reader = self.retry.call(enter)
        with stack:
            yield reader

    def stat(self, key: str) -> BlobInfo:
        return self.retry.call(self.inner.stat, key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Listed again after a TransientError, skipping the keys already yielded (they come
        in key order); each failure in a row without progress counts as one try."""
        last: str | None = None
        failures = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.key <= last:
                        continue
                    last, failures = info.key, 0
                    yield info
                return
            except TransientError as e:
                failures += 1
                self.retry.wait(e, failures)

    def delete(self, key: str) -> None:
        self.retry.call(self.inner.delete, key)

    def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """In batches of 1000, each retried: a transient failure repeats one batch only."""
        failed = []
        for start in range(0, len(keys), 1000):
            failed += self.retry.call(self.inner.delete_many, keys[start:start + 1000])
        return failed

    def foreign_entries(self) -> list[str]:
        return self.retry.call(self.inner.foreign_entries)

    def free_space(self) -> int | None:
        return self.retry.call(self.inner.free_space)

    def create_missing(self) -> bool:
        return self.retry.call(self.inner.create_missing)

    def remove_if_empty(self) -> None:
        self.retry.call(self.inner.remove_if_empty)

    def probe_write(self) -> None:
        """The inner probe once more (a directory's own check, or a blob written and
        removed: each try uses a new probe name)."""
        self.retry.call(self.inner.probe_write)

    def leftovers(self) -> list[Leftover]:
        return self.retry.call(self.inner.leftovers)

    def remove_leftover(self, leftover: Leftover) -> None:
        self.retry.call(self.inner.remove_leftover, leftover)

    def temp_files(self) -> list[TempFile]:
        return self.retry.call(self.inner.temp_files)

    def remove_temp(self, temp: TempFile) -> None:
        self.retry.call(self.inner.remove_temp, temp)

    def read_bytes(self, key: str, limit: int | None = MAX_SMALL_BLOB) -> bytes:
        return self.retry.call(self.inner.read_bytes, key, limit)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes, not a stream: a range cut off mid-body is read again whole."""
        return self.retry.call(self.inner.read_range, key, offset, length)

    def write_bytes(self, key: str, data: bytes) -> None:
        """The whole small blob again; the inner writer makes a failed try leave nothing."""
        self.retry.call(self.inner.write_bytes, key, data)

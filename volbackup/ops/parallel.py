"""Independent pieces of work on a few threads (`backup --jobs N`), stopped cleanly on Ctrl-C.

While workers run, Ctrl-C and SIGTERM only tell them to stop: each stops at its next
chunk of data (`interruptible`) or before it starts, unwinding through its own cleanup
(helpers removed, stopped containers started again, temp files deleted) as a run on one
thread does. Once every worker has ended, the signal does what it would have done
(KeyboardInterrupt, or the CLI's SIGTERM handler).
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from volbackup.ops.outcome import ProgressFactory

T = TypeVar("T")
R = TypeVar("R")

_POLL_SECONDS = 0.1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_worker = threading.local()  # .stop: the Event of the run this worker thread belongs to


def in_parallel(items: Sequence[T], work: Callable[[T], R], jobs: int) -> list[R]:
    """`work(item)` for every item, at most `jobs` at a time; the results in item order.
    With one job (or one item) everything runs on this thread, as without this module.
    `work` should turn its errors into results (as `each_quietly` does): an exception is
    raised here only after every worker has ended, and the other results are lost."""
    if jobs <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    stop = threading.Event()

    def guarded(item: T) -> R:
        _worker.stop = stop
        checkpoint()
        return work(item)

    with _signals_set(stop) as caught:
        with ThreadPoolExecutor(max_workers=min(jobs, len(items)),
                                thread_name_prefix="volbackup-job") as pool:
            futures = [pool.submit(guarded, item) for item in items]
            # In short waits: a signal the kernel hands to another thread (a worker,
            # zstd's) does not wake this one; its handler runs when this one runs again.
            while wait(futures, timeout=_POLL_SECONDS).not_done:
                pass
    if caught:
        _replay(*caught[0])
    return [f.result() for f in futures]


@contextmanager
def _signals_set(stop: threading.Event) -> Iterator[list[tuple[int, Callable | int | None]]]:
    """While the workers run, SIGINT and SIGTERM only set `stop` (and are noted), so no
    KeyboardInterrupt can land in this thread half way through handing out the work.
    Python runs signal handlers in the main thread only; elsewhere this does nothing."""
    caught: list[tuple[int, Callable | int | None]] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous: dict[int, Callable | int | None] = {}

    def note(signum: int, frame) -> None:
        caught.append((signum, previous.get(signum)))
        stop.set()

    try:
        for signum in _SIGNALS:
            current = signal.getsignal(signum)
            # An ignored signal stays ignored; one set outside Python (None) is left alone.
            if callable(current) or current == signal.SIG_DFL:
                previous[signum] = signal.signal(signum, note)
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _replay(signum: int, handler: Callable | int | None) -> None:
    """What the signal would have done had it come when no worker ran."""
    if callable(handler):
        handler(signum, None)      # Python's SIGINT handler, the CLI's SIGTERM: they raise
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


def checkpoint() -> None:
    """In a worker whose run was interrupted: raise KeyboardInterrupt. Elsewhere: nothing."""
    stop = getattr(_worker, "stop", None)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


def interruptible(progress: ProgressFactory) -> ProgressFactory:
    """`progress` whose updates (one per chunk of data) are also checkpoints."""
    @contextmanager
    def factory(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with progress(label, total) as update:
            def checked(n: int) -> None:
                checkpoint()
                update(n)
            yield checked
    return factory

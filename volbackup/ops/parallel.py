"""Independent pieces of work on a few threads (`backup --jobs N`), stopped cleanly on Ctrl-C.

While workers run, Ctrl-C and SIGTERM only tell them to stop: each stops at its next
chunk of data (`interruptible`) or before it starts, unwinding through its own cleanup
(helpers removed, stopped containers started again, temp files deleted) as a run on one
thread does. Once every worker has ended, the signal does what it would have done
(KeyboardInterrupt, or the CLI's SIGTERM handler).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from volbackup.ops.outcome import ProgressFactory
from volbackup.signals import held, main_thread_only

T = TypeVar("T")
R = TypeVar("R")

_POLL_SECONDS = 0.1
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

    # The main thread's signal handlers only set `stop` while the workers run, so no
    # KeyboardInterrupt lands here half way through handing out the work; the signal is
    # delivered once every worker has ended (volbackup.signals.held).
    with held(notify=lambda signum: stop.set()):
        with ThreadPoolExecutor(max_workers=min(jobs, len(items)),
                                thread_name_prefix="volbackup-job",
                                initializer=main_thread_only) as pool:
            futures = [pool.submit(guarded, item) for item in items]
            # In short waits: a signal the kernel hands to another thread (zstd's, started
            # before the hold) does not wake this one; its handler runs when this one does.
            while wait(futures, timeout=_POLL_SECONDS).not_done:
                pass
    return [f.result() for f in futures]


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

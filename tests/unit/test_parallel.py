"""in_parallel: order, the limit on concurrent work, errors, and Ctrl-C (a real SIGINT)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from volbackup.ops.outcome import no_progress
from volbackup.ops.parallel import checkpoint, in_parallel, interruptible


def test_results_come_in_item_order_whatever_finishes_first():
    def slow_first(n: int) -> int:
        time.sleep(0.05 * (5 - n))
        return n * n
    assert in_parallel(range(5), slow_first, jobs=3) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_never_more_than_jobs_at_once(jobs):
    running, peak, lock = 0, 0, threading.Lock()

    def work(_: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.03)
        with lock:
            running -= 1
    in_parallel(range(8), work, jobs)
    assert peak == jobs


def test_one_job_runs_on_this_thread():
    assert in_parallel([1, 2], lambda _: threading.current_thread(), jobs=1) == \
        [threading.main_thread()] * 2


def test_an_error_in_one_item_comes_out_after_the_others_finished():
    finished = []

    def work(n: int) -> int:
        if n == 0:
            raise ValueError("boom")
        time.sleep(0.05)
        finished.append(n)
        return n
    with pytest.raises(ValueError, match="boom"):
        in_parallel(range(4), work, jobs=2)
    assert sorted(finished) == [1, 2, 3]


def test_checkpoint_outside_a_worker_does_nothing():
    checkpoint()
    with interruptible(no_progress)("v", None) as update:
        update(5)


@pytest.mark.parametrize("to", ["process", "a worker thread"])
def test_ctrl_c_stops_every_worker_at_its_next_chunk_and_waits_for_their_cleanup(to):
    """A SIGINT (pytest turns it into KeyboardInterrupt in the main thread) while two of
    four items run: both stop at a checkpoint and clean up, the two others never start,
    and the interrupt comes out only after that. The kernel may hand a process's signal
    to any thread; one that lands in a worker must stop the run all the same."""
    started, cleaned = [], {}
    both_running = threading.Barrier(3)
    progress = interruptible(no_progress)

    def work(n: int) -> None:
        started.append(n)
        how = "ran out"
        try:
            with progress(str(n), None) as update:
                if len(started) <= 2:
                    both_running.wait(timeout=10)
                deadline = time.monotonic() + 10   # a stream that would go on and on
                while time.monotonic() < deadline:
                    update(1)
                    time.sleep(0.01)
        except KeyboardInterrupt:
            how = "interrupted"
            raise
        finally:
            time.sleep(0.1)                        # cleanup takes a while: waited for
            cleaned[n] = how

    def interrupt() -> None:
        both_running.wait(timeout=10)
        if to == "process":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        in_parallel(range(4), work, jobs=2)
    assert sorted(started) == [0, 1]
    assert cleaned == {0: "interrupted", 1: "interrupted"}


class Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise Terminated()


def test_sigterm_ends_in_the_handler_that_was_there_and_handlers_are_put_back():
    """The CLI turns SIGTERM into an exception of its own: that is what comes out, after
    the workers stopped; afterwards both handlers are as they were."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        ready = threading.Barrier(2)
        progress = interruptible(no_progress)

        hang_guard = threading.Event()  # set only if the workers are never stopped
        ended = {}

        def work(n: int) -> None:
            try:
                with progress(str(n), None) as update:
                    if n == 0:
                        ready.wait(timeout=10)
                    while not hang_guard.is_set():
                        update(1)
                        time.sleep(0.01)
                ended[n] = "ran to its end"
            except BaseException:
                ended[n] = "stopped"
                raise

        threading.Thread(target=lambda: (ready.wait(timeout=10),
                                         os.kill(os.getpid(), signal.SIGTERM)),
                         daemon=True).start()
        guard = threading.Timer(120, hang_guard.set)
        guard.start()
        try:
            with pytest.raises(Terminated):
                in_parallel([0, 1], work, jobs=2)
        finally:
            guard.cancel()
        # worker 1 may be stopped before its work starts (checkpoint), never after its end
        assert ended[0] == "stopped" and ended.get(1, "stopped") == "stopped", ended
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def work(n: int) -> int:
            if n == 0:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            checkpoint()
            return n
        assert in_parallel([0, 1, 2], work, jobs=2) == [0, 1, 2]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)

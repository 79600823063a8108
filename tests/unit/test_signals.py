"""held(): real signals, sent to the main thread or to another thread of the process."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from volbackup.signals import Terminated, handled, held


@pytest.fixture
def other_thread():
    """A thread that sleeps in small steps (like the lock refresher) until the test ends."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: stop.wait(30), daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


def _settle() -> None:
    for _ in range(20):  # a few bytecodes in the main thread: a pending handler runs
        time.sleep(0.01)


@pytest.mark.parametrize("to", ["main", "other"])
def test_ctrl_c_inside_is_delivered_once_when_the_block_ends(other_thread, to):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            for _ in range(3):  # a second and a third Ctrl-C change nothing
                if to == "main":
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    signal.pthread_kill(other_thread.ident, signal.SIGINT)
                _settle()
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_deliver_at_the_outermost_end(other_thread):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            with held():
                signal.pthread_kill(other_thread.ident, signal.SIGINT)
                _settle()
            steps.append("after the inner block")
    assert steps == ["after the inner block"]


def test_sigterm_under_handled_raises_terminated_after_the_block(other_thread):
    notified = []
    with handled():
        with pytest.raises(Terminated):
            with held(notify=notified.append):
                signal.pthread_kill(other_thread.ident, signal.SIGTERM)
                _settle()
                assert notified == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            os.kill(os.getpid(), signal.SIGINT)
            _settle()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_it_holds_nothing_and_raises_nothing():
    errors = []

    def run():
        try:
            with held():
                pass
        except BaseException as e:  # pragma: no cover - the failure being tested
            errors.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == []

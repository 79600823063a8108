"""Ctrl-C and SIGTERM, one way for the whole program: hold them across steps that must not
be cut in half, and deliver them when those steps are over.

Creating or removing a helper, stopping or starting a container, and putting stopped
containers back (and running their post-hooks) are engine calls whose effect happens on
the engine even when our side is interrupted: an interrupt while waiting for the answer
would lose track of a helper to remove or a container to start again.

Python runs signal handlers in the main thread only, whichever thread the kernel hands a
signal to (the lock refresher, a `--jobs` worker, zstd's threads), and a signal mask
(`pthread_sigmask`) only covers the thread that sets it. So the hold is made of Python
handlers: inside `held()`, the main thread's SIGINT/SIGTERM handlers only record the
signal (and tell `notify`, which is how `--jobs` workers learn to stop); when the
outermost held block ends, the first signal recorded does what it would have done
(KeyboardInterrupt, the CLI's `Terminated`; a default action the default way). A second
or third Ctrl-C inside the block is recorded too: nothing is cut short.

Other threads need no hold: no handler, so no exception, ever runs there. Threads we
start call `main_thread_only()` so the kernel hands process signals to the main thread,
which wakes it from a blocking call instead of leaving the signal to wait for it.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

HELD = (signal.SIGINT, signal.SIGTERM)
Handler = Callable | int | None


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so every `finally` and `with` cleans up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


class _Hold:
    """The main thread's hold: nesting depth, what was caught, who to tell."""

    depth = 0
    caught: list[int] = []
    previous: dict[int, Handler] = {}
    listeners: list[Callable[[int], None]] = []


def _record(signum: int, frame) -> None:
    _Hold.caught.append(signum)
    for notify in list(_Hold.listeners):
        notify(signum)


def _is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def held(notify: Callable[[int], None] | None = None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the outermost held block ends, then deliver the
    first one caught. `notify(signum)` is called (in the main thread) for each signal
    caught while this block runs. In other threads: nothing to hold (see the module)."""
    if not _is_main():
        yield
        return
    outermost = _Hold.depth == 0
    if outermost:
        _Hold.caught, _Hold.previous = [], {}
        for signum in HELD:
            current = signal.getsignal(signum)
            # An ignored signal stays ignored; one set outside Python (None) is left alone.
            if callable(current) or current == signal.SIG_DFL:
                _Hold.previous[signum] = signal.signal(signum, _record)
    _Hold.depth += 1
    if notify is not None:
        _Hold.listeners.append(notify)
    try:
        yield
    finally:
        if notify is not None:
            _Hold.listeners.remove(notify)
        _Hold.depth -= 1
        if outermost:
            previous, caught = _Hold.previous, _Hold.caught
            _Hold.previous, _Hold.caught = {}, []
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if caught:
                _deliver(caught[0], previous.get(caught[0]))


deferred = held  # the name the engine calls use: "this step waits for the signal"


def _deliver(signum: int, handler: Handler) -> None:
    """What the signal would have done had it come outside the hold."""
    if callable(handler):
        handler(signum, None)      # Python's SIGINT handler, the CLI's SIGTERM: they raise
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


@contextmanager
def handled() -> Iterator[None]:
    """For a program's main (the CLI): SIGTERM raises `Terminated` like Ctrl-C raises
    KeyboardInterrupt, so both unwind through every cleanup. An ignored SIGINT (a job
    started in the background by a shell) stays ignored."""
    if not _is_main():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main_thread_only() -> None:
    """Called first in a thread we start: leave SIGINT/SIGTERM to the main thread, so the
    kernel delivers them there and wakes it (threads this one starts inherit the mask)."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    except (ValueError, OSError, AttributeError):  # no signal masks here
        pass

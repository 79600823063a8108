"""Hold SIGINT and SIGTERM across a step that must not be cut in half.

Creating or removing a helper, and stopping or starting a container, are single engine
calls whose effect happens on the engine even when our side is interrupted: an
interrupt while waiting for the answer would lose track of a helper to remove or a
container to start again. Inside `deferred()` such signals wait; they are delivered
(and raise as usual) as soon as the block ends.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_HELD = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def deferred() -> Iterator[None]:
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    except (ValueError, OSError):  # no signal mask here: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

"""Whether a process of this host still runs: what decides that a helper, a lock or a
temp file was left by a run that is over."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if `pid` runs here (or exists but belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Whether the process that left a helper, a lock or a temp file has ended: what decides
that a run is over.

A pid means something only in the pid namespace it was read in. volbackup in a container
that shares the host's name (`--hostname`, as docs/scheduling.md suggests) sees other pids
than a run on the host, so a run is judged by its pid only when host name AND pid
namespace are both ours; otherwise only its age can tell (each caller has its own limit).
"""

from __future__ import annotations

import hashlib
import os
import socket


def pid_alive(pid: int) -> bool:
    """True if `pid` runs here (or exists but belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_namespace() -> str:
    """This process's pid namespace (`pid:[4026531836]`), or "" where /proc cannot say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def run_is_over(host: str, namespace: str | None, pid: int) -> bool:
    """True when the run `(host, pid namespace, pid)` has provably ended: same host name,
    same pid namespace, and that pid no longer runs. A run of another host or another pid
    namespace is never judged by its pid. `namespace` None means "not recorded" (helpers made
    by earlier versions carry none): then the host name alone decides, as it always did."""
    if host != socket.gethostname() or pid <= 0:
        return False
    if namespace is not None and namespace != pid_namespace():
        return False
    return not pid_alive(pid)


def place() -> str:
    """Where a pid of ours means something, in 8 hex digits: a digest of (host name, pid
    namespace). Names that carry a pid (a directory repository's temp files) carry this
    too, so they are judged by the same rule as helpers and locks (run_is_over)."""
    where = f"{socket.gethostname()}\0{pid_namespace()}".encode()
    return hashlib.sha256(where).hexdigest()[:8]


def run_at_place_is_over(where: str | None, pid: int) -> bool:
    """run_is_over for a run known by `place()` instead of host and namespace. `where`
    None (names written by earlier versions) keeps their rule: the pid alone."""
    if where is None:
        return pid > 0 and not pid_alive(pid)
    return where == place() and pid > 0 and not pid_alive(pid)

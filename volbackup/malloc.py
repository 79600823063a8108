"""One malloc arena for the whole process: what keeps a long backup's memory flat.

glibc gives every thread that allocates its own arena. zstd's worker threads and
Python's main thread pass 4 MiB job buffers between them, and with several arenas
freed buffers end up where the next allocation does not look: the peak RSS of a backup
crept up by 4 MiB every few GiB (91 MiB at 1 GiB, 99-103 MiB at 4 GiB). With one arena
it stays at 91 MiB, at the same speed (docs/performance.md). The same as running with
MALLOC_ARENA_MAX=1, which cannot be set from inside the process that reads it.
"""

from __future__ import annotations

import ctypes

_M_ARENA_MAX = -8  # from glibc's malloc.h


def use_one_arena() -> bool:
    """Ask glibc's malloc for a single arena; False where that is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))

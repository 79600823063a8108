"""The CLI process allocates from one malloc arena (volbackup.malloc): counted with glibc's
malloc_info in a fresh interpreter, where four threads allocate."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc arenas")

COUNT_HEAPS = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.open_memstream.restype = ctypes.c_void_p
libc.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "cli":
    from volbackup.cli import main
    assert main(["--version"]) == 0
kept = []
threads = [threading.Thread(target=lambda: kept.append(libc.malloc(256 << 10))) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(ctypes.string_at(buf, size.value).count(b"<heap nr="))
"""


def heaps(how: str) -> int:
    out = subprocess.run([sys.executable, "-c", COUNT_HEAPS, how], capture_output=True,
                         text=True, check=True, timeout=60)
    return int(out.stdout.split()[-1])


def test_threads_get_arenas_of_their_own_by_default():
    assert heaps("plain") > 1  # what the CLI changes; if glibc stops doing it, so can we


def test_the_cli_allocates_from_one_arena():
    assert heaps("cli") == 1

"""What the tar member check (volbackup.stream.tarstream.TarWalker) costs: time per entry on a
tar of many tiny files, and memory per symlink member (the only names it keeps).

    python benchmarks/member_check.py [--entries 200000]

Prints seconds per entry with and without symlinks, and the bytes the walker holds per symlink
(tracemalloc). Figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
import tracemalloc

from volbackup.stream.tarstream import TarWalker


def make_tar(entries: int, symlinks: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for i in range(entries):
            info = tarfile.TarInfo(f"./dir{i % 100:02d}/entry-{i:08d}")
            if symlinks:
                info.type, info.linkname = tarfile.SYMTYPE, "../target"
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _walk(data: bytes) -> TarWalker:
    walker = TarWalker()
    view = memoryview(data)
    for i in range(0, len(data), 1 << 20):
        walker.feed(view[i:i + (1 << 20)])
    walker.finish()
    return walker


def walk(data: bytes) -> tuple[float, int]:
    """Seconds to walk `data` in 1 MiB pieces (best of 3), and the bytes the walker holds
    afterwards (a separate walk under tracemalloc, which slows it down many times)."""
    seconds = min(_timed(data) for _ in range(3))
    tracemalloc.start()
    walker = _walk(data)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del walker
    return seconds, held


def _timed(data: bytes) -> float:
    started = time.perf_counter()
    _walk(data)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    n = parser.parse_args().entries
    files_s, _ = walk(make_tar(n, symlinks=False))
    links_s, held = walk(make_tar(n, symlinks=True))
    print(f"{n} tiny files: {files_s / n * 1e6:.2f} us per entry")
    print(f"{n} symlinks:   {links_s / n * 1e6:.2f} us per entry, "
          f"{held / n:.0f} bytes held per symlink (names of ~30 characters)")


if __name__ == "__main__":
    main()

"""Kernel time of writing an archive-sized file: into fresh page-cache pages, or reusing a few.

    python benchmarks/pagecache.py --mib 600 --rounds 8 [--dir /var/tmp]

Each round writes a new file of --mib MiB (1 MiB writes, fsync at the end) three ways:
  plain     just write;
  advise    start the writeback of every 8 MiB (volbackup before d9d802c);
  recycle   the same, and drop all but the last 8 MiB already started from the page
            cache (volbackup's local backend now), so the kernel reuses those pages.
and prints the system CPU seconds of each. The files are kept until the end, as the
benchmark's restored volumes are, so free memory shrinks from round to round. On a VM
that hands freed memory back to its host (virtio-balloon free page reporting), `plain`
and `advise` become several times dearer after a few rounds; `recycle` does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile

EVERY = 8 << 20


def write(path: str, mib: int, mode: str) -> float:
    """Write `mib` MiB to a new file at `path`; return the system CPU seconds it took."""
    block = os.urandom(1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = advised = 0
    try:
        for _ in range(mib):
            written += os.write(fd, block)
            if mode != "plain" and written - advised >= EVERY:
                os.posix_fadvise(fd, advised, written - advised, os.POSIX_FADV_DONTNEED)
                if mode == "recycle" and advised > EVERY:
                    os.posix_fadvise(fd, 0, advised - EVERY, os.POSIX_FADV_DONTNEED)
                advised = written
        os.fsync(fd)
    finally:
        os.close(fd)
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=600, help="file size (default 600, an archive)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--dir", default="/var/tmp", help="where to write (a disk, not tmpfs)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="vbbench-pagecache-", dir=args.dir)
    modes = ("plain", "advise", "recycle")
    try:
        print("round  " + "  ".join(f"{m:>8}" for m in modes) + "   (system CPU s)")
        for rnd in range(args.rounds):
            times = [write(os.path.join(work, f"{m}-{rnd}"), args.mib, m) for m in modes]
            print(f"{rnd:5d}  " + "  ".join(f"{t:8.2f}" for t in times), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

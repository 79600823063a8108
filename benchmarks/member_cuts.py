"""What a changed volume would store if chunks were also cut at every tar member's start.

    python benchmarks/member_cuts.py --size-mib 1024 [--chunk-size 1M]
    python benchmarks/member_cuts.py --size-mib 32 --large-share 0 --small-max 4096  # tiny files

A simulation, not volbackup: builds the uniquevolume.py volume in a temporary directory
and a copy of it changed as dedup.py's `dedup` section changes it (uniquevolume.change),
makes a GNU tar of each (`tar --sort=name`, into the temporary directory), and cuts both
with pyfastcdc at volbackup's parameters two ways:
  stream   FastCDC over the whole tar stream (volbackup today);
  members  every tar member (header + data) starts a new chunk; FastCDC inside each;
  each     volbackup's cut_each_member (the packed layout's blobs): a cut where every
           member of 4 KiB or more starts and ends, FastCDC inside, smaller members
           grouped (a keyed name hash 0 mod 8, or 64 KiB).
It prints, for each, the bytes (uncompressed) of the changed tar in chunks the base tar
lacks, as a share of the tar, the chunk count per GiB, and (each) the seconds the cut took.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

from pyfastcdc.cy import FastCDC

import uniquevolume
from volbackup.stream.archive import kept_tar
from volbackup.stream.chunker import cut_each_member, seed_name_key
from volbackup.stream.tarstream import TarWalker

SIZES = {"512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20}


def member_starts(path: str) -> list[int]:
    with tarfile.open(path) as tar:
        return [m.offset for m in tar]


def chunks(path: str, avg: int, aligned: bool) -> dict[bytes, int]:
    """sha256 -> length of every chunk of the tar at `path`."""
    cdc = FastCDC(avg, min_size=avg // 4, max_size=avg * 4)
    size = os.path.getsize(path)
    bounds = member_starts(path) + [size] if aligned else [0, size]
    out: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for start, end in zip(bounds, bounds[1:]):
            f.seek(start)
            segment = f.read(end - start)
            for c in cdc.cut_buf(segment):
                data = bytes(c.data)
                out[hashlib.sha256(data).digest()] = len(data)
    return out


def each_chunks(path: str, avg: int) -> dict[bytes, int]:
    """As chunks(), cut by volbackup's cut_each_member (seed 0; its sizes as chunks())."""
    def pieces():
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                yield piece

    walker = TarWalker(unique=False)
    out: dict[bytes, int] = {}
    for data in cut_each_member(kept_tar(pieces(), walker), walker, avg, avg // 4, avg * 4,
                                1, 0, name_key=seed_name_key(0)):
        out[hashlib.sha256(data).digest()] = len(data)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--chunk-size", default="1M", choices=list(SIZES))
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--large-share", type=float, default=0.75,
                   help="share of the volume in its 4 large files (uniquevolume.fill)")
    p.add_argument("--small-max", type=int, default=uniquevolume.SMALL_MAX,
                   help="largest small file, bytes (small files are log-uniform from 512 B)")
    args = p.parse_args()
    uniquevolume.SMALL_MAX = args.small_max
    work = tempfile.mkdtemp(prefix="vbbench-cuts-", dir="/var/tmp")
    try:
        base, changed = os.path.join(work, "base"), os.path.join(work, "changed")
        os.makedirs(base)
        stats = uniquevolume.fill(base, args.size_mib, args.seed, large_share=args.large_share)
        subprocess.run(["cp", "-a", base, changed], check=True)
        change = uniquevolume.change(changed, args.seed + 1000)
        tars = {}
        for name, root in (("base", base), ("changed", changed)):
            tars[name] = os.path.join(work, f"{name}.tar")
            subprocess.run(["tar", "--sort=name", "-cf", tars[name], "-C", root, "."], check=True)
        shutil.rmtree(base)
        shutil.rmtree(changed)
        avg = SIZES[args.chunk_size]
        total = os.path.getsize(tars["changed"])
        print(f"{args.size_mib} MiB volume ({stats['small_files']} small files up to "
              f"{args.small_max} B), change {change['changed_pct']} %, chunk size "
              f"{args.chunk_size}")
        for mode in ("stream", "members", "each"):
            began = time.perf_counter()
            if mode == "each":
                old, new = each_chunks(tars["base"], avg), each_chunks(tars["changed"], avg)
            else:
                old = chunks(tars["base"], avg, mode == "members")
                new = chunks(tars["changed"], avg, mode == "members")
            took = (time.perf_counter() - began) / 2
            fresh = sum(n for h, n in new.items() if h not in old)
            print(f"  {mode:8} new {fresh / (1 << 20):8.1f} MiB = {100 * fresh / total:6.2f} % of "
                  f"the tar; {len(new) * (1 << 30) / total:8.0f} chunks per GiB; "
                  f"{took:5.2f} s a tar")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a block rewritten inside a large file stores beyond itself, per FastCDC chunk size.

    python benchmarks/rewrite_cost.py [--trials 60] [--mib 24] [--block-kib 686]
        [--sizes 512/128/2048/1,384/96/1536/1,256/64/1024/1]

In-process, pyfastcdc alone: per trial, --mib of random bytes (a fresh seed) cut with a fresh
chunker seed, a block of --block-kib rewritten with other random bytes at a random offset in
the middle half, cut again; the bytes of the new cut's chunks that the old cut lacks (or that
overlap the block), less the block. Also the mean chunk and the chunks a GiB (the index's
blobs for the data of large files). A size is avg/min/max in KiB and pyfastcdc's normalized
chunking level. docs/performance.md, "Where a day's new bytes go".
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
from pyfastcdc.cy import FastCDC

KIB = 1024


def one(rng, size: int, block: int, avg: int, min_: int, max_: int, nc: int) -> tuple[int, int]:
    """(bytes stored beyond the block, chunks of the old cut)."""
    data = bytearray(rng.bytes(size))
    chunker = FastCDC(avg, min_size=min_, max_size=max_, normalized_chunking=nc,
                      seed=int(rng.integers(1 << 31)))
    old = {(c.offset, c.length) for c in chunker.cut_buf(memoryview(data))}
    at = int(rng.integers(size // 4, size // 2))
    data[at:at + block] = rng.bytes(block)
    new = sum(c.length for c in chunker.cut_buf(memoryview(data))
              if (c.offset, c.length) not in old or (c.offset < at + block
                                                     and c.offset + c.length > at))
    return new - block, len(old)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--mib", type=int, default=24)
    p.add_argument("--block-kib", type=int, default=686, help="0.67 MiB: dedup.py's daily "
                   "rewrite of a 256 MiB volume")
    p.add_argument("--sizes", default="512/128/2048/1,512/128/2048/2,384/96/1536/1,"
                                      "256/64/1024/1,256/64/1024/2")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    size = args.mib << 20
    for spec in args.sizes.split(","):
        avg, min_, max_, nc = (int(x) for x in spec.split("/"))
        rows = [one(rng, size, args.block_kib * KIB, avg * KIB, min_ * KIB, max_ * KIB, nc)
                for _ in range(args.trials)]
        extra = [r[0] for r in rows]
        mean_chunk = size / statistics.mean(r[1] for r in rows)
        print(f"{avg}K (min {min_}K, max {max_}K, nc {nc}): mean chunk {mean_chunk / KIB:.0f} "
              f"KiB, {(1 << 30) / mean_chunk:,.0f} a GiB; stored beyond the block "
              f"{statistics.mean(extra) / KIB:,.0f} KiB (+-{statistics.stdev(extra) / KIB / args.trials ** 0.5:.0f}), "
              f"{statistics.mean(extra) / mean_chunk:.2f} mean chunks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

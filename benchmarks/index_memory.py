"""The packed layout's index in memory (volbackup.repo.packindex.BlobIndex), at N blobs:
bytes per blob, the time to check and load index objects, and lookups per second.

    python benchmarks/index_memory.py --blobs 1000000               # one index object
    python benchmarks/index_memory.py --blobs 1000000 --objects 8   # eight, merged on load

Index objects are made as a backup writes them (packindex.encode: ids sorted, locations
column-wise, 100 blobs a pack), then decoded (every bound and the order checked) and
merged into one BlobIndex, as PackedBlobStore loads them; memory by tracemalloc while the
objects' bytes are already freed (what a backup keeps), and the peak during the load.
"""

import argparse
import gc
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from volbackup.repo import packindex  # noqa: E402
from volbackup.repo.crypto import PlainChunks  # noqa: E402
from volbackup.repo.packindex import BlobIndex, PackInfo  # noqa: E402
from volbackup.repo.packs import DATA_PACK  # noqa: E402

PER_PACK = 100


def objects(n: int, count: int) -> list[bytes]:
    """`count` index objects of n blobs in all (each blob 1 KiB stored, 100 a pack)."""
    out, mac = [], PlainChunks().mac
    per = -(-n // count)
    for k in range(count):
        ids = [os.urandom(32) for _ in range(min(per, n - k * per))]
        packs = []
        for p in range(0, len(ids), PER_PACK):
            entries = [(i, 1024 * j, 1024, 4096) for j, i in enumerate(ids[p:p + PER_PACK])]
            packs.append((PackInfo(os.urandom(32), 1024 * PER_PACK + 5000, DATA_PACK), entries))
        out.append(packindex.encode(packs, mac)[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=1)
    args = parser.parse_args()
    n = args.blobs
    raw = objects(n, args.objects)
    size = sum(len(r) for r in raw)
    gc.collect()
    start = time.process_time()        # timed without tracemalloc, which slows allocation
    index = BlobIndex([packindex.decode(r, PlainChunks().mac, "index") for r in raw])
    load = time.process_time() - start
    del index
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    decoded = [packindex.decode(r, PlainChunks().mac, "index") for r in raw]
    index = BlobIndex(decoded)
    del decoded, raw
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    probes = [blob_id for blob_id, _ in zip((e[0] for e in index.entries()), range(100_000))]
    start = time.process_time()
    assert all(index.has(p) for p in probes)
    hit = (time.process_time() - start) / len(probes)
    misses = [os.urandom(32) for _ in range(len(probes))]
    start = time.process_time()
    assert not any(index.has(m) for m in misses)
    miss = (time.process_time() - start) / len(misses)
    print(f"{n:,} blobs in {args.objects} index object(s) of {size / 2**20:.0f} MiB: "
          f"{(kept - base) / n:.1f} bytes per blob kept ({(kept - base) / 2**20:.0f} MiB), "
          f"peak while loading {(peak - base) / 2**20:.0f} MiB; loaded (decoded, checked, "
          f"merged) in {load:.2f} s CPU; lookup {hit * 1e6:.2f} us (hit), "
          f"{miss * 1e6:.2f} us (miss)")


if __name__ == "__main__":
    main()

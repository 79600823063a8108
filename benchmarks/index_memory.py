"""The in-memory blob index of the packed layout (docs/design.md, "Packed layout (issue 24):
design"), as designed, at N blobs: bytes per blob, load time from a columnar index object,
and lookups per second (hits and misses). Pure Python + stdlib, as the design is.

    python benchmarks/index_memory.py --blobs 1000000      # about 10 s of CPU
"""

import argparse
import os
import sys
import time
import tracemalloc
from array import array
from bisect import bisect_left

ID = 32
BUCKETS = 1 << 16


class BlobIndex:
    """ids: one bytes of 32-byte ids grouped by their first two bytes (a bucket table of
    65,537 starts); locs: four uint32 per blob (pack ordinal, offset, stored length, plain
    length). Lookup: bytes.find inside the id's bucket (C speed), aligned hits only."""

    def __init__(self, ids: bytes, locs: array):
        self.ids, self.locs, n = ids, locs, len(ids) // ID
        prefix = bytearray(2 * n)          # first two bytes of each id, as big-endian uint16
        prefix[0::2], prefix[1::2] = ids[0::ID], ids[1::ID]
        keys = array("H", bytes(prefix))
        if sys.byteorder == "little":
            keys.byteswap()
        self.starts = array("I", (bisect_left(keys, b) for b in range(BUCKETS + 1)))

    def find(self, blob_id: bytes):
        b = blob_id[0] << 8 | blob_id[1]
        pos, end = self.starts[b] * ID, self.starts[b + 1] * ID
        while (pos := self.ids.find(blob_id, pos, end)) >= 0:
            if pos % ID == 0:
                i = pos // ID * 4
                return tuple(self.locs[i:i + 4])
            pos += 1
        return None


parser = argparse.ArgumentParser()
parser.add_argument("--blobs", type=int, default=1_000_000)
n = parser.parse_args().blobs
ids = sorted(os.urandom(ID) for _ in range(n))                  # what an index object holds,
stored = b"".join(ids) + array("I", range(4 * n)).tobytes()     # columnar: ids, then locations
probes = ids[::max(1, n // 100_000)]
del ids

tracemalloc.start()
start = time.process_time()
index = BlobIndex(stored[:n * ID], array("I", stored[n * ID:]))
load = time.process_time() - start
size = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
del stored

start = time.process_time()
assert all(index.find(p) is not None for p in probes)
hit = (time.process_time() - start) / len(probes)
misses = [os.urandom(ID) for _ in range(len(probes))]
start = time.process_time()
assert not any(index.find(m) for m in misses)
miss = (time.process_time() - start) / len(probes)
print(f"{n:,} blobs: {size / n:.1f} bytes per blob in memory, loaded in {load:.2f} s CPU; "
      f"lookup {hit * 1e6:.2f} us (hit), {miss * 1e6:.2f} us (miss)")

"""A test volume without repeated blocks, and seeded changes to it, for benchmarks/dedup.py.

benchvolume.py slices its text from one pool of a few MiB, so its files share long runs
of bytes: a chunked repository would find duplicates that real data does not have. Here
every byte is drawn afresh from a seeded generator (numpy, fast enough for GiBs):
- text: words of a fixed vocabulary (Zipf-like frequencies, a line break after about one
  word in twelve), so it compresses like logs or source text (zstd -3: about 40 %);
- random: incompressible bytes.
Layout: `large/big-NN.bin` (a few large files, alternately text and random) and
`small/dNNN/fNNNNN.{txt,bin}` (thousands of files, log-uniform 512 B to 128 KiB, 2/3 text).
Same seed and size -> same bytes and names.
"""

from __future__ import annotations

import math
import os

import numpy as np

MIB = 1 << 20
SMALL_MIN, SMALL_MAX = 512, 128 << 10
FILES_PER_DIR = 100
LETTERS = b"etaoinshrdlucmfwypvbgkqjxz"


class Source:
    """Seeded unique bytes: `text(n)` and `random(n)`."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        vocab_rng = np.random.default_rng(12345)   # the vocabulary is the same for every seed
        words = [bytes(vocab_rng.choice(list(LETTERS), vocab_rng.integers(2, 11)).astype(np.uint8))
                 for _ in range(5000)]
        # each word twice: followed by a space (index i) or by a line break (index i + 5000)
        pieces = [w + b" " for w in words] + [w + b"\n" for w in words]
        self.lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1]))
        self.blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        weights = 1 / np.arange(1, 5001)
        self.p = weights / weights.sum()

    def random(self, n: int) -> bytes:
        return self.rng.bytes(n)

    def text(self, n: int) -> bytes:
        out, have = [], 0
        while have < n:
            count = max(16, (n - have) // 5)
            idx = self.rng.choice(5000, size=count, p=self.p)
            idx += 5000 * (self.rng.random(count) < 1 / 12)
            lens = self.lengths[idx]
            ends = np.cumsum(lens)
            # position k of the output comes from blob[starts[idx[j]] + (k - ends[j-1])]
            offsets = np.repeat(self.starts[idx] - (ends - lens), lens) + np.arange(ends[-1])
            piece = self.blob[offsets].tobytes()
            out.append(piece)
            have += len(piece)
        return b"".join(out)[:n]

    def write(self, f, kind: str, n: int) -> None:
        while n > 0:
            step = min(n, 4 * MIB)
            f.write(self.text(step) if kind == "text" else self.random(step))
            n -= step


def fill(root: str, size_mib: int, seed: int = 11, large_files: int = 4,
         large_share: float = 0.75) -> dict:
    """Write the volume into `root` (an empty mountpoint); return its statistics."""
    src = Source(seed)
    total = size_mib * MIB
    stats = {"bytes": 0, "files": 0, "large_files": 0, "small_files": 0}
    os.makedirs(os.path.join(root, "large"))
    each = int(total * large_share) // large_files if large_files else 0
    for i in range(large_files):
        with open(os.path.join(root, "large", f"big-{i:02d}.bin"), "wb") as f:
            src.write(f, ("text", "random")[i % 2], each)
        stats["bytes"] += each
        stats["large_files"] += 1
    budget = total - stats["bytes"]
    log_lo, log_hi = math.log(SMALL_MIN), math.log(SMALL_MAX)
    i = 0
    while budget > 0:
        n = min(budget, int(math.exp(src.rng.uniform(log_lo, log_hi))))
        directory = os.path.join(root, "small", f"d{i // FILES_PER_DIR:03d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(directory)
        kind = "text" if src.rng.random() < 2 / 3 else "random"
        with open(os.path.join(directory, f"f{i:05d}.{'txt' if kind == 'text' else 'bin'}"), "wb") as f:
            src.write(f, kind, n)
        stats["bytes"] += n
        stats["small_files"] += 1
        budget -= n
        i += 1
    stats["files"] = stats["large_files"] + stats["small_files"]
    stats["mib"] = round(stats["bytes"] / MIB, 1)
    return stats


PARTS = ("append", "rewrite", "add_remove")


def change(root: str, seed: int, share: float = 0.015, parts: tuple = PARTS) -> dict:
    """Change about `share` of the volume's bytes, as a day of use might: appends to 1 % of
    the small files (1-8 KiB each), a block rewritten in place inside one large file, new
    small files added and old ones removed (the rest of the share, half each). The block
    is 4 MiB per GiB of volume at share 0.015 (scaled with both). `parts` picks some of
    the three kinds (the others are skipped; the rest of the share stays as with all).
    Returns what changed."""
    src = Source(seed)
    rng = src.rng
    small = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "small"))
                   for f in files)
    large = sorted(os.path.join(root, "large", f) for f in os.listdir(os.path.join(root, "large")))
    total = sum(os.path.getsize(p) for p in small + large)
    out = {"volume_bytes": total, "appended": 0, "rewritten": 0, "added": 0, "removed": 0}
    for path in rng.choice(small, size=max(1, len(small) // 100), replace=False):
        n = int(rng.integers(1024, 8193))
        if "append" in parts:
            with open(path, "ab") as f:
                src.write(f, "text" if path.endswith(".txt") else "random", n)
        out["appended"] += n
    if large:
        block = int(4 * MIB * (total / (1 << 30)) * (share / 0.015))
        path = large[int(rng.integers(len(large)))]
        size = os.path.getsize(path)
        block = min(block, size)
        offset = int(rng.integers(0, size - block + 1))
        if "rewrite" in parts:
            with open(path, "r+b") as f:
                f.seek(offset)
                src.write(f, "random", block)
        out["rewritten"] = block
    rest = max(0, int(total * share) - out["appended"] - out["rewritten"])
    out["appended"] *= "append" in parts
    out["rewritten"] *= "rewrite" in parts
    if "add_remove" not in parts:
        rest = 0
    budget = rest // 2
    while out["removed"] < budget and small:
        path = small.pop(int(rng.integers(len(small))))
        out["removed"] += os.path.getsize(path)
        os.remove(path)
    day = int(rng.integers(1 << 30))
    directory = os.path.join(root, "small", f"new-{seed}-{day:x}")
    os.makedirs(directory)
    i = 0
    while out["added"] < budget:
        n = min(budget - out["added"], int(math.exp(rng.uniform(math.log(SMALL_MIN),
                                                                 math.log(SMALL_MAX)))))
        with open(os.path.join(directory, f"f{i:05d}.txt"), "wb") as f:
            src.write(f, "text", n)
        out["added"] += n
        i += 1
    out["changed"] = out["appended"] + out["rewritten"] + out["added"] + out["removed"]
    out["changed_pct"] = round(100 * out["changed"] / total, 2)
    return out

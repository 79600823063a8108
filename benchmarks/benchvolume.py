"""A reproducible test volume for benchmarks/run.py, written through the host mountpoint.

Same seed and shape -> the same bytes, file names and sizes. The volume has:
- `large/`: a few large files, alternately text-like (compressible) and random
  (incompressible);
- `small/dNNN/`: thousands of small files, sizes log-uniform between 512 B and 128 KiB
  (mean ~24 KiB), each of a kind drawn by weight: text-like, random or zeros.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

MIB = 1 << 20
SMALL_MIN, SMALL_MAX = 512, 128 << 10
FILES_PER_DIR = 100
KINDS = ("text", "random", "zeros")


@dataclass
class Shape:
    size_mib: int = 1024
    large_files: int = 4
    large_share: float = 0.78             # 0.78 of 1 GiB = 4 x ~200 MiB
    small_mix: dict = field(default_factory=lambda: {"text": 5, "random": 3, "zeros": 2})
    seed: int = 7

    def scaled(self, factor: int) -> Shape:
        return Shape(self.size_mib * factor, self.large_files, self.large_share,
                     dict(self.small_mix), self.seed)


def parse_mix(text: str) -> dict:
    """'text=5,random=3,zeros=2' -> weights."""
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in KINDS or not weight:
            raise ValueError(f"bad mix entry {part!r}: use KIND=WEIGHT with KIND in {KINDS}")
        mix[kind.strip()] = float(weight)
    if sum(mix.values()) <= 0:
        raise ValueError("mix weights must add up to more than 0")
    return mix


class _Source:
    """Seeded byte generators. Text is sliced from a pool of pseudo-words (zipf-like
    frequencies, line breaks), so it compresses roughly like logs or source text."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(5000)]
        weights = [1 / (i + 1) for i in range(len(vocab))]
        words = rng.choices(vocab, weights, k=700_000)
        for i in range(0, len(words), 12):
            words[i] = "\n" + words[i]
        pool = " ".join(words).encode()
        self.pool = pool + pool[:SMALL_MAX + MIB]   # slices may wrap around
        self.pool_len = len(pool)

    def text(self, n: int) -> bytes:
        start = self.rng.randrange(self.pool_len)
        return self.pool[start:start + n]

    def random(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def zeros(self, n: int) -> bytes:
        return bytes(n)

    def chunked(self, kind: str, n: int):
        while n > 0:
            step = min(n, MIB)
            yield getattr(self, kind)(step)
            n -= step


def fill(root: str, shape: Shape) -> dict:
    """Write the volume into `root` (an empty mountpoint); return its statistics."""
    rng = random.Random(shape.seed)
    src = _Source(rng)
    total = shape.size_mib * MIB
    large_total = int(total * shape.large_share) if shape.large_files else 0
    stats = {"bytes": 0, "files": 0, "large_files": 0, "small_files": 0,
             "bytes_by_kind": {k: 0 for k in KINDS}}

    def write(path: str, kind: str, n: int) -> None:
        with open(path, "wb") as f:
            f.writelines(src.chunked(kind, n))
        stats["bytes"] += n
        stats["files"] += 1
        stats["bytes_by_kind"][kind] += n

    if shape.large_files:
        os.makedirs(os.path.join(root, "large"))
        each = large_total // shape.large_files
        for i in range(shape.large_files):
            write(os.path.join(root, "large", f"big-{i:02d}.bin"), ("text", "random")[i % 2], each)
            stats["large_files"] += 1

    kinds, weights = zip(*shape.small_mix.items())
    small_budget = total - stats["bytes"]
    log_lo, log_hi = math.log(SMALL_MIN), math.log(SMALL_MAX)
    i = 0
    while small_budget > 0:
        n = min(small_budget, int(math.exp(rng.uniform(log_lo, log_hi))))
        directory = os.path.join(root, "small", f"d{i // FILES_PER_DIR:03d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(directory)
        kind = rng.choices(kinds, weights)[0]
        write(os.path.join(directory, f"f{i:05d}.{'txt' if kind == 'text' else 'bin'}"), kind, n)
        stats["small_files"] += 1
        small_budget -= n
        i += 1
    stats["mib"] = stats["bytes"] / MIB
    return stats

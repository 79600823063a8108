"""The repository config: the object `volbackup init` writes, which makes a repository chunked.

A directory or bucket without it is an archive-layout repository (one .tar.zst per
snapshot). The config is read from the store, so it is untrusted input: every value is
checked against bounds of our own before it sizes a buffer (docs/format.md).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field

from volbackup.errors import RepositoryError

CONFIG_KEY = "config"
FORMAT = "volbackup-repository"
FORMAT_VERSION = 1
CHUNKER = "fastcdc-2020"

# Kept at 1M after `benchmarks/dedup.py --sections sizes` (docs/performance.md, "Chunk
# size"): 512K cuts what scattered small-file changes store only from 19.7 % to 15.5 %
# of a snapshot, at twice the objects; 2M and 4M store 14-21 % more per change.
# pyfastcdc's average is avg_size + min_size: about 1.25 MiB here.
DEFAULT_AVG = 1 << 20
DEFAULT_MIN = 256 << 10
DEFAULT_MAX = 4 << 20
# Hard bounds, whatever a config says: a chunk is held whole in memory (several at once).
MAX_CHUNK = 16 << 20
MIN_CHUNK = 64


@dataclass(frozen=True)
class Chunker:
    algorithm: str = CHUNKER
    min_size: int = DEFAULT_MIN
    avg_size: int = DEFAULT_AVG
    max_size: int = DEFAULT_MAX
    normalized_chunking: int = 1
    seed: int = 0           # pyfastcdc's gear-table seed; random per repository


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: Chunker = field(default_factory=Chunker)
    layout: str = "chunked"
    chunk_hash: str = "sha256"
    compression: str = "zstd"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def new(cls, avg_size: int = DEFAULT_AVG) -> "RepoConfig":
        chunker = Chunker(min_size=max(MIN_CHUNK, avg_size // 4), avg_size=avg_size,
                          max_size=avg_size * 4, seed=secrets.randbits(31))
        config = cls(id=secrets.token_hex(16), chunker=chunker)
        config.check("the new config")
        return config

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "RepoConfig":
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise RepositoryError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RepositoryError(f"{where} is not a volbackup repository config")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RepositoryError(f"{where} has an invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise RepositoryError(
                f"{where} has repository format version {version}; this volbackup reads up "
                f"to {FORMAT_VERSION} (upgrade volbackup to use this repository)")
        chunker = data.get("chunker")
        if not isinstance(chunker, dict) or set(chunker) != set(Chunker.__dataclass_fields__):
            raise RepositoryError(f"{where} has an invalid chunker")
        try:
            config = cls(id=data["id"], chunker=Chunker(**chunker), layout=data["layout"],
                         chunk_hash=data["chunk_hash"], compression=data["compression"],
                         format=data["format"], format_version=version)
        except (KeyError, TypeError) as e:
            raise RepositoryError(f"{where} lacks {e}") from None
        config.check(where)
        return config

    def check(self, where: str) -> None:
        c = self.chunker
        ints = (c.min_size, c.avg_size, c.max_size, c.normalized_chunking, c.seed)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in ints):
            raise RepositoryError(f"{where} has a chunker with non-integer sizes")
        if not isinstance(self.id, str) or not re.fullmatch(r"[0-9a-f]{32}", self.id):
            raise RepositoryError(f"{where} has an invalid id {self.id!r}")
        if (self.layout, self.chunk_hash, self.compression, c.algorithm) != \
                ("chunked", "sha256", "zstd", CHUNKER):
            raise RepositoryError(
                f"{where} asks for layout {self.layout!r}, hash {self.chunk_hash!r}, "
                f"compression {self.compression!r}, chunker {c.algorithm!r}; this volbackup "
                f"knows chunked, sha256, zstd, {CHUNKER} (upgrade volbackup?)")
        # pyfastcdc's own bounds: min 64 B-1 MiB, avg 256 B-4 MiB, max 1 KiB-16 MiB
        if not (MIN_CHUNK <= c.min_size <= c.avg_size <= c.max_size <= MAX_CHUNK
                and c.min_size <= 1 << 20 and 256 <= c.avg_size <= 4 << 20
                and c.max_size >= 1024 and 0 <= c.normalized_chunking <= 3
                and 0 <= c.seed < 1 << 31):
            raise RepositoryError(f"{where} has chunker sizes out of bounds "
                                  f"({c.min_size}/{c.avg_size}/{c.max_size})")

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
FORMAT_VERSION = 3          # what this volbackup reads; a packed config is written as 3,
ENCRYPTED_VERSION = 2       # an encrypted chunked one as 2,
PLAIN_VERSION = 1           # and a plain chunked one as 1 (readable by the first versions)
CHUNKED, PACKED = "chunked", "packed"   # blobs one object each, or in packs with an index
CHUNKER = "fastcdc-2020-members"   # FastCDC, plus cuts at tar members (stream/chunker.py)
CHUNKER_PLAIN = "fastcdc-2020"     # FastCDC alone (the first chunked repositories)
# FastCDC inside members, a cut at every member but tiny ones, which are grouped: the
# packed layout's blobs (stream/chunker.py, cut_each_member), what `init` makes (packed).
CHUNKER_EACH = "fastcdc-2020-each-member"
CHUNKERS = (CHUNKER, CHUNKER_PLAIN, CHUNKER_EACH)
SCHEME = "age+hmac-sha256"                      # chunked: an age file per chunk
PACKED_SCHEME = "age+aes-256-gcm+hmac-sha256"   # packed: an age-sealed key per pack
DEFAULT_PACK = 16 << 20
MIN_PACK, MAX_PACK = 1 << 20, 128 << 20

# What `volbackup init` makes unless told otherwise (issue 24): packed is ahead of chunked
# on every measure (docs/performance.md, "The packed layout against the peers").
DEFAULT_LAYOUT = PACKED

# A chunked repository's target chunk size, kept at 1M after `benchmarks/dedup.py
# --sections sizes` (docs/performance.md, "Chunk size"): 512K cuts what scattered
# small-file changes store only from 19.7 % to 15.5 % of a snapshot, at twice the
# objects; 2M and 4M store 14-21 % more per change. pyfastcdc's average is avg_size +
# min_size: about 1.25 MiB here.
DEFAULT_AVG = 1 << 20
DEFAULT_MIN = 256 << 10
DEFAULT_MAX = 4 << 20
# A packed repository's: 256K (min 64K, max 1M). What a day's change stores beyond the
# changed bytes is mostly the FastCDC chunks around a change inside a large file (about 1.7
# mean chunks); the groups of small files cost ~1.5 % of it (docs/performance.md, "Where a
# day's new bytes go"). 30 daily snapshots at 1 %/day store 1.36x one full snapshot
# against 1.42-1.43x at 512K and 1.46-1.51x at 1M. Packs keep the object count; the index
# grows, and only with large files (~3,400 blobs a GiB of them instead of ~1,700; about 51
# bytes a blob in memory): small files are cut at their own ends whatever the size.
# Repositories made at 512K or 1M keep their sizes (they are in the config).
DEFAULT_PACKED_AVG = 256 << 10
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
class Encryption:
    """An encrypted repository's public half (volbackup.repo.crypto has the model)."""

    recipients: tuple[str, ...]  # age or SSH public keys every chunk and snapshot is sealed to
    key_check: str               # tells the right repository key from a wrong one
    sealed_key: str              # the repository key as an age file to the recipients (base64)
    scheme: str = SCHEME


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: Chunker = field(default_factory=Chunker)
    layout: str = "chunked"
    chunk_hash: str = "sha256"  # an encrypted repository's chunk names: HMAC-SHA256
    compression: str = "zstd"
    format: str = FORMAT
    format_version: int = PLAIN_VERSION
    encryption: Encryption | None = None
    mac: str | None = None      # encrypted: of everything else, with the repository key
    pack_size: int | None = None    # packed: a pack is closed past this many bytes

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def packed(self) -> bool:
        return self.layout == PACKED

    def _fields(self) -> dict:
        """Every field, but `pack_size` only in a packed config: a chunked config's bytes
        (and so its MAC) are what the versions before packs wrote."""
        data = asdict(self)
        if data["pack_size"] is None:
            del data["pack_size"]
        return data

    def signed_bytes(self) -> bytes:
        """What the MAC covers: the whole config but the MAC, canonical JSON."""
        data = self._fields()
        data.pop("mac")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def new(cls, avg_size: int | None = None, algorithm: str | None = None,
            layout: str = CHUNKED, pack_size: int = DEFAULT_PACK) -> "RepoConfig":
        """A new repository's config (chunked unless `layout` says: `volbackup init`'s
        default is DEFAULT_LAYOUT, which its options pass). The chunker by default: a cut
        at every member in a packed repository (its packs make ~10,000 blobs a GiB cheap),
        members of 512 KiB or more and groups of smaller ones in a chunked one (one object
        per chunk); the chunk size the layout's (DEFAULT_PACKED_AVG or DEFAULT_AVG). The
        sizes are written into the config, so a repository keeps the ones it was made with
        when a default changes."""
        if algorithm is None:
            algorithm = CHUNKER_EACH if layout == PACKED else CHUNKER
        if avg_size is None:
            avg_size = DEFAULT_PACKED_AVG if layout == PACKED else DEFAULT_AVG
        chunker = Chunker(algorithm=algorithm, min_size=max(MIN_CHUNK, avg_size // 4),
                          avg_size=avg_size, max_size=avg_size * 4, seed=secrets.randbits(31))
        config = cls(id=secrets.token_hex(16), chunker=chunker)
        if layout == PACKED:
            config = cls(id=config.id, chunker=chunker, layout=PACKED,
                         format_version=FORMAT_VERSION, pack_size=pack_size)
        config.check("the new config")
        return config

    def to_json(self) -> bytes:
        data = self._fields()
        if data["encryption"] is None:  # a plain config as the first chunked versions wrote it
            del data["encryption"], data["mac"]
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

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
                         format=data["format"], format_version=version,
                         encryption=_encryption(data.get("encryption"), where),
                         mac=data.get("mac"), pack_size=data.get("pack_size"))
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
        if self.layout == PACKED:
            self._check_packed(where)
        elif self.layout == CHUNKED and (self.encrypted != (self.format_version >= 2)
                                         or self.pack_size is not None):
            raise RepositoryError(f"{where} is half encrypted (encryption, mac and format "
                                  f"version 2 go together)" if self.pack_size is None else
                                  f"{where} gives a pack size to a chunked repository")
        if self.encrypted != (self.mac is not None):
            raise RepositoryError(f"{where} is half encrypted (encryption and mac go "
                                  f"together)")
        if self.mac is not None and not (isinstance(self.mac, str)
                                         and re.fullmatch(r"[0-9a-f]{64}", self.mac)):
            raise RepositoryError(f"{where} has an invalid mac")
        chunk_hash = "hmac-sha256" if self.encrypted else "sha256"
        if self.layout not in (CHUNKED, PACKED) or (self.chunk_hash, self.compression) != (
                chunk_hash, "zstd") or c.algorithm not in CHUNKERS:
            raise RepositoryError(
                f"{where} asks for layout {self.layout!r}, hash {self.chunk_hash!r}, "
                f"compression {self.compression!r}, chunker {c.algorithm!r}; this volbackup "
                f"knows chunked or packed, {chunk_hash}, zstd, {CHUNKER} (upgrade "
                f"volbackup?)")
        if self.encrypted and self.encryption.scheme != (PACKED_SCHEME if self.packed
                                                         else SCHEME):
            raise RepositoryError(f"{where} uses encryption scheme "
                                  f"{self.encryption.scheme!r} with layout {self.layout!r}")
        # pyfastcdc's own bounds: min 64 B-1 MiB, avg 256 B-4 MiB, max 1 KiB-16 MiB
        if not (MIN_CHUNK <= c.min_size <= c.avg_size <= c.max_size <= MAX_CHUNK
                and c.min_size <= 1 << 20 and 256 <= c.avg_size <= 4 << 20
                and c.max_size >= 1024 and 0 <= c.normalized_chunking <= 3
                and 0 <= c.seed < 1 << 31):
            raise RepositoryError(f"{where} has chunker sizes out of bounds "
                                  f"({c.min_size}/{c.avg_size}/{c.max_size})")


    def _check_packed(self, where: str) -> None:
        if self.format_version != FORMAT_VERSION:
            raise RepositoryError(f"{where}: a packed repository has format version "
                                  f"{FORMAT_VERSION}, not {self.format_version}")
        size = self.pack_size
        if isinstance(size, bool) or not isinstance(size, int) \
                or not MIN_PACK <= size <= MAX_PACK:
            raise RepositoryError(f"{where} has pack size {size!r}; it must be "
                                  f"{MIN_PACK >> 20}-{MAX_PACK >> 20} MiB")


def _encryption(data: object, where: str) -> Encryption | None:
    if data is None:
        return None
    fields = set(Encryption.__dataclass_fields__)
    if not isinstance(data, dict) or set(data) != fields:
        raise RepositoryError(f"{where} has an invalid encryption section")
    recipients = data["recipients"]
    if not isinstance(recipients, list) or not recipients or not all(
            isinstance(r, str) and 0 < len(r) <= 16384 for r in recipients):
        raise RepositoryError(f"{where} has invalid recipients")
    if data["scheme"] not in (SCHEME, PACKED_SCHEME):
        raise RepositoryError(f"{where} uses encryption scheme {data['scheme']!r}; this "
                              f"volbackup knows {SCHEME!r} and {PACKED_SCHEME!r} (upgrade volbackup?)")
    if not isinstance(data["key_check"], str) or not re.fullmatch(r"[0-9a-f]{32}",
                                                                    data["key_check"]):
        raise RepositoryError(f"{where} has an invalid key_check")
    if not isinstance(data["sealed_key"], str) or len(data["sealed_key"]) > 1 << 20:
        raise RepositoryError(f"{where} has an invalid sealed_key")
    return Encryption(tuple(recipients), data["key_check"], data["sealed_key"], data["scheme"])

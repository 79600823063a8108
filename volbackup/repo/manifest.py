"""The snapshot manifest: what was backed up, from where, and how to check the archive.

It is the last thing written for a snapshot; a snapshot exists exactly when its
manifest does. docs/format.md describes every field.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime

from volbackup.errors import BadPattern, IntegrityError, RepositoryError
from volbackup.repo import catalogtree
from volbackup.repo.catalogs import check_field as check_catalog
from volbackup.repo.trees import TreeRoot
from volbackup.stream.catalog import HEX64, MAX_INT
from volbackup.stream.exclude import parse_patterns
from volbackup.timefmt import parse_utc_iso

VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # what the engine accepts
FORMAT = "volbackup-snapshot"


FORMAT_VERSION = 4          # the newest this volbackup reads: 4 = a tree snapshot
TREE_VERSION = 4            # a snapshot whose data list and catalogue are trees (packed)
SEALED_VERSION = 3          # an encrypted snapshot with a chunk list
CHUNKED_VERSION = 2         # a plain chunked snapshot
ARCHIVE_VERSION = 1         # an archive-layout one (readable by older versions)
# What an encrypted manifest keeps only in `sealed`: everything `list` and `prune` do not
# need that says something of the data (CIFS passwords live in driver options).
PRIVATE_FIELDS = ("labels", "driver_options", "mount_path", "bind_path", "source_container",
                  "tar_sha256", "excluded")
# Private fields a sealed part holds only when set (older versions know only the others).
OPTIONAL_PRIVATE = ("excluded",)
LAYOUTS = ("archive", "chunked")
LEVELS = range(0, 23)       # zstd's levels a backup writes (0: zstd's default); copy reuses it
STAMP = r"\d{8}T\d{6}Z-[0-9a-f]{4,32}"  # of a snapshot id, VOLUME@STAMP
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00)")


def parse_created(text: str) -> datetime | None:
    """A manifest's `created` (UTC ISO 8601, `Z`) as an aware datetime; None if it is not
    one (prune and list sort and compare these, so a bad one must not get that far)."""
    if not isinstance(text, str) or not _CREATED.fullmatch(text):
        return None
    try:
        return parse_utc_iso(text)
    except ValueError:
        return None


def _count(value) -> bool:
    """A count or size as a writer gives one: an int from 0 to 2**63 - 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _valid_patterns(value) -> bool:
    """A list of exclude patterns as `backup --exclude-path` accepts them."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return False
    try:
        return parse_patterns(value) == value
    except BadPattern:
        return False


@dataclass
class Manifest:
    snapshot: str               # id: VOLUME@YYYYMMDDTHHMMSSZ-XXXX
    volume: str                 # volume name to restore as
    driver: str
    driver_options: dict[str, str]
    labels: dict[str, str]
    created: str                # UTC, ISO 8601 with Z
    host: str                   # host name of the machine that ran the backup
    tool_version: str
    archive: str                # file name of the archive (chunked: of the chunk list),
    #                             next to the manifest
    compression: str            # "zstd"
    level: int
    bytes: int                  # uncompressed tar bytes
    stored_bytes: int           # archive bytes (chunked: bytes of the chunks it added)
    sha256: str                 # of the archive (chunked: of the chunk list)
    entries: int                # tar members, the root included
    seconds: float              # how long the backup of this volume took
    source_kind: str = "volume"  # "volume" or "bind"
    source_container: str | None = None
    mount_path: str | None = None
    bind_path: str | None = None
    excluded: list[str] | None = None  # the exclude patterns the backup honoured, if any
    safety_for: str | None = None  # set on the snapshot restore --force takes of the volume
    #                                it replaces: the id of the snapshot it was replaced by
    layout: str = "archive"     # "archive" or "chunked" (docs/format.md)
    chunks: int | None = None   # chunked: entries in the chunk list
    new_chunks: int | None = None  # chunked: how many of them this backup wrote
    tar_sha256: str | None = None  # chunked: of the whole tar stream
    catalog: dict | None = None  # the catalogue's counts and digests (volbackup.repo.catalogs),
    #                              or a tree snapshot's catalogue tree (repo.catalogtree)
    data: dict | None = None    # a tree snapshot: the root of its data tree (repo.trees)
    encrypted: bool = False     # PRIVATE_FIELDS are blank here and in `sealed`
    sealed: str | None = None   # encrypted: base64 of an age file of PRIVATE_FIELDS (JSON)
    mac: str | None = None      # encrypted: HMAC of everything else, repository key
    format: str = FORMAT
    format_version: int = ARCHIVE_VERSION
    extra: dict = field(default_factory=dict)  # unknown keys from newer minor writers

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        data.update({k: v for k, v in extra.items() if k not in data})
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_dict(self) -> dict:
        return json.loads(self.to_json())

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "Manifest":
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting: RecursionError
            raise RepositoryError(f"manifest {where} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RepositoryError(f"manifest {where} is not a volbackup snapshot manifest")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RepositoryError(f"manifest {where} has an invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise RepositoryError(
                f"manifest {where} has format version {version!r}; this volbackup reads "
                f"up to {FORMAT_VERSION} (upgrade volbackup)")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [f.name for f in fields(cls)
                   if f.name in known and f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise RepositoryError(f"manifest {where} lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        manifest = cls(**kwargs)
        manifest._check_types(where)
        return manifest

    def _check_types(self, where: str) -> None:
        """Every field's type, and the forms code relies on (ids, times, names): a
        manifest is untrusted input, and a bad one must fail alone, when it is read."""
        ints = ("level", "bytes", "stored_bytes", "entries")
        strs = ("snapshot", "volume", "driver", "created", "host", "tool_version", "archive",
                "sha256", "compression", "source_kind")
        optional = ("source_container", "mount_path", "bind_path", "safety_for", "tar_sha256")
        bad = [n for n in ints + ("chunks", "new_chunks")
               if (n in ints or getattr(self, n) is not None) and not _count(getattr(self, n))]
        bad += [n for n in strs if not isinstance(getattr(self, n), str)]
        bad += [n for n in optional if getattr(self, n) is not None
                and not isinstance(getattr(self, n), str)]
        if "level" not in bad and self.level not in LEVELS:
            bad.append("level")
        bad += [n for n in ("labels", "driver_options") if not isinstance(getattr(self, n), dict)
                or not all(isinstance(k, str) and isinstance(v, str)
                           for k, v in getattr(self, n).items())]
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) \
                or not self.seconds >= 0:
            bad.append("seconds")
        if self.excluded is not None and not _valid_patterns(self.excluded):
            bad.append("excluded")
        if bad:
            raise RepositoryError(f"manifest {where} has invalid {', '.join(bad)}")
        if parse_created(self.created) is None:
            raise RepositoryError(f"manifest {where} has an invalid created time "
                                  f"{self.created!r} (UTC ISO 8601 such as "
                                  f"2026-11-29T06:59:59.239Z)")
        if not VOLUME_NAME.fullmatch(self.volume):
            raise RepositoryError(f"manifest {where} names an invalid volume {self.volume!r}")
        if not re.fullmatch(re.escape(self.volume) + "@" + STAMP, self.snapshot):
            raise RepositoryError(f"manifest {where} has an invalid snapshot id "
                                  f"{self.snapshot!r} for volume {self.volume}")
        if "/" in self.archive or self.archive.startswith("."):
            raise RepositoryError(f"manifest {where} names an invalid archive {self.archive!r}")
        if self.format_version >= TREE_VERSION or self.data is not None:
            self._check_tree(where)
        elif self.catalog is not None and not check_catalog(self.catalog):
            raise RepositoryError(f"manifest {where} has an invalid catalog field")
        if self.layout not in LAYOUTS:
            raise RepositoryError(f"manifest {where} has an unknown layout {self.layout!r}")
        # tar_sha256 is optional: a packed repository's snapshots have none (their chunk
        # ids and the list's sha256 cover every byte), an encrypted one's is sealed.
        if self.layout == "chunked" and not self.tree and not (
                self.format_version >= 2 and self.chunks is not None
                and (self.tar_sha256 is None or (isinstance(self.tar_sha256, str)
                                                 and HEX64.fullmatch(self.tar_sha256)))
                and HEX64.fullmatch(self.sha256)):
            raise RepositoryError(f"manifest {where} is an incomplete chunked manifest")

        if not isinstance(self.encrypted, bool) or self.encrypted != (self.mac is not None) \
                or self.encrypted != (self.sealed is not None) or (self.encrypted and not (
                    self.chunked and self.format_version >= 3
                    and isinstance(self.sealed, str) and isinstance(self.mac, str))):
            raise RepositoryError(f"manifest {where} is an incomplete encrypted manifest")

    def _check_tree(self, where: str) -> None:
        """A tree snapshot (format 4): its data and catalogue trees' roots, in bounds
        (the pieces are checked as they are read); nothing of a chunk list."""
        if not (self.format_version >= TREE_VERSION and self.data is not None
                and self.layout == "chunked" and self.chunks is None and self.sha256 == ""
                and self.tar_sha256 is None and self.catalog is not None):
            raise RepositoryError(f"manifest {where} is an incomplete tree manifest")
        try:
            data = TreeRoot.from_fields(self.data, f"manifest {where}")
            catalog_root = catalogtree.check_field(self.catalog, f"manifest {where}")
        except (RepositoryError, IntegrityError) as e:  # BadTree: a root out of bounds
            raise RepositoryError(f"manifest {where} has an invalid data or catalog field "
                                  f"({e})") from None
        if data.bytes != self.bytes or catalog_root.blobs > self.entries:
            raise RepositoryError(f"manifest {where} has a data tree of {data.bytes} bytes "
                                  f"or a catalogue of {catalog_root.blobs} pieces, for "
                                  f"{self.bytes} bytes in {self.entries} entries")

    @property
    def tree(self) -> bool:
        """Its data list and catalogue are trees of blobs (format 4), not list objects."""
        return self.data is not None

    def signed_bytes(self) -> bytes:
        """What an encrypted manifest's MAC covers: all of it but the MAC (canonical JSON)."""
        data = self.to_dict()
        data.pop("mac", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def private(self) -> dict:
        return {name: getattr(self, name) for name in PRIVATE_FIELDS
                if name not in OPTIONAL_PRIVATE or getattr(self, name) is not None}

    @property
    def chunked(self) -> bool:
        return self.layout == "chunked"


def fields_of(manifest: Manifest) -> dict:
    """A manifest's fields, whatever its type: what another type of it is made from."""
    return {f.name: getattr(manifest, f.name) for f in fields(Manifest)}


@dataclass(eq=False)
class RevealedManifest(Manifest):
    """A manifest made whole by its repository (Repository.reveal): in an encrypted one,
    its MAC checked with the repository key and its sealed part opened and checked with an
    identity; in a plain one, the manifest as read. Code that reads a snapshot's data asks
    for this type. Being a type, not a mark on an object, it survives a
    `dataclasses.replace` (our own change of a manifest we hold as revealed), which a
    second reveal would have taken for a forgery: its private fields are not what the MAC
    covers. A manifest read from the store is never one until revealed."""

    @classmethod
    def of(cls, manifest: Manifest) -> "RevealedManifest":
        return cls(**fields_of(manifest))

    def __eq__(self, other: object) -> bool:
        """Equal to any manifest with the same fields (revealing adds none)."""
        if not isinstance(other, Manifest):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(Manifest))


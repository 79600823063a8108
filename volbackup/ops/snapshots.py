"""Read-only operations on a repository: list, show and verify snapshots."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from volbackup.errors import IntegrityError, NotFound, RepositoryError
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.repo.manifest import Manifest
from volbackup.repo.packcheck import PackCheck, check_packs
from volbackup.repo.repository import Listing, Repository
from volbackup.stream import catalog


def list_snapshots(repo: Repository, volume: str | None = None,
                   host: str | None = None) -> Listing:
    """The snapshots; an empty listing of a directory that is no repository is an error."""
    listing = repo.snapshots(volume, host)
    if not listing.snapshots and not listing.problems:
        repo.require_repository()
    return listing


def show(repo: Repository, ref: str) -> Manifest:
    return repo.resolve(ref)


@dataclass
class SnapshotCheck(Outcome):
    bytes: int = 0
    stored_bytes: int = 0
    entries: int = 0
    seconds: float = 0.0


@dataclass
class VerifyResult:
    repository: str
    snapshots: list[SnapshotCheck]

    def raise_for_failures(self) -> None:
        # By snapshot: a damaged chunk shared by several fails each, and names them all.
        raise_for_failures(self.snapshots, "snapshots", snapshot_name)


def verify_packs(repo: Repository, progress: ProgressFactory = no_progress) -> PackCheck:
    """A packed repository's structure: every pack against the index and the index
    against the packs (volbackup.repo.packcheck); needs no identity."""
    if not repo.layout.packed:
        raise RepositoryError(f"repository {repo.describe()} is not packed: --packs checks "
                           f"the packs and index of a packed repository")
    repo.check_secrets(reading=False)
    return check_packs(repo.blobs, progress)


def snapshot_name(check: "SnapshotCheck") -> str:
    """A verified snapshot as failures name it: its id (its volume if it has none)."""
    return check.snapshot or check.volume


def verify(repo: Repository, refs: list[str], verify_all: bool = False,
           progress: ProgressFactory = no_progress) -> VerifyResult:
    """Read every archive in full: sha256, zstd frame checksum and tar structure; and its
    catalogue, which must describe exactly what was read."""
    checks: list[SnapshotCheck] = []
    repo.check_secrets(reading=True)
    if verify_all:
        listing = repo.snapshots()
        targets: list[Manifest | str] = list(listing.snapshots)
        if not listing.snapshots and not listing.problems:
            repo.require_repository()
            raise NotFound(f"no snapshots in repository {repo.describe()}")
        checks.extend(SnapshotCheck(p.volume, "failed").failure(RepositoryError(p.message))
                      for p in listing.problems)
        checks.extend(SnapshotCheck(p.volume, "failed", p.snapshot).failure(
            IntegrityError(p.message)) for p in listing.unauthentic)
    else:
        targets = list(refs)
    for target in targets:
        check = SnapshotCheck(target if isinstance(target, str) else target.volume, "ok")
        try:
            manifest = target if isinstance(target, Manifest) else repo.resolve(target)
            check.volume, check.snapshot = manifest.volume, manifest.snapshot
            _verify_one(repo, manifest, check, progress)
        except Exception as e:  # any error (Unexpected if not ours): the next one still runs
            check.failure(e)
        checks.append(check)
    return VerifyResult(repo.describe(), checks)


def _verify_one(repo: Repository, manifest: Manifest, check: SnapshotCheck,
                progress: ProgressFactory) -> None:
    started = time.monotonic()
    with progress(manifest.snapshot, manifest.bytes) as update:
        unpacker = repo.unpacker(manifest, update)
        described = hashlib.sha256()
        catalog.record(unpacker.walker, described.update)
        unpacker.drain()
    _verify_catalog(repo, manifest, described.hexdigest())
    if unpacker.walker.bytes != manifest.bytes or unpacker.walker.entries != manifest.entries:
        raise IntegrityError(
            f"snapshot {manifest.snapshot} holds {unpacker.walker.bytes} tar bytes in "
            f"{unpacker.walker.entries} entries, the manifest says {manifest.bytes} in "
            f"{manifest.entries}")
    check.bytes, check.stored_bytes = unpacker.walker.bytes, unpacker.stored_bytes
    check.entries = unpacker.walker.entries
    check.seconds = round(time.monotonic() - started, 3)


def _verify_catalog(repo: Repository, manifest: Manifest, described: str) -> None:
    """The stored catalogue reads back whole and is the one the data gives (a snapshot
    made before catalogues existed has none to check)."""
    if manifest.catalog is None:
        return
    stored = hashlib.sha256()   # a version 2 catalogue: its entries as version 1 lines
    for entry in repo.catalog(manifest):
        stored.update(entry.to_line())
    if manifest.catalog["version"] == catalog.CATALOG_VERSION:
        stored_sha256 = manifest.catalog["plain_sha256"]
    else:
        stored_sha256 = stored.hexdigest()
    if described != stored_sha256:
        raise IntegrityError(f"the catalogue of snapshot {manifest.snapshot} does not "
                             f"describe its data (ls, dump and partial restores would "
                             f"be wrong)")

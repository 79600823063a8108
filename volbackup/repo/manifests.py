"""The snapshots of a repository, as their manifests: ids and keys, listing, loading,
writing and removing manifests (one job of Repository, which stays the façade).

Layout: `snapshots/<volume>/<stamp>.json` (manifest), next to its data (an archive
`<stamp>.tar.zst`, or a chunk list `<stamp>.chunks`: volbackup.repo.layout) and its
catalogue. The snapshot id is `<volume>@<stamp>` and the stamp is `YYYYMMDDTHHMMSSZ-xxxx`
(UTC time plus a random suffix, so two runs in the same second, or two hosts, never
collide). The data is written first, the manifest last: a snapshot exists exactly when its
manifest does. An encrypted repository's manifests are sealed when written and
authenticated when listed with the key (volbackup.repo.sealing.Keyring).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from volbackup.errors import IntegrityError, NotFound, RepositoryError
from volbackup.repo import catalogs
from volbackup.repo.backends import Backend, BlobNotFound, ForeignEntries
from volbackup.repo.chunked import LIST_SUFFIX
from volbackup.repo.layout import ARCHIVE_SUFFIX
from volbackup.repo.manifest import STAMP, VOLUME_NAME, Manifest, parse_created
from volbackup.repo.sealing import Keyring

PREFIX = "snapshots/"
MANIFEST_SUFFIX = ".json"
_ID = re.compile(rf"(?P<volume>{VOLUME_NAME.pattern})@(?P<stamp>{STAMP})")
_MANIFEST_KEY = re.compile(rf"{PREFIX}(?P<volume>{VOLUME_NAME.pattern})/(?P<stamp>{STAMP})"
                          rf"{re.escape(MANIFEST_SUFFIX)}")


def new_snapshot_id(volume: str, created: datetime) -> str:
    return f"{volume}@{created.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def split_id(snapshot_id: str) -> tuple[str, str]:
    match = _ID.fullmatch(snapshot_id)
    if not match:
        raise NotFound(f"{snapshot_id!r} is not a snapshot id (VOLUME@YYYYMMDDTHHMMSSZ-xxxx)")
    return match["volume"], match["stamp"]


def volume_of(key: str) -> str:
    """The volume directory a key under snapshots/ belongs to ('' for snapshots/ itself)."""
    return key[len(PREFIX):].split("/", 1)[0] if key.startswith(PREFIX) else ""


def looks_like_id(ref: str) -> bool:
    return "@" in ref


def manifest_key(snapshot_id: str) -> str:
    volume, stamp = split_id(snapshot_id)
    return f"{PREFIX}{volume}/{stamp}{MANIFEST_SUFFIX}"


def archive_name(snapshot_id: str, chunked: bool = False) -> str:
    """The name of a snapshot's data blob next to its manifest: archive or chunk list."""
    return split_id(snapshot_id)[1] + (LIST_SUFFIX if chunked else ARCHIVE_SUFFIX)


def archive_key(manifest: Manifest) -> str:
    return f"{PREFIX}{manifest.volume}/{manifest.archive}"


def catalog_key(snapshot_id: str, chunked: bool) -> str:
    volume, stamp = split_id(snapshot_id)
    suffix = catalogs.LIST_SUFFIX if chunked else catalogs.ARCHIVE_SUFFIX
    return f"{PREFIX}{volume}/{stamp}{suffix}"


@dataclass


class Problem:
    """A manifest that could not be read, or (`snapshot` set) one that is not authentic."""

    volume: str
    message: str
    snapshot: str | None = None
    manifest: Manifest | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.message


@dataclass


class Listing:
    snapshots: list[Manifest]
    problems: list[Problem]
    # Encrypted repository, key given: the manifests whose MAC failed (not in `snapshots`).
    unauthentic: list[Problem] = field(default_factory=list)
    authenticated: bool = False  # every manifest in `snapshots` had its MAC checked


class Manifests:
    """The manifests under `snapshots/`: what makes a snapshot exist. `keyring`: an
    encrypted repository's, which seals what is written and authenticates what is listed."""

    def __init__(self, backend: Backend, keyring: Keyring | None):
        self.backend, self.keyring = backend, keyring

    def load(self, snapshot_id: str) -> Manifest:
        key = manifest_key(snapshot_id)
        try:
            raw = self.backend.read_bytes(key)
        except BlobNotFound:
            raise NotFound(f"no snapshot {snapshot_id} in repository "
                           f"{self.backend.describe()}") from None
        manifest = Manifest.from_json(raw, key)
        if manifest.snapshot != snapshot_id:
            raise RepositoryError(f"manifest {key} claims to be snapshot {manifest.snapshot}")
        return manifest

    def volumes(self, host: str | None = None) -> list[str]:
        """Volumes with snapshots, and volumes with an entry that cannot be read (so that
        `restore --all` reports them instead of leaving them out)."""
        if host is not None:
            listing = self.snapshots(host=host)
            return sorted({m.volume for m in listing.snapshots}
                          | {p.volume for p in listing.problems})
        names = {volume_of(info.key) for info in self.backend.list(PREFIX)
                 if info.key.endswith(MANIFEST_SUFFIX) or info.error}
        return sorted(n for n in names if n)

    def snapshot_ids(self) -> list[str]:
        """The ids of the snapshots whose manifests are listed, from their keys alone (no
        manifest is read: quick, for shell completion; `snapshots()` checks them)."""
        ids = []
        for info in self.backend.list(PREFIX):
            match = _MANIFEST_KEY.fullmatch(info.key)
            if match and not info.error:
                ids.append(f"{match['volume']}@{match['stamp']}")
        return ids

    def snapshots(self, volume: str | None = None, host: str | None = None) -> Listing:
        """Every readable snapshot (oldest first), and a message for each unreadable one.

        With `host`, only the snapshots made on that host (unreadable ones are still reported).
        An encrypted repository whose key was given: only the snapshots whose MAC checks
        out; the others (a writer without the key planted or altered them) are reported in
        `unauthentic`, whatever their host, so that nothing decides on them.
        """
        prefix = f"{PREFIX}{volume}/" if volume else PREFIX
        found, problems = [], []
        for info in self.backend.list(prefix):
            if info.error and not volume_of(info.key):
                raise RepositoryError(info.error)  # snapshots/ itself: nothing can be listed
            if info.error:  # a symlink, FIFO, device or unreadable directory: never skipped
                problems.append(Problem(volume_of(info.key), info.error))
                continue
            if not info.key.endswith(MANIFEST_SUFFIX):
                continue
            try:
                manifest = Manifest.from_json(self.backend.read_bytes(info.key), info.key)
                if manifest_key(manifest.snapshot) != info.key:
                    raise RepositoryError(f"manifest {info.key} claims to be snapshot "
                                          f"{manifest.snapshot}")
                found.append(manifest)
            except BlobNotFound:
                continue  # removed while listing
            except (RepositoryError, NotFound) as e:
                problems.append(Problem(volume_of(info.key), str(e)))
        check = self.keyring is not None and self.keyring.can_authenticate
        found, unauthentic = self._authentic(found) if check else (found, [])
        if host is not None:
            found = [m for m in found if m.host == host]
        found.sort(key=lambda m: (parse_created(m.created), m.snapshot))
        return Listing(found, problems, unauthentic, check)

    def _authentic(self, manifests: list[Manifest]) -> tuple[list[Manifest], list[Problem]]:
        """The manifests a key holder wrote, and a Problem for each of the others."""
        assert self.keyring is not None
        kept, refused = [], []
        for manifest in manifests:
            try:
                self.keyring.authenticate(manifest)
            except IntegrityError as e:
                refused.append(Problem(manifest.volume, str(e), manifest.snapshot, manifest))
                continue
            kept.append(manifest)
        return kept, refused

    def require_repository(self) -> None:
        """Raise if the store holds other things and no repository (`list -r /etc`), so
        that "no snapshots" is never said of a wrong directory."""
        foreign = self.backend.foreign_entries() if self.backend.has(ForeignEntries) else []
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RepositoryError(
                f"{self.backend.describe()} is not a volbackup repository: it holds {shown} "
                f"and no snapshots/ (a new repository is an empty directory)")

    def newest(self, volume: str, host: str | None = None) -> Manifest:
        listing = self.snapshots(volume, host)
        if listing.problems:
            # Never silently fall back to an older snapshot in a restore.
            raise RepositoryError(f"{listing.problems[-1]}; name a snapshot id explicitly")
        newest = listing.snapshots[-1] if listing.snapshots else None
        forged = [p for p in listing.unauthentic if p.manifest and (newest is None or (
            parse_created(p.manifest.created), p.snapshot) > (parse_created(newest.created),
                                                              newest.snapshot))]
        if forged:
            # Not a snapshot, but said: a restore of "the newest" is not quietly an older one.
            after = f", the newest authentic one is {newest.snapshot}" if newest else ""
            raise IntegrityError(f"{forged[-1]} (dated after every authentic snapshot of "
                                 f"volume {volume}{after}): name a snapshot id explicitly")
        if not listing.snapshots:
            self.require_repository()  # "no snapshots of X" is never said of a wrong -r
            of_host = f" from host {host}" if host is not None else ""
            raise NotFound(f"no snapshots of volume {volume}{of_host} in repository "
                           f"{self.backend.describe()}")
        return listing.snapshots[-1]

    def resolve(self, ref: str, host: str | None = None) -> Manifest:
        """A snapshot id, or a volume name meaning its newest snapshot (made on `host`)."""
        if looks_like_id(ref):
            manifest = self.load(ref)
            if host is not None and manifest.host != host:
                raise NotFound(f"snapshot {ref} was made on host {manifest.host}, not {host}")
            return manifest
        if not VOLUME_NAME.fullmatch(ref):
            raise NotFound(f"{ref!r} is neither a snapshot id nor a volume name")
        return self.newest(ref, host)

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest, which makes the snapshot exist (sealed, if encrypted)."""
        if self.keyring is not None:
            manifest = self.keyring.seal(manifest)
        self.backend.write_bytes(manifest_key(manifest.snapshot), manifest.to_json().encode())

    def remove_manifest(self, snapshot_id: str) -> None:
        """Remove a snapshot's manifest, which makes the snapshot cease to exist."""
        self.backend.delete(manifest_key(snapshot_id))

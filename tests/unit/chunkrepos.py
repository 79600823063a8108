"""Chunked repositories for the unit tests: small chunks (about 5 KiB), so that a tar of a
megabyte makes a few hundred, on a real LocalBackend; snapshots written and read through
Repository as the ops do."""

from __future__ import annotations

import dataclasses
import io
import random
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from tests.unit.manifests import make_manifest
from tests.unit.tars import chunked, end_of_members, make_tar
from volbackup.repo.chunked import iter_list
from volbackup.repo.config import CHUNKED, MIN_PACK, RepoConfig
from volbackup.repo.manifest import Manifest
from volbackup.repo.trees import TreeRoot, walk
from volbackup.repo.repository import Repository, new_snapshot_id
from volbackup.stream.archive import END_MARKER
from volbackup.timefmt import utc_iso

AVG = 4096


def chunked_repo(path: Path, seed: int | None = None, layout: str = CHUNKED,
                 pack_size: int = MIN_PACK) -> Repository:
    """A chunked repository (`layout` PACKED: its blobs in packs of `pack_size`); `seed`
    fixes where the chunker cuts (random otherwise, as `init` makes it), for a test whose
    count of chunks must be one answer."""
    path.mkdir(exist_ok=True)
    config = RepoConfig.new(avg_size=AVG, layout=layout, pack_size=pack_size)
    if seed is not None:
        config = dataclasses.replace(config, chunker=dataclasses.replace(config.chunker, seed=seed))
    return Repository.init(str(path), config=config)


def volume_tar(seed: int = 1, size: int = 1 << 20, edit_at: int | None = None) -> bytes:
    """A volume's tar stream: a root, a small file, and `size` random bytes (seeded), with
    one byte changed at `edit_at` if given; without the padding of the last record, which
    is not stored."""
    data = bytearray(random.Random(seed).randbytes(size))
    if edit_at is not None:
        data[edit_at] ^= 0xFF
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    tar = make_tar([(root, b""), (tarfile.TarInfo("./note"), b"hello\n"),
                    (tarfile.TarInfo("./data.bin"), bytes(data))])
    return tar[:end_of_members(tar) + END_MARKER]  # what is stored: no record padding


def backup(repo: Repository, tar: bytes, volume: str = "pgdata",
           when: datetime | None = None, record=None, **fields) -> Manifest:
    """Store `tar` as a snapshot of `volume` (pieces of 4 KiB, as a stream arrives);
    `record`: a parent record the writer fills too (not published)."""
    when = when or datetime.now(timezone.utc)
    snapshot = new_snapshot_id(volume, when)
    with repo.snapshot_writer(snapshot) as writer:
        packed = writer.pack(chunked(tar, 4096), 3, record=record)
    manifest = make_manifest(snapshot, utc_iso(when, "milliseconds"), archive=writer.archive,
                             bytes=packed.bytes, stored_bytes=packed.stored_bytes,
                             sha256=packed.sha256, entries=packed.entries,
                             **writer.fields(packed), **fields)
    repo.commit(manifest)
    return manifest


def restored(repo: Repository, manifest: Manifest) -> bytes:
    return b"".join(repo.unpacker(manifest).chunks())


def read_until_error(repo: Repository, manifest: Manifest) -> tuple[bytes, Exception | None]:
    """What a restore would have been given before the snapshot's reader raised."""
    seen = io.BytesIO()
    try:
        for piece in repo.unpacker(manifest).chunks():
            seen.write(piece)
    except Exception as e:  # the caller judges which
        return seen.getvalue(), e
    return seen.getvalue(), None


def list_key(manifest: Manifest) -> str:
    return f"snapshots/{manifest.volume}/{manifest.archive}"


def chunk_list(repo: Repository, manifest: Manifest) -> list[tuple[str, int]]:
    """The snapshot's data blobs: its chunk list, or its data tree's leaves."""
    if manifest.tree:
        return list(walk(repo.blobs, TreeRoot.from_fields(manifest.data, "test")))
    with repo.backend.open_read(list_key(manifest)) as reader:
        return list(iter_list(reader))


def blob_count(manifest: Manifest) -> int:
    """How many data blobs (chunks) a snapshot lists, in a list or a tree."""
    return manifest.data["blobs"] if manifest.tree else manifest.chunks


def catalog_list(repo: Repository, manifest: Manifest) -> list[tuple[str, int]]:
    """The chunks holding the snapshot's catalogue."""
    key = repo.catalog_key(manifest.snapshot, chunked=True)
    with repo.backend.open_read(key) as reader:
        return list(iter_list(reader))


def chunk_files(root: Path) -> set[str]:
    return {p.name for p in (root / "chunks").rglob("*") if p.is_file()}

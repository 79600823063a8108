"""Prune's last step in a chunked repository: remove the chunks no chunk list names.

Run under the exclusive lock, after the snapshots to remove and old orphaned lists are
gone. Every chunk list under snapshots/ counts, with or without its manifest (a young
orphan is kept by prune, and so are its chunks). If any list cannot be read, or an entry
under snapshots/ is not readable, nothing is swept: a chunk is removed only when it is
certain that nothing names it. Unreferenced chunks younger than `min_age` are kept too
(defence in depth against a writer whose lock was broken as stale).

Memory: one set of referenced ids, about 100 bytes per distinct chunk (100 MB per
million chunks, ~1.2 TiB of unique data at the default chunk size).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Collection, ContextManager

from volbackup.errors import IntegrityError, RepositoryError
from volbackup.repo import catalogtree, trees
from volbackup.repo.backends import Backend, BlobNotFound
from volbackup.repo.catalogs import LIST_SUFFIX as CATALOG_LIST_SUFFIX
from volbackup.repo.chunked import LIST_SUFFIX, iter_list
from volbackup.repo.blobstore import BlobStore, LooseChunkStore
from volbackup.repo.config import MAX_CHUNK
from volbackup.repo.manifest import Manifest
from volbackup.repo.trees import TreeRoot
from volbackup.repo.chunkstore import StoredChunk, chunk_key

SNAPSHOTS = "snapshots/"
_LIST_KEY = re.compile(  # chunk lists, and the catalogues' lists of their pieces
    rf"{SNAPSHOTS}[^/]+/[^/]+({re.escape(LIST_SUFFIX)}|{re.escape(CATALOG_LIST_SUFFIX)})")
_MANIFEST_KEY = re.compile(rf"{SNAPSHOTS}[^/]+/[^/]+\.json")
BATCH = 1000   # chunks removed between two progress updates (one S3 DeleteObjects call)

# `progress(label, total)` -> a context giving `update(n)` (volbackup.ops.outcome's protocol).
ProgressFactory = Callable[[str, "int | None"], ContextManager[Callable[[int], None]]]


def _no_progress(label: str, total: int | None) -> ContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


@dataclass
class ChunkSweep:
    stored: int = 0           # chunks in the repository before the sweep
    referenced: int = 0       # distinct chunks the chunk lists name
    removed: int = 0          # (or would be, in a dry run)
    removed_bytes: int = 0
    too_young: int = 0        # unreferenced, kept: younger than the leftover age
    failed: int = 0
    problems: list[str] = field(default_factory=list)  # why nothing was swept, or left alone

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def referenced_ids(backend: Backend, gone: Collection[str], result: ChunkSweep,
                   trees_in: BlobStore | None = None) -> set[bytes] | None:
    """The ids every chunk list and catalogue list under snapshots/ names (but those in
    `gone`); None, with the reason in `result.problems`, if any cannot be read: then
    nothing may be swept. `trees_in` (a packed repository's store): every manifest is
    read too, and a tree snapshot's trees walked (tree_ids)."""
    gone = set(gone)
    referenced: set[bytes] = set()
    walked: set[bytes] = set()
    for info in backend.list(SNAPSHOTS):
        if info.error:
            result.problems.append(f"no chunk swept: {info.error}")
            return None
        if trees_in is not None and _MANIFEST_KEY.fullmatch(info.key) \
                and info.key not in gone:
            problem = tree_ids(backend, trees_in, info.key, referenced, walked)
            if problem:
                result.problems.append(f"no chunk swept: {problem}")
                return None
            continue
        if not _LIST_KEY.fullmatch(info.key) or info.key in gone:
            continue
        try:
            with backend.open_read(info.key) as reader:
                for chunk_id, _ in iter_list(reader):
                    referenced.add(bytes.fromhex(chunk_id))
        except (IntegrityError, RepositoryError) as e:
            result.problems.append(f"no chunk swept: chunk list {info.key}: {e}")
            return None
    result.referenced = len(referenced)
    return referenced


def tree_ids(backend: Backend, store: BlobStore, key: str, referenced: set[bytes],
             walked: set[bytes]) -> str | None:
    """Add to `referenced` every id the manifest at `key` names through its trees (a tree
    snapshot's data and catalogue: pieces and leaves; nothing for a list snapshot, whose
    lists are read as lists). Any manifest counts, authentic or not (a forged one only
    keeps more). What went wrong, if the manifest or a tree cannot be read: a manifest
    that cannot be read may be a tree snapshot whose blobs nothing else names."""
    try:
        manifest = Manifest.from_json(backend.read_bytes(key), key)
    except BlobNotFound:
        return None     # removed since it was listed
    except RepositoryError as e:
        return f"manifest {key} cannot be read: {e}"
    if not manifest.tree:
        return None
    try:
        for tree_root, longest in (
                (TreeRoot.from_fields(manifest.data, key), MAX_CHUNK),
                (catalogtree.check_field(manifest.catalog, key), catalogtree.MAX_PIECE)):
            referenced.update(trees.referenced(store, tree_root, walked, longest))
    except (IntegrityError, RepositoryError) as e:
        return f"a tree of snapshot {manifest.snapshot} cannot be read: {e}"
    return None


def sweep(backend: Backend, store: LooseChunkStore, min_age: timedelta, now: datetime,
          dry_run: bool, gone: Collection[str] = (),
          progress: ProgressFactory = _no_progress) -> ChunkSweep:
    """`gone`: keys of chunk lists to count as removed, in a dry run those a real prune
    would have removed before sweeping (else a dry run would say no chunk is freed)."""
    result = ChunkSweep()
    referenced = referenced_ids(backend, gone, result)
    if referenced is None:
        return result
    doomed: list[StoredChunk] = []
    for chunk in store.listing():
        if isinstance(chunk, str):
            result.problems.append(chunk)
            continue
        result.stored += 1
        if bytes.fromhex(chunk.id) in referenced:
            continue
        if chunk.modified is not None and now - chunk.modified < min_age:
            result.too_young += 1
            continue
        doomed.append(chunk)
    result.removed = len(doomed)
    result.removed_bytes = sum(c.size for c in doomed)
    if dry_run or not doomed:
        return result
    sizes = {chunk_key(c.id): c.size for c in doomed}
    keys = list(sizes)
    with progress("removing chunks", result.removed_bytes) as update:
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            for key, message in backend.delete_many(batch):
                result.failed += 1
                result.removed -= 1
                result.removed_bytes -= sizes[key]
                if len(result.problems) < 10:
                    result.problems.append(f"{key}: not removed: {message}")
            update(sum(sizes[key] for key in batch))
    return result

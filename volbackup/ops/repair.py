"""`volbackup repair-index`: rebuild a packed repository's index from its packs
(volbackup.repo.packrepair), under the exclusive lock a prune takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from volbackup.errors import RepositoryError
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.repo import locking
from volbackup.repo.packrepair import IndexRebuild, rebuild_index
from volbackup.repo.repository import Repository


@dataclass(frozen=True)
class RepairIndexOptions:
    """`repair-index --help` describes each."""

    read_all_packs: bool = False    # ignore the old index: every pack's trailer is read
    dry_run: bool = False           # write and remove nothing (still under the lock)
    lock_wait: float = 60.0         # seconds


def repair_index(repo: Repository, options: RepairIndexOptions,
                 on_break: Callable[[locking.LockInfo, str], None] = lambda lock, why: None,
                 progress: ProgressFactory = no_progress) -> IndexRebuild:
    if not repo.layout.packed:
        raise RepositoryError(f"repository {repo.describe()} is not packed: it has no index "
                              f"to repair")
    repo.check_secrets(reading=False)       # trailers and index objects are MACed
    with repo.lock(locking.EXCLUSIVE, options.lock_wait, "repair-index", on_break):
        return rebuild_index(repo.blobs, options.read_all_packs, options.dry_run, progress)

"""Shell completion of volume names (asked of the engine) and snapshot ids (asked of the
repository), for click's `shell_complete=`.

Completion runs on every Tab: it must answer at once and never print anything but
candidates. Each lookup runs in a daemon thread given LOOKUP_SECONDS; an engine or
repository that is unreachable, slow or broken yields no candidates, never an error.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

LOOKUP_SECONDS = 3.0
REPO_ENV = "VOLBACKUP_REPO"


def _bounded(lookup: Callable[[], list[str]]) -> list[str]:
    """What `lookup()` returns within LOOKUP_SECONDS; [] if it fails or takes longer."""
    found: list[list[str]] = []

    def run() -> None:
        try:
            found.append(lookup())
        except BaseException:  # anything: completion prints candidates or nothing
            pass

    thread = threading.Thread(target=run, name="volbackup-complete", daemon=True)
    thread.start()
    thread.join(LOOKUP_SECONDS)
    return found[0] if found else []


def _matching(names: list[str], incomplete: str) -> list[str]:
    return sorted({n for n in names if n.startswith(incomplete)})


def _engine_volumes() -> list[str]:
    from volbackup.docker.engine import Engine

    return [v.name for v in Engine.connect(timeout=LOOKUP_SECONDS).volumes()]


def _repository(ctx) -> str | None:
    return (ctx.params.get("repo") if ctx is not None else None) or os.environ.get(REPO_ENV)


def _snapshot_refs(url: str) -> list[str]:
    from volbackup.repo.repository import Repository

    ids = Repository.open(url).snapshot_ids()
    return ids + [i.split("@", 1)[0] for i in ids]


def _repo_volumes(url: str) -> list[str]:
    from volbackup.repo.repository import Repository

    return Repository.open(url).volumes()


def volumes(ctx, param, incomplete: str) -> list[str]:
    """The engine's volume names that start with `incomplete`."""
    return _matching(_bounded(_engine_volumes), incomplete)


def snapshots(ctx, param, incomplete: str) -> list[str]:
    """Snapshot ids in the repository of -r (or $VOLBACKUP_REPO), and the volume names
    that stand for their newest snapshot, that start with `incomplete`."""
    url = _repository(ctx)
    return _matching(_bounded(lambda: _snapshot_refs(url)), incomplete) if url else []


def repo_volumes(ctx, param, incomplete: str) -> list[str]:
    """Volumes with snapshots in the repository of -r (or $VOLBACKUP_REPO)."""
    url = _repository(ctx)
    return _matching(_bounded(lambda: _repo_volumes(url)), incomplete) if url else []

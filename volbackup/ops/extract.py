"""Extract a snapshot (or part of it) onto a directory of this host.

For an operator who wants a file or a tree back as files, not as a volume. The target
directory must be missing (it is created, mode 0700) or empty: extracting over existing
files could follow a symlink already there out of the directory, and would mix two
states. Nothing can land outside it whatever the repository holds: the stream is
checked as it is released (volbackup.stream.tarstream.TarWalker refuses absolute names,
`..`, members under an earlier symlink, hard links to symlinks) before GNU tar sees a
member, and GNU tar refuses the same on its own. A failed extract leaves the directory
as it was found (created: removed; empty: emptied).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from volbackup.docker import direct
from volbackup.errors import TargetNotEmpty
from volbackup.ops.outcome import ProgressFactory, no_progress
from volbackup.ops.reading import reader_for
from volbackup.ops.restore import resolve_ref
from volbackup.repo.repository import Repository
from volbackup.stream.catalog import Selection


@dataclass
class ExtractResult:
    repository: str
    snapshot: str
    directory: str
    partial: bool
    created: bool          # the directory did not exist before
    bytes: int             # tar bytes extracted
    seconds: float


def extract(repo: Repository, ref: str, directory: str, selection: Selection | None = None,
            host: str | None = None, progress: ProgressFactory = no_progress) -> ExtractResult:
    """Extract snapshot `ref` (an id or a volume name, as restore takes it) into
    `directory`, all of it or what `selection` selects (with the directories above)."""
    started = time.monotonic()
    repo.check_secrets(reading=True)
    manifest = repo.reveal(resolve_ref(repo, ref, host))
    reader = reader_for(repo, manifest, selection)  # NotFound before the directory is made
    directory = os.path.abspath(directory)
    created = _prepare(directory)
    try:
        with progress(directory, reader.total) as update:
            unpacker = reader.unpacker(update)
            direct.extract_here(directory, unpacker.chunks())
    except BaseException:
        _undo(directory, created)
        raise
    return ExtractResult(repo.describe(), manifest.snapshot, directory,
                         reader.entries is not None, created, unpacker.walker.bytes,
                         round(time.monotonic() - started, 3))


def _prepare(directory: str) -> bool:
    """Make sure `directory` is an empty directory; True if it was made here."""
    try:
        os.mkdir(directory, 0o700)
        return True
    except FileExistsError:
        pass
    except OSError as e:
        raise TargetNotEmpty(f"cannot create {directory}: {e.strerror}") from None
    if os.path.islink(directory) or not os.path.isdir(directory):
        raise TargetNotEmpty(f"{directory} exists and is not a directory; nothing was "
                             f"extracted")
    try:
        if os.listdir(directory):
            raise TargetNotEmpty(f"{directory} is not empty; nothing was extracted (extract "
                                 f"into a new or empty directory, then copy what you need)")
    except OSError as e:
        raise TargetNotEmpty(f"cannot read {directory}: {e.strerror}") from None
    return False


def _undo(directory: str, created: bool) -> None:
    """Take back what a failed extract left: all of it, since the directory was empty."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass

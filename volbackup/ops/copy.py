"""`volbackup copy`: snapshots from one repository into another, ids and fields kept.

Three ways, chosen per pair of repositories:
- both packed, naming blobs alike (both plain, or both encrypted under the same key): a
  tree snapshot's trees are walked in the source and the blobs the target's index lacks
  are sent, each checked against its id, as they are stored where both seal alike
  (Repository.receive_blobs, volbackup.repo.packcopy);
- both chunked and plain (chunk names are the sha256 of the plaintext in both): the chunk
  list is copied with the chunks the target lacks, as they are stored, each checked
  against its name, the list against the manifest (Repository.receive_chunks);
- anything else (archive and chunked, either side encrypted): the source's checked tar
  stream is packed into the target as a backup would be (deduplicated against it), and
  the tar bytes, entries and tar sha256 must come out as the source's manifest says.

Either way, a chunk a plain chunked target holds already is read back and checked before the
snapshot relies on it, and replaced if it is not what its name says (damaged, or planted):
a snapshot reported copied restores from the target. An encrypted target's chunks open only
with an identity, which copy does not take for the target: they are trusted by name
(docs/security.md).

The manifest is written last, so a copy that fails or is killed leaves no snapshot (only
chunks, which the next copy reuses, or prune sweeps). A snapshot whose id the target holds
already is checked to be the same one and skipped: a copy run again copies nothing; a
different snapshot under the same id is a conflict (TargetNotEmpty, exit 8).
Locks: shared on both repositories (as a backup takes), the source's first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from volbackup.errors import (IntegrityError, KeyProblem, NotFound, RepositoryError,
                              TargetNotEmpty)
from volbackup.ops.outcome import Outcome, ProgressFactory, no_progress, raise_for_failures
from volbackup.repo import locking
from volbackup.repo.manifest import ARCHIVE_VERSION, Manifest
from volbackup.repo.repository import Repository


@dataclass
class Choice:
    """Which snapshots to copy: `refs` (ids, or volume names for their newest), or every
    snapshot (`all`), of `volumes` if given; `host` narrows either."""

    refs: list[str]
    all: bool = False
    volumes: list[str] | None = None
    host: str | None = None


@dataclass
class CopyOutcome(Outcome):
    how: str | None = None         # "blobs" (missing blobs), "chunks" (the list and
    #                                missing chunks) or "stream"
    bytes: int = 0                 # tar bytes of the snapshot
    chunks: int = 0                # in its chunk lists, data and catalogue (chunked target);
    #                                blobs: in its trees, tree pieces included
    chunks_sent: int = 0           # of them, written to the target
    chunks_present: int = 0        # of them, held by the target already (not sent)
    chunks_replaced: int = 0       # of those sent, held by the target with wrong bytes
    bytes_sent: int = 0            # stored bytes written to the target
    bytes_present: int | None = None  # plain bytes of the chunks present (stream: unknown)
    objects_written: int = 0       # chunks, lists or archive and catalogue, manifest; blobs:
    #                                packs, index objects, manifest
    #                                (stream path: the catalogue's new pieces not counted)
    seconds: float = 0.0


@dataclass
class CopyResult:
    source: str
    target: str
    snapshots: list[CopyOutcome]

    def raise_for_failures(self) -> None:
        raise_for_failures(self.snapshots, "snapshots")


def copy(source: Repository, target: Repository, choice: Choice, lock_wait: float = 60.0,
         allow_plain_target: bool = False, progress: ProgressFactory = no_progress,
         on_break: Callable = lambda lock, why: None) -> CopyResult:
    """Copy the chosen snapshots from `source` into `target`. Bad input (an unknown
    snapshot, missing secrets, a target that is no repository, or the source itself)
    raises before anything is written to the target."""
    if source.describe() == target.describe():
        raise TargetNotEmpty(f"{target.describe()} is the source repository itself; copy "
                             f"into another one")
    source.check_secrets(reading=True)
    target.check_secrets(reading=False)
    target.require_repository()
    if not target.initialised():
        raise RepositoryError(
            f"{target.describe()} is not a repository yet: make it with `volbackup init -r "
            f"{target.describe()}` (or copy into one that holds snapshots); nothing was copied")
    if source.keyring is not None and target.keyring is None and not allow_plain_target:
        raise TargetNotEmpty(
            f"{source.describe()} is encrypted and {target.describe()} is not: its snapshots "
            f"would be stored there in the clear; copy into an encrypted repository "
            f"(`volbackup init --encrypt-to`), or give --allow-plain-target")
    with source.lock(locking.SHARED, lock_wait, "copy", on_break) as source_lock:
        chosen, problems = _chosen(source, choice)
        outcomes = [CopyOutcome(p.volume, "failed", p.snapshot).failure(
            IntegrityError(p.message) if p.snapshot else RepositoryError(p.message))
            for p in problems]
        with target.lock(locking.SHARED, lock_wait, "copy", on_break):
            if source.same_store(target, source_lock):
                raise TargetNotEmpty(f"{target.describe()} is the source repository "
                                     f"{source.describe()} under another name; copy into "
                                     f"another one")
            for manifest in chosen:
                outcome = CopyOutcome(manifest.volume, "copied", manifest.snapshot)
                try:
                    _copy_one(source, target, manifest, outcome, progress)
                except Exception as e:  # any error: the next snapshot is still copied
                    outcome.failure(e)
                outcomes.append(outcome)
    return CopyResult(source.describe(), target.describe(), outcomes)


def _chosen(source: Repository, choice: Choice) -> tuple[list[Manifest], list]:
    """The snapshots chosen, each once, oldest first; raises NotFound for a ref that is
    no snapshot (before anything is copied), or when the choice matches none."""
    if choice.refs:
        found = {m.snapshot: m for m in (source.resolve(ref, choice.host) for ref in choice.refs)}
        return sorted(found.values(), key=lambda m: (m.created, m.snapshot)), []
    listing = source.snapshots(host=choice.host)
    wanted = set(choice.volumes or ())
    chosen = [m for m in listing.snapshots if not wanted or m.volume in wanted]
    problems = [p for p in listing.problems + listing.unauthentic
                if not wanted or p.volume in wanted]
    if not chosen and not problems:
        source.require_repository()
        what = (f" of volume {', '.join(sorted(wanted))}" if wanted else "") + \
               (f" from host {choice.host}" if choice.host is not None else "")
        raise NotFound(f"no snapshots{what} in repository {source.describe()}")
    return chosen, problems


def _copy_one(source: Repository, target: Repository, manifest: Manifest,
              outcome: CopyOutcome, progress: ProgressFactory) -> None:
    started = time.monotonic()
    outcome.bytes = manifest.bytes
    try:
        present = target.load(manifest.snapshot)
    except NotFound:
        present = None
    if present is not None:
        why = _differs(manifest, source, present, target)
        if why:
            raise TargetNotEmpty(f"{target.describe()} holds another snapshot with the id "
                                 f"{manifest.snapshot} ({why}); it was left as it is")
        outcome.status, outcome.message = "skipped", f"already in {target.describe()}"
        return
    with progress(manifest.snapshot, manifest.bytes) as update:
        if manifest.tree and target.copies_blobs_from(source):
            blobs, whole = target.receive_blobs(source, manifest, update)
            target.commit(whole)
            outcome.how, outcome.chunks = "blobs", blobs.blobs
            outcome.chunks_sent, outcome.bytes_sent = blobs.sent, blobs.sent_bytes
            outcome.chunks_present, outcome.bytes_present = blobs.present, blobs.present_bytes
            outcome.chunks_replaced = blobs.replaced
            outcome.objects_written = blobs.packs + blobs.index_objects + 1
        elif target.names_chunks_as(source) and manifest.chunked and not manifest.tree:
            copied = target.receive_chunks(source, manifest, update)
            target.commit(manifest)
            outcome.how, outcome.chunks = "chunks", copied.chunks
            outcome.chunks_sent, outcome.bytes_sent = copied.sent, copied.sent_bytes
            outcome.chunks_replaced = copied.replaced
            outcome.chunks_present = copied.chunks - copied.sent
            outcome.bytes_present = copied.bytes - copied.sent_plain
            outcome.objects_written = copied.sent + copied.lists + 1
        else:
            _stream(source, target, manifest, outcome, update)
    outcome.seconds = round(time.monotonic() - started, 3)


def _stream(source: Repository, target: Repository, manifest: Manifest,
            outcome: CopyOutcome, update: Callable[[int], None]) -> None:
    """The source's checked tar stream, packed into the target as a backup would be."""
    whole = source.reveal(manifest)
    unpacker = source.unpacker(whole, update)
    with target.snapshot_writer(whole.snapshot) as writer:
        packed = writer.pack(unpacker.chunks(), whole.level, check_existing=True)
        # Checked before the block ends: a mismatch leaves no list or archive behind.
        made = (packed.bytes, packed.entries)
        if made != (whole.bytes, whole.entries):
            raise IntegrityError(f"snapshot {whole.snapshot} copied as {made[0]} tar bytes in "
                                 f"{made[1]} entries, the source's manifest says "
                                 f"{whole.bytes} in {whole.entries}")
        tar_sha256 = getattr(packed, "tar_sha256", None)
        if whole.tar_sha256 and tar_sha256 and tar_sha256 != whole.tar_sha256:
            raise IntegrityError(f"snapshot {whole.snapshot} copied with tar sha256 "
                                 f"{tar_sha256}, the source's manifest says {whole.tar_sha256}")
    layout = {"layout": "archive", "format_version": ARCHIVE_VERSION, "chunks": None,
              "new_chunks": None, "tar_sha256": None, "data": None, **writer.fields(packed)}
    target.commit(replace(whole, archive=writer.archive, stored_bytes=packed.stored_bytes,
                          sha256=packed.sha256, encrypted=False, sealed=None, mac=None,
                          **layout))
    chunked = layout["layout"] == "chunked"
    outcome.how, outcome.bytes_sent = "stream", packed.stored_bytes
    outcome.chunks = layout["chunks"] or (layout["data"] or {}).get("blobs", 0)
    outcome.chunks_sent = layout["new_chunks"] or 0
    outcome.chunks_present = max(0, outcome.chunks - outcome.chunks_sent)
    outcome.chunks_replaced = getattr(packed, "replaced_chunks", 0)
    # the data's chunks (or archive), the catalogue's list (or blob), the manifest; the
    # catalogue's new pieces are not counted on this path (its writer does not say)
    outcome.objects_written = (outcome.chunks_sent if chunked else 1) \
        + (1 if layout.get("catalog") else 0) + 1


def _differs(manifest: Manifest, source: Repository, present: Manifest,
             target: Repository) -> str | None:
    """Why the target's snapshot `present` is not the source's `manifest` (None: it is
    the same). Compared: what both manifests show; the sha256 of the tar stream where
    both hold it in the clear, and of the chunk list where both lists are the same."""
    for name in ("volume", "created", "host", "bytes", "entries"):
        if getattr(manifest, name) != getattr(present, name):
            return f"its {name} is {getattr(present, name)!r}, not {getattr(manifest, name)!r}"
    if not (manifest.encrypted or present.encrypted) and manifest.tar_sha256 \
            and present.tar_sha256 and manifest.tar_sha256 != present.tar_sha256:
        return "its tar stream has another sha256"
    if target.names_chunks_as(source) and manifest.chunked and present.chunked \
            and not (manifest.tree or present.tree) and manifest.sha256 != present.sha256:
        return "its chunk list has another sha256"
    if present.encrypted and target.keyring is not None:
        try:
            target.keyring.key().verify(present.signed_bytes(), present.mac,
                                        f"snapshot {present.snapshot} in the target")
        except (IntegrityError, KeyProblem) as e:
            return str(e)
    return None

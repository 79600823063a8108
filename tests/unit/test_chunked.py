"""Chunked snapshots on a real LocalBackend: round trips, deduplication, and every way a
stored chunk, chunk list or manifest can be wrong (each refused before the end of the
tar stream is released)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace

import pytest
import zstandard

from tests.unit.chunkrepos import (AVG, backup, chunk_files, chunk_list, chunked_repo,
                                   list_key, read_until_error, restored, volume_tar)
from tests.unit.tars import end_of_members
from volbackup.errors import IntegrityError
from volbackup.repo.blobstore import KnownChunks, LooseChunkStore
from volbackup.repo.chunked import pack
from volbackup.repo.crypto import PlainChunks
from volbackup.repo.chunkstore import chunk_key, open_frame
from volbackup.repo.config import RepoConfig


@pytest.fixture
def repo(tmp_path):
    return chunked_repo(tmp_path / "repo")


@pytest.fixture
def tar():
    return volume_tar()


def test_round_trip_gives_back_the_tar_stream(repo, tar):
    manifest = backup(repo, tar)
    assert manifest.chunked and manifest.format_version == 2
    assert manifest.chunks == manifest.new_chunks == len(chunk_list(repo, manifest)) > 50
    assert manifest.bytes == len(tar) and manifest.entries == 3
    assert restored(repo, manifest) == tar
    assert repo.unpacker(manifest).chunks  # the same reader for both layouts
    assert sum(length for _, length in chunk_list(repo, manifest)) == len(tar)


def test_second_backup_of_the_same_stream_writes_no_chunk(repo, tar, tmp_path):
    first = backup(repo, tar)
    before = chunk_files(tmp_path / "repo")
    second = backup(repo, tar)
    assert second.new_chunks == 0 and second.stored_bytes == 0
    assert second.chunks == first.chunks
    assert chunk_files(tmp_path / "repo") == before
    assert restored(repo, second) == tar


def test_an_edit_in_the_middle_writes_only_a_few_chunks(repo, tar):
    first = backup(repo, tar)
    edited = volume_tar(edit_at=500_000)
    second = backup(repo, edited)
    assert 1 <= second.new_chunks <= 3, second.new_chunks
    assert second.new_chunks < first.chunks // 20
    assert restored(repo, second) == edited and restored(repo, first) == tar


def test_identical_data_of_two_volumes_is_stored_once(repo, tar, tmp_path):
    backup(repo, tar, volume="one")
    other = backup(repo, tar, volume="two")
    assert other.new_chunks == 0
    assert len(chunk_files(tmp_path / "repo")) == other.chunks + other.catalog["chunks"]


# -- damage: each is an IntegrityError naming it, and the end of the stream never released


def refused(repo, manifest, tar, *words):
    """Assert the snapshot is refused with a message holding `words`, and that what was
    released is a strict prefix of the tar stream that stops before its end marker."""
    seen, error = read_until_error(repo, manifest)
    assert isinstance(error, IntegrityError), error
    for word in words:
        assert word in str(error), str(error)
    assert tar.startswith(seen) and len(seen) <= end_of_members(tar) < len(tar)
    return seen


def middle_chunk(repo, manifest) -> str:
    entries = chunk_list(repo, manifest)
    return entries[len(entries) // 2][0]


def test_a_flipped_byte_in_a_chunk(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    victim = middle_chunk(repo, manifest)
    path = tmp_path / "repo" / chunk_key(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    seen = refused(repo, manifest, tar, victim)
    assert len(seen) < len(tar) // 2 + AVG * 16   # stopped near the chunk, not at the end


def test_a_missing_chunk(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    victim = middle_chunk(repo, manifest)
    (tmp_path / "repo" / chunk_key(victim)).unlink()
    refused(repo, manifest, tar, victim, "missing")


def test_the_last_chunk_missing_still_holds_back_the_end(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    victim = chunk_list(repo, manifest)[-1][0]
    (tmp_path / "repo" / chunk_key(victim)).unlink()
    refused(repo, manifest, tar, victim, "missing")


def test_a_chunk_replaced_by_another_valid_chunk(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    entries = chunk_list(repo, manifest)
    victim, other = entries[len(entries) // 2][0], entries[len(entries) // 2 + 1][0]
    root = tmp_path / "repo"
    (root / chunk_key(victim)).write_bytes((root / chunk_key(other)).read_bytes())
    refused(repo, manifest, tar, victim)


def test_a_chunk_replaced_by_a_valid_frame_of_the_same_length(repo, tar, tmp_path):
    """Same length, valid zstd, wrong content: only the sha256 can tell."""
    manifest = backup(repo, tar)
    victim, length = chunk_list(repo, manifest)[5]
    fake = zstandard.ZstdCompressor(write_checksum=True).compress(b"\0" * length)
    (tmp_path / "repo" / chunk_key(victim)).write_bytes(fake)
    refused(repo, manifest, tar, victim, "does not match its name")


def test_a_chunk_with_bytes_after_its_frame(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    victim = middle_chunk(repo, manifest)
    path = tmp_path / "repo" / chunk_key(victim)
    path.write_bytes(path.read_bytes() + b"junk")
    refused(repo, manifest, tar, victim)


def rewrite_list(repo, manifest, change) -> None:
    lines = [f"{c} {n}\n".encode() for c, n in chunk_list(repo, manifest)]
    repo.backend.write_bytes(list_key(manifest), b"".join(change(lines)))


def test_a_frame_refused_leaves_the_threads_decompressor_sound():
    """open_frame keeps one zstd decompressor a thread, not one a blob: a frame it refused
    (a flipped byte, cut short, bytes after it) must not spoil the next it reads; a slice
    of a larger read (memoryview, as a packed store gives it) is read as the bytes are."""
    data = b"".join(i.to_bytes(4, "big") for i in range(16_384))
    good = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    chunk_id, name_of = hashlib.sha256(data).hexdigest(), PlainChunks().chunk_id
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    for bad in (bytes(flipped), good[:-4], good + b"\0"):
        with pytest.raises(IntegrityError, match=chunk_id):
            open_frame(bad, chunk_id, len(data), name_of)
        in_a_read = memoryview(b"before" + good + b"after")[6:6 + len(good)]
        assert open_frame(in_a_read, chunk_id, len(data), name_of) == data


def test_a_chunk_list_with_a_bad_line(repo, tar):
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: ls[:10] + [b"not a chunk 12\n"] + ls[11:])
    refused(repo, manifest, tar, "chunk list has an invalid line", "not a chunk")


@pytest.mark.parametrize("line", [
    b"A" * 64 + b" 100\n",                      # upper case
    b"a" * 64 + b" 0100\n",                     # leading zero
    b"a" * 64 + b" 0\n",                        # empty chunk
    b"a" * 64 + b" " + str(64 << 20).encode() + b"\n",  # longer than any chunk may be
    b"a" * 64 + b" 100",                        # no newline at the end
    b"a" * 64 + b"  100\n",
    b"a" * 100_000 + b"\n",                     # a very long line
])
def test_chunk_list_lines_that_are_refused(repo, tar, line):
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: ls[:3] + [line])
    refused(repo, manifest, tar, "invalid line")


def test_a_chunk_list_with_an_extra_line(repo, tar):
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: ls + [ls[0]])
    refused(repo, manifest, tar, "chunk list")


def test_a_chunk_list_with_a_line_dropped(repo, tar):
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: ls[:-1])
    refused(repo, manifest, tar, "chunk list")


def test_a_chunk_list_with_a_line_dropped_in_the_middle(repo, tar):
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: ls[:20] + ls[21:])
    refused(repo, manifest, tar)


def test_a_chunk_list_with_a_length_changed(repo, tar):
    manifest = backup(repo, tar)
    victim, length = chunk_list(repo, manifest)[7]
    rewrite_list(repo, manifest, lambda ls: ls[:7] + [f"{victim} {length + 1}\n".encode()]
                 + ls[8:])
    refused(repo, manifest, tar, "chunk list")


def test_a_chunk_whose_length_differs_from_a_matching_list(repo, tar, tmp_path):
    """The list is the manifest's, the chunk holds another length: named by the chunk."""
    manifest = backup(repo, tar)
    victim, length = chunk_list(repo, manifest)[7]
    bigger = zstandard.ZstdCompressor(write_checksum=True).compress(b"\0" * (length + 1))
    (tmp_path / "repo" / chunk_key(victim)).write_bytes(bigger)
    refused(repo, manifest, tar, victim, f"holds {length + 1} bytes, the chunk list says {length}")


def test_two_chunks_swapped_in_the_list(repo, tar):
    """Every chunk valid, the list's lines valid: only the list's sha256 tells, and it is
    checked before the first byte is released."""
    manifest = backup(repo, tar)
    rewrite_list(repo, manifest, lambda ls: [ls[1], ls[0]] + ls[2:])
    assert refused(repo, manifest, tar, "chunk list sha256") == b""


def test_a_missing_chunk_list(repo, tar):
    manifest = backup(repo, tar)
    repo.backend.delete(list_key(manifest))
    seen, error = read_until_error(repo, manifest)
    assert seen == b"" and "chunk list" in str(error) and "missing" in str(error)


def test_a_manifest_with_a_wrong_tar_sha256(repo, tar):
    manifest = replace(backup(repo, tar), tar_sha256="0" * 64)
    refused(repo, manifest, tar, "tar stream sha256", "0" * 64)


def test_a_manifest_with_a_wrong_list_sha256(repo, tar):
    manifest = replace(backup(repo, tar), sha256="0" * 64)
    refused(repo, manifest, tar, "chunk list sha256")


@pytest.mark.parametrize("field, delta", [("chunks", -1), ("chunks", 1), ("bytes", -1),
                                          ("bytes", 1)])
def test_a_manifest_whose_counts_disagree_with_the_list(repo, tar, field, delta):
    manifest = backup(repo, tar)
    manifest = replace(manifest, **{field: getattr(manifest, field) + delta})
    refused(repo, manifest, tar, "chunk list")


def test_drain_raises_on_damage(repo, tar, tmp_path):
    manifest = backup(repo, tar)
    (tmp_path / "repo" / chunk_key(middle_chunk(repo, manifest))).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        repo.unpacker(manifest).drain()


# -- KnownChunks: a chunk two writers want is written once, and named only once durable


class BlockingStore:
    """ChunkObjects (our interface) whose put() waits for `release`; counts the puts."""

    def __init__(self, fail_first: bool = False):
        self.release = threading.Event()
        self.entered = threading.Event()
        self.durable: set[str] = set()
        self.puts: list[str] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()

    cipher = PlainChunks()

    def ids(self) -> set[bytes]:
        return set()

    def chunk_id(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def put(self, chunk_id, data, compressor) -> int:
        with self._lock:
            self.puts.append(chunk_id)
            first = len(self.puts) == 1
        self.entered.set()
        assert self.release.wait(10)
        if first and self.fail_first:
            raise OSError("disk full")
        self.durable.add(chunk_id)
        return len(data)


def claim_and_write(known, store, digest, out: list) -> None:
    try:
        if known.claim(digest):
            stored = 0
            try:
                stored = store.put(digest.hex(), b"x", None)
            finally:
                known.done(digest, stored > 0)
            out.append("wrote")
        else:
            out.append("durable" if digest.hex() in store.durable else "not yet durable")
    except OSError:
        out.append("failed")


@pytest.mark.parametrize("fail_first", [False, True])
def test_two_threads_claiming_one_chunk(fail_first):
    store = BlockingStore(fail_first)
    known = KnownChunks(store)
    digest = bytes(range(32))
    first, second = [], []
    a = threading.Thread(target=claim_and_write, args=(known, store, digest, first))
    a.start()
    assert store.entered.wait(10)
    b = threading.Thread(target=claim_and_write, args=(known, store, digest, second))
    b.start()
    time.sleep(0.3)
    assert b.is_alive() and second == []     # waiting for the writer, not trusting it
    store.release.set()
    a.join(10)
    b.join(10)
    if fail_first:  # the writer failed: the waiter writes it itself
        assert (first, second, store.puts) == (["failed"], ["wrote"], [digest.hex()] * 2)
    else:
        assert (first, second, store.puts) == (["wrote"], ["durable"], [digest.hex()])


def test_two_packs_of_one_stream_write_each_chunk_once(tmp_path, tar):
    store = BlockingStore()
    blobs = LooseChunkStore(store)
    config = RepoConfig.new(avg_size=AVG)
    lists = [open(tmp_path / f"list{i}", "wb") for i in range(2)]
    results = [None, None]

    def run(i):
        results[i] = pack([tar], lists[i], blobs, config)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    store.release.set()
    for t in threads:
        t.join(30)
    for f in lists:
        f.close()
    assert len(store.puts) == len(set(store.puts)) == results[0].chunks
    assert results[0].new_chunks + results[1].new_chunks == results[0].chunks
    assert (tmp_path / "list0").read_bytes() == (tmp_path / "list1").read_bytes()


def test_a_chunk_planted_before_a_backup_is_found_by_verify_naming_each_snapshot(
        tmp_path, capsys):
    """A plain backup trusts the chunk names it lists (docs/security.md): one planted (or
    damaged) under a chunk's name is shared by the next backup, which succeeds; `verify
    --all` must then fail every snapshot that uses it, and name each by its id (it named
    the volume only, the same for all)."""
    from volbackup.cli import main

    repo = chunked_repo(tmp_path / "repo")
    first = backup(repo, volume_tar(7))
    chunk_id, length = chunk_list(repo, first)[4]
    (tmp_path / "repo" / chunk_key(chunk_id)).write_bytes(
        zstandard.ZstdCompressor().compress(b"y" * length))  # a writer's, under that name
    repo.blobs.forget()  # a new run, a new listing
    second = backup(repo, volume_tar(7))
    other = backup(repo, volume_tar(8, size=100_000), volume="cache")
    assert (chunk_id, length) in chunk_list(repo, second)
    code = main(["verify", "--all", "-r", str(tmp_path / "repo")])
    out, err = capsys.readouterr()
    assert code == 3
    for bad in (first, second):
        assert f"volbackup: {bad.snapshot}: failed: chunk {chunk_id} does not match its name" \
            in err
    assert f"{other.snapshot}: ok" in out
    assert err.strip().splitlines()[-1].endswith(
        f"2 of 3 snapshots failed: {first.snapshot}, {second.snapshot}")


# -- a read that races a prune (restores take no lock)


def _prune_by_hand(repo, manifest, hold_lock: bool):
    """What a prune does to `manifest`'s snapshot, in its order (manifest, then chunk list
    and catalogue, then the chunks no list names), under its exclusive lock; the lock is
    left held when `hold_lock` (the prune still running when the reader looks)."""
    from datetime import datetime, timedelta, timezone

    from volbackup.repo import locking

    lock = locking.acquire(repo.backend, locking.EXCLUSIVE, 0, "prune")
    repo.remove_manifest(manifest.snapshot)
    repo.remove_archive(manifest)
    swept = repo.sweep_chunks(timedelta(0), datetime.now(timezone.utc) + timedelta(hours=1))
    assert swept.removed > 0
    if not hold_lock:
        lock.release()
    return lock


@pytest.mark.parametrize("hold_lock", [True, False], ids=["prune-running", "prune-done"])
def test_a_snapshot_pruned_while_it_is_read_is_said_so_not_damage(tmp_path, hold_lock):
    """A restore racing a prune failed with "chunk ... is missing", exit 6: read as
    damage. Deterministic: the prune runs between two pieces of the read."""
    from volbackup.errors import RemovedWhileRead

    repo = chunked_repo(tmp_path / "repo")
    old = backup(repo, volume_tar(3))
    backup(repo, volume_tar(4))      # the other snapshot keeps the repository in use
    manifest = repo.resolve(old.snapshot)   # listed, as restore does, then read
    pieces = repo.unpacker(manifest).chunks()
    next(pieces)
    lock = _prune_by_hand(repo, manifest, hold_lock)
    try:
        with pytest.raises(RemovedWhileRead) as raised:
            for _ in pieces:
                pass
    finally:
        if hold_lock:
            lock.release()
    message = str(raised.value)
    assert raised.value.exit_code == 20
    assert f"snapshot {old.snapshot} was removed" in message and "while it was read" in message
    assert "is missing" in message  # what was found gone
    if hold_lock:
        assert "by a prune that is running (exclusive lock of pid" in message
        assert "(prune)" in message
    else:
        assert "by a prune that has finished since" in message


def test_a_missing_chunk_of_a_snapshot_still_there_is_damage(tmp_path):
    """The manifest is still there: no prune took it (prune removes manifests first)."""
    repo = chunked_repo(tmp_path / "repo")
    manifest = backup(repo, volume_tar(3))
    chunk_id, _ = chunk_list(repo, manifest)[20]
    (tmp_path / "repo" / chunk_key(chunk_id)).unlink()
    from volbackup.repo import locking
    with locking.locked(repo.backend, locking.EXCLUSIVE, 0, "prune"):  # even during a prune
        with pytest.raises(IntegrityError, match=f"chunk {chunk_id} is missing") as raised:
            restored(repo, manifest)
    assert raised.value.exit_code == 6


def test_verify_of_a_snapshot_pruned_while_it_is_read_exits_20(tmp_path):
    """Through ops.verify, the prune run from the progress callback (mid-read)."""
    from contextlib import contextmanager

    from volbackup.ops.snapshots import verify

    repo = chunked_repo(tmp_path / "repo")
    old = backup(repo, volume_tar(3))
    backup(repo, volume_tar(4))
    done = []

    @contextmanager
    def progress(label, total):
        def update(n):
            if not done:
                done.append(_prune_by_hand(repo, repo.load(old.snapshot), hold_lock=False))
        yield update

    (check,) = verify(repo, [old.snapshot], progress=progress).snapshots
    assert done and check.failed and check.error.exit_code == 20, check.message
    assert "was removed from repository" in check.message

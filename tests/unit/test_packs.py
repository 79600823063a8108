"""The packed layout's formats and store: packs with trailers, index objects, the
in-memory index, and PackedBlobStore on a real LocalBackend. Every check on what is read
from the repository is shown failing on crafted input."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
from pathlib import Path

import pytest

from tests.unit.chunkrepos import (backup, blob_count, chunk_list, chunked_repo, read_until_error, restored,
                                   volume_tar)
from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.repo import packindex, packs
from volbackup.repo.backends import LocalBackend
from volbackup.repo.blobstore import CATALOG, DATA, TREE
from volbackup.repo.config import PACKED
from volbackup.repo.crypto import PlainChunks, RepositoryKey, SealedChunks
from volbackup.repo.packindex import BlobIndex, PackInfo
from volbackup.repo.packs import DATA_PACK, NO_SLOT, TREE_PACK, PackBuilder
from volbackup.repo.packstore import PackedBlobStore, load_index
from volbackup.repo.repository import Repository

PLAIN = PlainChunks()
KEY = RepositoryKey(b"k" * 32)


def sealed_cipher() -> SealedChunks:
    from pyrage import x25519
    identity = x25519.Identity.generate()
    return SealedChunks(KEY, [identity.to_public()], lambda: [identity])


def built(kind=DATA_PACK, mac=PLAIN.mac, records=((b"a" * 32, DATA, b"frame-a", 10),
                                                  (b"b" * 32, CATALOG, b"frame-bb", 20))):
    builder = PackBuilder(kind, mac)
    for blob_id, blob_kind, stored, plain in records:
        builder.add(blob_id, blob_kind, stored, plain, NO_SLOT)
    return builder.finish()


def trailer_of(data: bytes, mac=PLAIN.mac):
    length, flags = packs.parse_tail(data[-packs.TAIL_BYTES:], len(data), "pack")
    raw = data[len(data) - packs.TAIL_BYTES - length:len(data) - packs.TAIL_BYTES]
    return packs.parse_trailer(raw, len(data), flags, mac, "pack")


# -- the pack format

def test_a_pack_is_named_by_its_sha256_and_its_trailer_lists_its_records():
    pack_id, data = built()
    assert pack_id == hashlib.sha256(data).hexdigest()
    trailer = trailer_of(data)
    assert [(r.id, r.kind, r.offset, r.stored, r.plain) for r in trailer.records] == [
        (b"a" * 32, DATA, 0, 7, 10), (b"b" * 32, CATALOG, 7, 8, 20)]
    assert data[:15] == b"frame-aframe-bb" and trailer.slots == ()


def test_read_trailer_reads_a_long_trailer_in_two_ranged_reads(tmp_path):
    records = [(os.urandom(32), DATA, b"x" * 9, 9) for _ in range(2000)]   # 86 KB of trailer
    pack_id, data = built(records=records)
    backend = LocalBackend(str(tmp_path))
    backend.write_bytes(packs.pack_key(pack_id), data)
    trailer = packs.read_trailer(backend, pack_id, len(data), PLAIN.mac)
    assert [r.id for r in trailer.records] == [r[0] for r in records]


def _retail(data: bytes, length=None, magic=packs.MAGIC, version=packs.VERSION, flags=0):
    old = struct.unpack("<I", data[-12:-8])[0]
    return data[:-12] + struct.pack("<I6sBB", old if length is None else length, magic,
                                    version, flags)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:5], "too short to be a pack"),
    (lambda d: _retail(d, magic=b"NOTPAK"), "not a pack"),
    (lambda d: _retail(d, version=2), "pack version 2"),
    (lambda d: _retail(d, flags=4), "invalid pack tail"),
    (lambda d: _retail(d, length=len(d)), "invalid pack tail"),
    (lambda d: _retail(d, length=3), "invalid pack tail"),
    (lambda d: b"extra" + d, "do not fill it up to its trailer"),
    (lambda d: d[1:], "do not fill it up to its trailer"),
    (lambda d: _retail(d, flags=packs.FLAG_MAC), "is authenticated, and this repository"),
], ids=["short", "magic", "version", "flags", "length-huge", "length-tiny", "prefix",
        "truncated", "mac-flag-in-plain"])
def test_a_damaged_pack_tail_or_length_is_refused(damage, message):
    _, data = built()
    with pytest.raises(IntegrityError, match=message):
        trailer_of(damage(data))


def _with_trailer(kind, slots, records, mac=PLAIN.mac, data=b"") -> bytes:
    """A pack whose trailer says what the test wants (the records' bytes are zeros)."""
    body = struct.pack("<BHI", kind, len(slots), len(records))
    for sealed in slots:
        body += struct.pack("<H", len(sealed)) + sealed
    for record in records:
        body += struct.pack("<32sBHII", *record)
    tag = mac(packs.TRAILER_LABEL, body)
    body += tag
    stored = data or bytes(sum(r[3] for r in records))
    return stored + body + struct.pack("<I6sBB", len(body), packs.MAGIC, packs.VERSION,
                                       1 if tag else 0)


@pytest.mark.parametrize("kind, slots, records, message", [
    (DATA_PACK, [], [], "invalid trailer"),
    (7, [], [(b"a" * 32, 0, NO_SLOT, 4, 4)], "invalid trailer"),
    (DATA_PACK, [], [(b"a" * 32, 9, NO_SLOT, 4, 4)], "invalid record"),
    (DATA_PACK, [], [(b"a" * 32, 0, NO_SLOT, 0, 4)], "invalid record"),
    (DATA_PACK, [], [(b"a" * 32, 0, NO_SLOT, 4, 0)], "invalid record"),
    (DATA_PACK, [], [(b"a" * 32, 0, NO_SLOT, 4, (16 << 20) + 1)], "invalid record"),
    (DATA_PACK, [], [(b"a" * 32, 2, NO_SLOT, 4, 4)], "invalid record"),       # a tree in data
    (TREE_PACK, [], [(b"a" * 32, 0, NO_SLOT, 4, 4)], "invalid record"),       # data in tree
    (DATA_PACK, [], [(b"a" * 32, 0, 0, 4, 4)], "invalid record"),             # no such slot
    (DATA_PACK, [b"key"], [(b"a" * 32, 0, 0, 4, 4)], "invalid record"),       # sealed, plain
], ids=["no-records", "pack-kind", "blob-kind", "stored-0", "plain-0", "plain-huge",
        "tree-in-data", "data-in-tree", "slot-missing", "sealed-in-plain"])
def test_a_crafted_trailer_is_refused(kind, slots, records, message):
    data = _with_trailer(kind, slots, records)
    with pytest.raises(IntegrityError, match=message):
        trailer_of(data)


def test_a_trailer_whose_slot_runs_past_its_end_is_refused():
    data = _with_trailer(DATA_PACK, [b"k" * 40], [(b"a" * 32, 0, NO_SLOT, 4, 4)])
    tail_at = len(data) - packs.TAIL_BYTES
    length = struct.unpack("<I", data[tail_at:tail_at + 4])[0]
    start = tail_at - length + 7        # the first slot's length field
    crafted = data[:start] + struct.pack("<H", 60000) + data[start + 2:]
    with pytest.raises(IntegrityError, match="invalid trailer"):
        trailer_of(crafted)


def test_an_encrypted_pack_trailer_is_authenticated():
    cipher = sealed_cipher()
    builder = PackBuilder(DATA_PACK, cipher.mac)
    key, sealed = cipher.new_data_key()
    slot = builder.slot(sealed)
    frame = b"frame"
    builder.add(b"a" * 32, DATA, cipher.seal_record(key, b"a" * 32, frame), 5, slot)
    _, data = builder.finish()
    trailer = trailer_of(data, cipher.mac)
    assert trailer.slots == (sealed,) and trailer.records[0].slot == 0
    assert cipher.open_record(cipher.open_data_key(sealed, "k"), b"a" * 32,
                              data[:trailer.records[0].stored]) == frame
    at = len(data) - packs.TAIL_BYTES - 40     # a byte of the last record's entry
    forged = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
    with pytest.raises(IntegrityError, match="trailer's MAC does not match"):
        trailer_of(forged, cipher.mac)
    with pytest.raises(IntegrityError, match="is not authenticated"):
        trailer_of(built()[1], cipher.mac)          # a plain pack in an encrypted repository
    other = SealedChunks(RepositoryKey(b"o" * 32), [], lambda: [])
    with pytest.raises(IntegrityError, match="MAC does not match"):
        trailer_of(data, other.mac)                 # made with another repository's key


def test_a_sealed_record_moved_under_another_id_fails_its_tag():
    cipher = sealed_cipher()
    key, _ = cipher.new_data_key()
    stored = cipher.seal_record(key, b"a" * 32, b"frame")
    with pytest.raises(IntegrityError, match="fails its authentication tag"):
        cipher.open_record(key, b"b" * 32, stored)
    with pytest.raises(IntegrityError, match="fails its authentication tag"):
        cipher.open_record(key, b"a" * 32, stored[:-1] + bytes([stored[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="too short"):
        cipher.open_record(key, b"a" * 32, stored[:20])


# -- index objects

def _index(entries=None, packs_=None, mac=PLAIN.mac):
    packs_ = packs_ or [(PackInfo(b"p" * 32, 1000, DATA_PACK), entries or [
        (b"b" * 32, 0, 10, 20), (b"a" * 32, 10, 5, 7)])]
    return packindex.encode(packs_, mac)


def test_an_index_object_round_trips_sorted_by_id():
    name, data = _index()
    assert name == hashlib.sha256(data).hexdigest()
    obj = packindex.decode(data, PLAIN.mac, "index")
    assert obj.ids == b"a" * 32 + b"b" * 32
    assert [list(c) for c in obj.columns] == [[0, 0], [10, 0], [5, 10], [7, 20]]
    assert obj.packs == [PackInfo(b"p" * 32, 1000, DATA_PACK)]


def _patched(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


HEAD = 7 + 1 + 1 + 4 + 4
LOCS = HEAD + 37 + 64          # where the locations start in `_index()`


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:10], "too short"),
    (lambda d: _patched(d, 0, b"VBJUNK!"), "not an index object"),
    (lambda d: _patched(d, 7, b"\x02"), "index version 2"),
    (lambda d: _patched(d, 8, b"\x01"), "flags 1"),
    (lambda d: _patched(d, 13, struct.pack("<I", 3)), "length does not match its counts"),
    (lambda d: d + b"x", "length does not match its counts"),
    (lambda d: _patched(d, HEAD + 36, b"\x05"), "invalid kind or length"),
    (lambda d: _patched(d, HEAD + 32, struct.pack("<I", 4)), "invalid kind or length"),
    (lambda d: _patched(d, HEAD + 37, b"c" * 32), "ids are not in order"),
    (lambda d: _patched(d, LOCS, struct.pack("<I", 1)), "outside its pack or out of bounds"),
    (lambda d: _patched(d, LOCS + 4, struct.pack("<I", 990)), "outside its pack"),
    (lambda d: _patched(d, LOCS + 8, struct.pack("<I", 0)), "out of bounds"),
    (lambda d: _patched(d, LOCS + 12, struct.pack("<I", (16 << 20) + 1)), "out of bounds"),
], ids=["short", "magic", "version", "flags", "count", "trailing", "pack-kind",
        "pack-length", "order", "ordinal", "offset", "stored-0", "plain-huge"])
def test_a_crafted_index_object_is_refused(damage, message):
    _, data = _index()
    with pytest.raises(IntegrityError, match=message):
        packindex.decode(damage(data), PLAIN.mac, "index")


def test_an_encrypted_index_object_is_authenticated():
    cipher = sealed_cipher()
    _, data = _index(mac=cipher.mac)
    assert packindex.decode(data, cipher.mac, "index").blobs == 2
    with pytest.raises(IntegrityError, match="MAC does not match"):
        packindex.decode(_patched(data, LOCS + 4, struct.pack("<I", 11)), cipher.mac, "index")
    with pytest.raises(IntegrityError, match="not authenticated, in an encrypted"):
        packindex.decode(_index()[1], cipher.mac, "index")
    with pytest.raises(IntegrityError, match="not an index object of a plain"):
        packindex.decode(data, PLAIN.mac, "index")


def test_the_merged_index_finds_every_blob_of_every_object_and_keeps_both_copies():
    p1, p2 = PackInfo(b"1" * 32, 10_000, DATA_PACK), PackInfo(b"2" * 32, 10_000, TREE_PACK)
    ids = sorted(os.urandom(32) for _ in range(3000))
    first = [(i, n * 3, 3, 9) for n, i in enumerate(ids[:2000])]
    second = [(i, n * 3, 3, 9) for n, i in enumerate(ids[1500:])]   # 500 in both
    objects = [packindex.decode(packindex.encode([(p, e)], PLAIN.mac)[1], PLAIN.mac, "i")
               for p, e in ((p1, first), (p2, second))]
    index = BlobIndex(objects)
    assert len(index) == 3500 and not any(index.has(os.urandom(32)) for _ in range(100))
    assert [loc.pack for loc in index.locations(ids[0])] == [p1]
    assert [loc.pack for loc in index.locations(ids[-1])] == [p2]
    assert [loc.pack for loc in index.locations(ids[1700])] == [p1, p2]
    assert index.locations(ids[1700])[1].offset == 200 * 3
    index.add(PackInfo(b"3" * 32, 100, DATA_PACK), [(b"z" * 32, 0, 5, 5)])
    assert index.has(b"z" * 32) and index.locations(b"z" * 32)[0].pack.id == b"3" * 32


def test_merging_part_by_part_gives_every_entry_in_id_order_the_first_object_first():
    """The merge works on the ids of one first byte at a time: the columns it builds are
    exactly those of sorting every object's entries together (a stable sort: a blob in
    two objects keeps the objects' order), pack ordinals remapped to the merged packs."""
    rng = random.Random(7)
    shared = PackInfo(b"s" * 32, 1 << 20, DATA_PACK)
    repeated = [rng.randbytes(32) for _ in range(300)]
    objects, expected = [], []
    for n in range(5):
        own = PackInfo(bytes([n]) * 32, 1 << 20, TREE_PACK if n % 2 else DATA_PACK)
        ids = [rng.randbytes(32) for _ in range(rng.randrange(1, 2000))]
        ids += rng.sample(repeated, 100) + [b"\x00" * 32, b"\xff" * 32]
        packs = {own: [], shared: []}
        for k, blob_id in enumerate(ids):
            packs[rng.choice((own, shared))].append((blob_id, k * 3, 3, 1 + k % 7))
        listed = [(p, e) for p, e in packs.items() if e]
        objects.append(packindex.decode(packindex.encode(listed, PLAIN.mac)[1], PLAIN.mac, "i"))
        expected += [(blob_id, n, p.id, offset, stored, plain) for p, e in listed
                     for blob_id, offset, stored, plain in e]
    expected.sort(key=lambda row: row[:2])    # by id, then by the object it came from
    index = BlobIndex(objects)
    got = [(blob_id, loc.pack.id, loc.offset, loc.stored, loc.plain)
           for blob_id, loc in index.entries()]
    assert got == [(blob_id, *rest) for blob_id, _, *rest in expected]
    assert all(index.has(row[0]) for row in expected[::7])
    assert [loc.pack.id != shared.id for loc in index.locations(b"\xff" * 32)] == [
        row[2] != shared.id for row in expected if row[0] == b"\xff" * 32]
    assert len(index.locations(b"\xff" * 32)) == 5


@pytest.mark.parametrize("counted_most", [packindex.COUNTED_MOST, 0])   # counted, bisected
@pytest.mark.parametrize("count", [0, 1, 5000])
def test_bucket_starts_are_where_each_prefix_begins(count, counted_most, monkeypatch):
    monkeypatch.setattr(packindex, "COUNTED_MOST", counted_most)
    rng = random.Random(count)
    ids = sorted(rng.randbytes(32) for _ in range(count)) + [b"\xff" * 32] * (count > 0)
    starts = packindex._buckets(b"".join(ids))
    assert len(starts) == (1 << 16) + 1 and starts[-1] == len(ids)
    for bucket in [0, 1, 0x7fff, 0xfffe, 0xffff] + [rng.randrange(1 << 16) for _ in range(200)]:
        inside = [i for i, x in enumerate(ids) if int.from_bytes(x[:2], "big") == bucket]
        first = next((i for i, x in enumerate(ids) if int.from_bytes(x[:2], "big") >= bucket),
                     len(ids))
        assert starts[bucket] == first and starts[bucket + 1] - starts[bucket] == len(inside)


def test_this_runs_blobs_are_found_alike_before_and_after_they_are_folded():
    """`fold` moves this run's blobs from the dict into a sorted table of their own: every
    question the index answers has the same answer before and after, over several folds,
    with a loaded copy in a doomed pack beside this run's copy."""
    rng = random.Random(3)
    loaded_pack = PackInfo(b"L" * 32, 1 << 20, DATA_PACK)
    shared = [rng.randbytes(32) for _ in range(50)]
    loaded = [(i, k * 3, 3, 5) for k, i in enumerate(sorted(shared + [rng.randbytes(32)
                                                                        for _ in range(50)]))]
    obj = packindex.decode(packindex.encode([(loaded_pack, loaded)], PLAIN.mac)[1], PLAIN.mac, "i")
    index = BlobIndex([obj])
    index.doomed = frozenset({loaded_pack.id})
    mine: list[bytes] = []
    for n in range(6):
        pack = PackInfo(bytes([n + 1]) * 32, 1 << 20, DATA_PACK)
        ids = [rng.randbytes(32) for _ in range(30)] + shared[n * 5:n * 5 + 5]
        index.add(pack, [(i, k * 7, 7, 9) for k, i in enumerate(ids)])
        mine += ids
        asked = mine + [i for i, *_ in loaded] + [rng.randbytes(32) for _ in range(20)]

        def answers(asked=asked):
            return ([(index.has(i), index.written_here(i), index.all_locations(i))
                     for i in asked],
                    sorted((pack.id, sorted(entries)) for pack, entries in index.added()),
                    len(index),
                    sorted((i, repr(loc)) for i, loc in index.entries()))
        before = answers()
        if n % 2:
            index.fold()
            assert not index._added and len(index._run) == len(mine)
        assert answers() == before
    assert index.has(shared[0]) and not index.has(shared[-1])  # doomed, not written here
    assert index.written_here(shared[0]) and not index.written_here(shared[-1])


def test_two_index_objects_that_disagree_about_a_pack_are_reported():
    a = packindex.encode([(PackInfo(b"p" * 32, 1000, DATA_PACK), [(b"a" * 32, 0, 5, 5)])],
                         PLAIN.mac)[1]
    b = packindex.encode([(PackInfo(b"p" * 32, 2000, DATA_PACK), [(b"b" * 32, 0, 5, 5)])],
                         PLAIN.mac)[1]
    index = BlobIndex([packindex.decode(x, PLAIN.mac, "i") for x in (a, b)])
    assert index.conflicts and "disagree about pack" in index.conflicts[0]


# -- the store, through a repository

@pytest.fixture
def repo(tmp_path):
    return chunked_repo(tmp_path / "repo", seed=1, layout=PACKED)


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*/*"))


def index_files(root: Path) -> list[Path]:
    return sorted((root / "index").iterdir())


def test_a_snapshot_round_trips_and_each_pack_holds_many_blobs(repo, tmp_path):
    tar = volume_tar(size=3 << 20)
    manifest = backup(repo, tar)
    root = tmp_path / "repo"
    files = pack_files(root)
    assert blob_count(manifest) > 500 and 3 <= len(files) <= 6     # 1 MiB packs of ~4 KiB blobs
    assert not (root / "chunks").exists() and len(index_files(root)) == 1
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    reopened = Repository.open(str(root))
    assert restored(reopened, reopened.reveal(manifest)) == tar


def test_a_second_backup_of_the_same_data_writes_no_pack_and_no_index(repo, tmp_path):
    backup(repo, volume_tar())
    before = pack_files(tmp_path / "repo"), index_files(tmp_path / "repo")
    again = backup(Repository.open(str(tmp_path / "repo")), volume_tar())
    assert again.new_chunks == 0
    assert (pack_files(tmp_path / "repo"), index_files(tmp_path / "repo")) == before


def first_data_pack(repo, manifest) -> Path:
    """The pack that holds the snapshot's first chunk (not one of catalogue pieces only)."""
    chunk, _ = chunk_list(repo, manifest)[0]
    repo.blobs.forget()
    pack = repo.blobs.index().locations(bytes.fromhex(chunk))[0].pack.hex
    return Path(repo.backend.describe()) / "packs" / pack[:2] / pack


def test_a_changed_byte_of_a_pack_is_found_on_read(repo, tmp_path):
    manifest = backup(repo, volume_tar())
    path = first_data_pack(repo, manifest)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    _, error = read_until_error(Repository.open(str(tmp_path / "repo")), manifest)
    assert isinstance(error, IntegrityError)


def test_a_pack_removed_is_a_missing_chunk(repo, tmp_path):
    manifest = backup(repo, volume_tar())
    first_data_pack(repo, manifest).unlink()
    _, error = read_until_error(Repository.open(str(tmp_path / "repo")), manifest)
    assert isinstance(error, ChunkMissing) and "its pack" in str(error)


def test_an_index_object_removed_means_the_next_backup_stores_its_blobs_again(repo, tmp_path):
    manifest = backup(repo, volume_tar())
    for path in index_files(tmp_path / "repo"):
        path.unlink()
    reopened = Repository.open(str(tmp_path / "repo"))
    _, error = read_until_error(reopened, manifest)
    assert isinstance(error, ChunkMissing) and "no index entry" in str(error)
    again = backup(reopened, volume_tar())
    assert again.new_chunks == blob_count(again)
    assert restored(Repository.open(str(tmp_path / "repo")), again) == volume_tar()


def test_a_junk_index_object_is_left_out_and_reported(repo, tmp_path):
    backup(repo, volume_tar())
    (tmp_path / "repo" / "index" / ("0" * 64)).write_bytes(b"VBINDEX junk")
    index, loaded = load_index(LocalBackend(str(tmp_path / "repo")), PLAIN)
    assert loaded.objects == 1 and len(loaded.problems) == 1 and len(index) > 0


def test_a_copy_that_fails_is_passed_over_for_one_that_checks_out(tmp_path):
    backend = LocalBackend(str(tmp_path))
    store = PackedBlobStore(backend, PLAIN, 1 << 20)
    saved = store.save(b"hello world" * 100, 3)
    store.flush()
    store.forget()
    # a second pack holding a damaged copy of the same blob, indexed too
    good = next((tmp_path / "packs").rglob("*/*")).read_bytes()
    trailer = trailer_of(good)
    record = trailer.records[0]
    bad_frame = bytes(record.stored)
    pack_id, data = built(records=[(record.id, DATA, bad_frame, record.plain)])
    backend.write_bytes(packs.pack_key(pack_id), data)
    name, raw = packindex.encode([(PackInfo(bytes.fromhex(pack_id), len(data), DATA_PACK),
                                   [(record.id, 0, len(bad_frame), record.plain)])], PLAIN.mac)
    backend.write_bytes(packindex.index_key(name), raw)
    assert len(store.index().locations(record.id)) == 2
    # the damaged copy first, whatever order the listing gave
    objects = [packindex.decode(p.read_bytes(), PLAIN.mac, "i")
               for p in (tmp_path / "index").iterdir()]
    objects.sort(key=lambda o: o.packs[0].id != bytes.fromhex(pack_id))
    store._index = BlobIndex(objects)
    first = store.index().locations(record.id)[0]
    assert first.pack.hex == pack_id
    with pytest.raises(IntegrityError):
        store._read_at(record.id, saved.id, saved.length, first)
    assert store.load(saved.id, saved.length)[0] == b"hello world" * 100


def test_the_same_blob_saved_by_many_threads_at_once_is_packed_once(tmp_path):
    store = PackedBlobStore(LocalBackend(str(tmp_path)), PLAIN, 1 << 20)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.save(b"same" * 1000, 3)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    assert sum(1 for r in results if r.written) == 1
    trailer = trailer_of(next((tmp_path / "packs").rglob("*/*")).read_bytes())
    assert len(trailer.records) == 1


def test_a_pack_that_cannot_be_written_fails_the_flush_and_is_never_indexed(tmp_path):
    class Failing(LocalBackend):
        def open_write(self, key):
            if key.startswith("packs/"):
                raise OSError("disk full")
            return super().open_write(key)

    store = PackedBlobStore(Failing(str(tmp_path)), PLAIN, 1 << 20)
    store.save(os.urandom(1000), 3)
    with pytest.raises(OSError, match="disk full"):
        store.flush()
    assert not (tmp_path / "index").exists() or not list((tmp_path / "index").iterdir())


def test_tree_blobs_never_share_a_pack_with_data(tmp_path):
    store = PackedBlobStore(LocalBackend(str(tmp_path)), sealed_cipher(), 1 << 20)
    store.save(b"data" * 100, 3)
    store.save(b"tree" * 100, 3, kind=TREE)
    store.flush()
    kinds = {}
    for path in (tmp_path / "packs").rglob("*/*"):
        trailer = trailer_of(path.read_bytes(), store.cipher.mac)
        kinds[trailer.kind] = [(r.kind, r.slot) for r in trailer.records]
    assert kinds == {DATA_PACK: [(DATA, 0)], TREE_PACK: [(TREE, NO_SLOT)]}


def test_packs_close_at_their_size_and_an_encrypted_pack_seals_one_key(tmp_path):
    cipher = sealed_cipher()
    store = PackedBlobStore(LocalBackend(str(tmp_path)), cipher, 1 << 20)
    blobs = [os.urandom(100_000) for _ in range(25)]          # 2.5 MB that do not compress
    saved = [store.save(b, 3) for b in blobs]
    store.flush()
    files = sorted((tmp_path / "packs").rglob("*/*"))
    assert len(files) == 3 and all(p.stat().st_size < (1 << 20) + 200_000 for p in files)
    for path in files:
        assert len(trailer_of(path.read_bytes(), cipher.mac).slots) == 1
    store.forget()
    assert [store.load(s.id, s.length)[0] for s in saved] == blobs


# -- verify --packs

def test_a_spill_file_written_over_by_a_shorter_pack_uploads_that_pack_alone(tmp_path):
    """Spill files are kept and written over (packstore.SPILLS_KEPT): a pack shorter than
    the one the file held before must not carry that one's tail."""
    store = PackedBlobStore(LocalBackend(str(tmp_path)), PLAIN, 1 << 20, uploads=1)
    made: list = []
    new_pack = store._new_pack
    store._new_pack = lambda kind: made.append(new_pack(kind)) or made[-1]
    blobs = [os.urandom(300_000) for _ in range(4)] + [os.urandom(1000)]  # 1.2 MB, then 1 KB
    saved = [store.save(b, 3) for b in blobs[:4]]
    store.flush_packs()     # the first pack written: its spill file is free again
    saved.append(store.save(blobs[4], 3))
    store.flush()
    spills = {id(pack.builder._body) for pack in made}
    assert len(made) == 2 and len(spills) == 1      # the second pack went into the first's file
    files = sorted((tmp_path / "packs").rglob("*/*"), key=lambda p: p.stat().st_size)
    assert len(files) == 2 and files[0].stat().st_size < 2000
    for path in files:
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == path.name
    assert [len(trailer_of(p.read_bytes()).records) for p in files] == [1, 4]
    store.forget()
    assert store._spills == []
    assert [store.load(s.id, s.length)[0] for s in saved] == blobs


def test_verify_packs_passes_a_sound_repository_and_names_each_kind_of_damage(repo, tmp_path):
    from tests.conftest import run_cli
    from volbackup.repo.packcheck import check_packs

    root = tmp_path / "repo"
    backup(repo, volume_tar(size=3 << 20))
    clean = check_packs(repo.blobs)
    assert clean.problems == [] and clean.packs == len(pack_files(root)) >= 3
    assert clean.blobs > 500 and clean.unindexed == clean.duplicated == 0
    ok = run_cli("verify", "--packs", "-r", str(root))
    assert ok.code == 0 and f"packs: {clean.packs} checked" in ok.stdout

    # a pack no index names (a killed backup's): noted, not a problem
    builder = PackBuilder(DATA_PACK, PLAIN.mac)
    builder.add(os.urandom(32), DATA, b"orphan", 6, NO_SLOT)
    orphan_id, data = builder.finish()
    repo.backend.write_bytes(packs.pack_key(orphan_id), data)
    # an index object placing a blob in a pack that does not hold it
    first = next(p for p in pack_files(root) if p.name != orphan_id and repo.blobs.trailer(
        p.name, p.stat().st_size).kind == DATA_PACK)   # not the tree pack
    name, raw = packindex.encode([(PackInfo(bytes.fromhex(first.name), first.stat().st_size,
                                            DATA_PACK), [(b"\x01" * 32, 0, 5, 5)])], PLAIN.mac)
    repo.backend.write_bytes(packindex.index_key(name), raw)
    # a damaged pack, and a missing one
    damaged, missing = [p for p in pack_files(root) if p.name not in (orphan_id, first.name)][:2]
    body = bytearray(damaged.read_bytes())
    body[0] ^= 1
    damaged.write_bytes(bytes(body))
    missing.unlink()
    found = check_packs(repo.blobs)
    assert found.unindexed == 1 and len(found.problems) == 3, found.problems
    assert any(first.name in p and "does not hold 1 of the blobs" in p for p in found.problems)
    assert any(damaged.name in p and "does not match its name" in p for p in found.problems)
    assert any(missing.name in p and "is missing" in p for p in found.problems)
    bad = run_cli("verify", "--packs", "-r", str(root))
    assert bad.code == 6 and "3 problems" in bad.stderr and "Traceback" not in bad.stderr


def test_verify_packs_is_refused_for_a_repository_that_is_not_packed(tmp_path):
    from tests.conftest import run_cli

    chunked_repo(tmp_path / "chunked")
    refused = run_cli("verify", "--packs", "-r", str(tmp_path / "chunked"))
    assert refused.code == 5 and "is not packed" in refused.stderr
    assert run_cli("verify", "-r", str(tmp_path / "chunked")).code == 2


# -- reading runs of neighbours

def test_a_restore_reads_neighbouring_blobs_in_one_request_each_run(repo, tmp_path):
    from volbackup.repo.backends.counting import CountingBackend

    tar = volume_tar(size=3 << 20)
    manifest = backup(repo, tar)
    root = tmp_path / "repo"
    counting = CountingBackend(LocalBackend(str(root)))
    store = PackedBlobStore(counting, PLAIN, 1 << 20)
    entries = chunk_list(repo, manifest)
    got = b"".join(plain for plain, _ in store.load_many(entries, 8))
    assert got == tar[:len(got)] and len(got) == sum(length for _, length in entries)
    packs_read = counting.requests["packs"]
    # ~750 blobs of ~4 KiB in 2 MiB runs, split where a pack ends: a handful of requests
    assert len(entries) > 500 and packs_read <= 12, counting.requests


def test_a_damaged_blob_in_a_run_is_read_again_alone_and_named(repo, tmp_path):
    manifest = backup(repo, volume_tar(size=1 << 20))
    entries = chunk_list(repo, manifest)
    store = repo.blobs
    store.forget()
    victim, length = entries[len(entries) // 2]
    loc = store.index().locations(bytes.fromhex(victim))[0]
    path = tmp_path / "repo" / "packs" / loc.pack.hex[:2] / loc.pack.hex
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.stored // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(IntegrityError, match=victim):
        for plain, _ in store.load_many(entries, 8):
            seen.append(plain)
    assert len(seen) == len(entries) // 2       # every blob before it, checked, none after


def test_a_long_run_indexes_its_packs_as_it_goes_and_the_flush_names_them_all(tmp_path,
                                                                                monkeypatch):
    from volbackup.repo import packstore
    monkeypatch.setattr(packstore, "INDEX_EARLY_BLOBS", 40)
    store = PackedBlobStore(LocalBackend(str(tmp_path)), PLAIN, 16 << 10)  # small packs
    datas = [os.urandom(1000) for _ in range(300)]
    saved = [store.save(data, 3) for data in datas]
    store.flush_packs()
    assert [p for p in (tmp_path / "index").rglob("*") if p.is_file()]  # before the end
    # a blob this run wrote is held: saved again, even verified, it is not written again
    again_saved = store.save(datas[0], 3, verify_existing=True)
    assert not again_saved.written and not again_saved.replaced
    # what was indexed early waits in this run's sorted table, not in the dict; found alike
    index = store.index()
    assert len(index._run) >= 40 and len(index) == 300
    assert all(store.indexed(s.id) and index.written_here(bytes.fromhex(s.id)) for s in saved)
    assert sorted(blob_id for _, entries in index.added() for blob_id, *_ in entries) == \
        sorted(bytes.fromhex(s.id) for s in saved)
    made = store.flush()
    named = {pack for _, packs in made for pack in packs}
    on_disk = {p.name for p in (tmp_path / "packs").rglob("*") if p.is_file()}
    assert len(made) > 1 and named == on_disk       # every pack, in the objects flush names
    indexes = [p for p in (tmp_path / "index").rglob("*") if p.is_file()]
    assert len(indexes) == len(made)
    fresh = PackedBlobStore(LocalBackend(str(tmp_path)), PLAIN, 16 << 10)
    assert all(fresh.indexed(s.id) for s in saved) and len(fresh.index()) == 300

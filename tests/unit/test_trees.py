"""Trees of tree blobs (volbackup.repo.trees): written and walked back, in bounded memory,
stable under an insertion, read in part; and every rule of the reader shown refusing a
crafted tree (trees are read from the repository: untrusted)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.chunkrepos import chunked_repo
from tests.unit.fakestore import FakeStore
from volbackup.errors import ChunkMissing, IntegrityError, RepositoryError
from volbackup.repo.blobstore import TREE
from volbackup.repo.chunkstore import chunk_key
from volbackup.repo.trees import (EMPTY, MAX_RECORDS, RECORD, RECORD_SIZE, BadTree, TreeRoot,
                                  TreeWriter, ends_piece, walk, walk_range)

ROOT = Path(__file__).resolve().parents[2]


def _id(rnd: random.Random, cut: bool) -> bytes:
    """A random id that ends a piece (`cut`) or does not."""
    tail = rnd.randrange(1 << 22) * 1024 if cut else rnd.randrange(1 << 32)
    while not cut and tail % 1024 == 0:
        tail = rnd.randrange(1 << 32)
    return rnd.randbytes(28) + tail.to_bytes(4, "little")


def _leaves(count: int, seed: int = 1) -> list[tuple[str, int]]:
    rnd = random.Random(seed)
    return [(rnd.randbytes(32).hex(), rnd.randrange(1, 1 << 21)) for _ in range(count)]


def _write(store, leaves) -> TreeRoot:
    writer = TreeWriter(store, 3)
    for blob_id, length in leaves:
        writer.add(blob_id, length)
    return writer.finish()


def _root_of(store, leaves) -> tuple[TreeRoot, TreeWriter]:
    writer = TreeWriter(store, 3)
    for blob_id, length in leaves:
        writer.add(blob_id, length)
    return writer.finish(), writer


# ---- written and walked back ----

@pytest.mark.parametrize("count", [1, 2, 1023, 20_000])
def test_a_list_walks_back_as_it_was_written(count):
    store = FakeStore()
    leaves = _leaves(count)
    root, writer = _root_of(store, leaves)
    assert list(walk(store, root)) == leaves
    assert (root.blobs, root.bytes) == (count, sum(n for _, n in leaves))
    assert root.height == (1 if count < 100 else 2)
    assert set(store.kinds.values()) == {TREE}
    assert writer.pieces == len(store.saved) == writer.new_pieces
    assert all(len(store.blobs[i]) % RECORD_SIZE == 0 for i in store.blobs)


def test_the_empty_tree_saves_nothing_and_walks_to_nothing():
    store = FakeStore()
    assert _write(store, []) == EMPTY
    assert store.saved == []
    assert list(walk(store, EMPTY)) == []
    assert list(walk_range(store, EMPTY, 0, 10)) == []


def test_pieces_end_at_cut_ids_and_at_8192_records():
    rnd = random.Random(2)
    ids = [_id(rnd, cut=False) for _ in range(2 * MAX_RECORDS + 5)]
    ids[100] = _id(rnd, cut=True)
    store = FakeStore()
    root = _write(store, [(i.hex(), 7) for i in ids])
    assert root.height == 2
    top = store.blobs[root.id]
    sizes = [len(store.blobs[child.hex()]) // RECORD_SIZE
             for child, _, _ in RECORD.iter_unpack(top)]
    assert sizes == [101, MAX_RECORDS, MAX_RECORDS - 96]


def test_a_list_of_one_piece_that_ends_at_a_cut_saves_that_piece_alone():
    """The level above is not started until a second piece closes."""
    rnd = random.Random(3)
    store = FakeStore()
    leaves = [(_id(rnd, False).hex(), 5), (_id(rnd, True).hex(), 5)]
    root = _write(store, leaves)
    assert root.height == 1 and root.length == 2 * RECORD_SIZE
    assert store.saved == [root.id]
    assert list(walk(store, root)) == leaves


# Run in a child process, its peak RSS measured: tracemalloc would make the million
# records take minutes. The pieces go to files, so what grows is the writer's and the
# reader's own memory only.
_MILLION = """
import hashlib, resource, sys, tempfile
from pathlib import Path
from tests.unit.fakestore import FakeStore
from volbackup.repo.trees import TreeWriter, walk

def generated(count):
    for i in range(count):
        yield hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).hexdigest(), 1 + i % 5000

count = int(sys.argv[1])
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as directory:
    store = FakeStore(Path(directory))
    writer = TreeWriter(store, 3)
    for blob_id, length in generated(count):
        writer.add(blob_id, length)
    root = writer.finish()
    seen = 0
    for got, want in zip(walk(store, root), generated(count), strict=True):
        assert got == want
        seen += 1
print(seen, root.height, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_million_blobs_written_and_walked_in_bounded_memory(tmp_path):
    def run(count: int) -> tuple[int, int, int]:
        done = subprocess.run([sys.executable, "-c", _MILLION, str(count), str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        seen, height, peak_kib = map(int, done.stdout.split())
        return seen, height, peak_kib

    seen, height, peak = run(1_000_000)
    _, _, baseline = run(1000)
    assert (seen, height) == (1_000_000, 3)
    # the list itself: 44 MB of records, some 200 MB as Python objects
    assert peak - baseline < 8 << 10, f"{(peak - baseline) >> 10} MiB more than for 1,000"


@pytest.mark.parametrize("change", ["insert", "remove"])
def test_one_blob_more_or_less_changes_one_piece_per_level(change):
    rnd = random.Random(4)
    leaves = [(_id(rnd, cut=False).hex() if i % 997 else _id(rnd, True).hex(), 100)
              for i in range(100_000)]
    old_store = FakeStore()
    old = _write(old_store, leaves)
    changed = list(leaves)
    if change == "insert":
        changed.insert(50_000, (_id(rnd, cut=False).hex(), 100))
    else:
        del changed[50_001]
    new_store = FakeStore()
    new = _write(new_store, changed)
    assert new.height == old.height
    added = set(new_store.blobs) - set(old_store.blobs)
    dropped = set(old_store.blobs) - set(new_store.blobs)
    assert len(added) == len(dropped) == new.height  # one leaf piece and those above it


def test_walk_range_loads_only_the_pieces_that_cover_the_range():
    store = FakeStore()
    leaves = _leaves(20_000, seed=5)
    root = _write(store, leaves)
    offsets, at = [], 0
    for _, length in leaves:
        offsets.append(at)
        at += length
    rnd = random.Random(6)
    for _ in range(20):
        start = rnd.randrange(root.bytes)
        end = start + rnd.choice([1, 1000, 1 << 20, 1 << 28])
        store.loads.clear()
        got = list(walk_range(store, root, start, end))
        want = [(i, n, o) for (i, n), o in zip(leaves, offsets) if o < end and o + n > start]
        assert [tuple(leaf) for leaf in got] == want
        assert root.id in store.loads
        assert len(store.loads) <= 2 + len(got) // 100  # the root and the leaf pieces met


def test_walk_range_outside_the_stream_loads_nothing():
    store = FakeStore()
    root = _write(store, _leaves(10))
    assert list(walk_range(store, root, root.bytes, root.bytes + 10)) == []
    assert list(walk_range(store, root, 5, 5)) == []
    assert not store.loads


def test_a_tree_in_a_loose_chunk_store(tmp_path):
    repo = chunked_repo(tmp_path / "repo", seed=1)
    store = repo.blobs
    leaves = _leaves(5000, seed=7)
    root = _write(store, leaves)
    assert root.height == 2
    assert list(walk(store, root)) == leaves
    assert list(walk(store, root)) == leaves  # read again: nothing held between walks
    top = store.load(root.id, root.length)[0]
    child = RECORD.unpack_from(top, 0)[0].hex()
    path = tmp_path / "repo" / chunk_key(child)
    path.write_bytes(store.objects.get_stored(root.id, root.length))  # another piece's bytes
    with pytest.raises(IntegrityError):
        list(walk(store, root))


def test_a_root_reads_back_from_a_manifests_fields():
    root = _write(FakeStore(), _leaves(3))
    assert TreeRoot.from_fields(root.to_fields(), "manifest") == root
    assert TreeRoot.from_fields(EMPTY.to_fields(), "manifest") == EMPTY


@pytest.mark.parametrize("fields", [
    None, [], {"root": "ab"}, {"root": 1, "length": 44, "height": 1, "blobs": 1, "bytes": 1},
    {"root": "a" * 64, "length": "44", "height": 1, "blobs": 1, "bytes": 1},
    {"root": "a" * 64, "length": 44, "height": True, "blobs": 1, "bytes": 1},
    {"root": "a" * 64, "length": 44, "height": 1, "blobs": 1, "bytes": 1, "more": 0}])
def test_a_root_with_fields_of_the_wrong_type_is_refused(fields):
    with pytest.raises(RepositoryError, match="invalid tree root"):
        TreeRoot.from_fields(fields, "manifest")


# ---- crafted trees: each rule refusing ----

def _piece(store, records) -> tuple[str, int, int]:
    """Store a piece of (id bytes, length, span) records as a writer would not."""
    data = b"".join(RECORD.pack(*r) for r in records)
    saved = store.save(data, 3, kind=TREE)
    return saved.id, len(data), sum(r[2] for r in records)


def _two_level(store, groups) -> TreeRoot:
    """A root of height 2 over leaf pieces holding `groups` (lists of leaf records)."""
    children = [_piece(store, g) for g in groups]
    top = _piece(store, [(bytes.fromhex(i), n, s) for i, n, s in children])
    return TreeRoot(top[0], top[1], 2, sum(len(g) for g in groups), top[2])


def _leaf(rnd, cut=False, length=10, span=None):
    return (_id(rnd, cut), length, length if span is None else span)


def _good_groups(rnd):
    return [[_leaf(rnd), _leaf(rnd), _leaf(rnd, cut=True)], [_leaf(rnd), _leaf(rnd)]]


def _refused(store, root, match):
    with pytest.raises(BadTree, match=match):
        list(walk(store, root))


def test_the_crafting_helpers_make_a_tree_walk_accepts():
    rnd, store = random.Random(10), FakeStore()
    groups = _good_groups(rnd)
    root = _two_level(store, groups)
    assert list(walk(store, root)) == [(r[0].hex(), r[1]) for g in groups for r in g]
    assert _write(FakeStore(), list(walk(store, root))) == root  # the writer's own tree


@pytest.mark.parametrize("change, match", [
    ({"height": 5}, "height 5, not 1-4"), ({"height": -1}, "height -1"),
    ({"height": 0}, "not the empty tree"), ({"id": "A" * 64}, "is not a blob id"),
    ({"id": "ab"}, "is not a blob id"), ({"length": 45}, "has length 45"),
    ({"length": 0}, "has length 0"), ({"length": (MAX_RECORDS + 1) * RECORD_SIZE}, "records"),
    ({"blobs": 0}, "claims 0 blobs"), ({"bytes": 1}, "claims 5 blobs of 1 bytes")])
def test_a_root_out_of_bounds_is_refused_before_anything_is_read(change, match):
    store = FakeStore()
    root = dataclasses.replace(_two_level(store, _good_groups(random.Random(11))), **change)
    _refused(store, root, match)
    assert not store.loads


def test_a_root_that_is_not_stored_or_not_what_its_id_says():
    rnd, store = random.Random(12), FakeStore()
    root = _two_level(store, _good_groups(rnd))
    with pytest.raises(ChunkMissing):
        list(walk(FakeStore(), root))
    top = store.blobs[root.id]
    store.blobs[root.id] = top[:RECORD_SIZE] + bytes(RECORD_SIZE)  # same length, other bytes
    with pytest.raises(IntegrityError, match="does not match its name"):
        list(walk(store, root))


def test_a_child_that_is_missing_or_planted_under_its_id():
    rnd, store = random.Random(13), FakeStore()
    groups = _good_groups(rnd)
    root = _two_level(store, groups)
    first = RECORD.unpack_from(store.blobs[root.id], 0)[0].hex()
    real = store.blobs.pop(first)
    with pytest.raises(IntegrityError):
        list(walk(store, root))
    store.blobs[first] = real[:-1] + bytes([real[-1] ^ 1])
    with pytest.raises(IntegrityError, match="does not match its name"):
        list(walk(store, root))


def test_a_record_naming_a_child_of_a_length_no_piece_has():
    rnd, store = random.Random(14), FakeStore()
    child = _piece(store, [_leaf(rnd), _leaf(rnd, cut=True)])
    other = _piece(store, [_leaf(rnd)])
    top = _piece(store, [(bytes.fromhex(child[0]), child[1] + 1, child[2]),
                         (bytes.fromhex(other[0]), other[1], other[2])])
    _refused(store, TreeRoot(top[0], top[1], 2, 3, top[2]), "has length 89")


def test_spans_that_do_not_add_up():
    rnd, store = random.Random(15), FakeStore()
    child = _piece(store, [_leaf(rnd), _leaf(rnd, cut=True)])
    other = _piece(store, [_leaf(rnd)])
    top = _piece(store, [(bytes.fromhex(child[0]), child[1], child[2] + 1),
                         (bytes.fromhex(other[0]), other[1], other[2])])
    _refused(store, TreeRoot(top[0], top[1], 2, 3, top[2]), "spans 20 bytes, not the 21")
    good = _two_level(store, _good_groups(rnd))
    _refused(store, dataclasses.replace(good, bytes=good.bytes + 1), "spans 50 bytes, not the 51")


@pytest.mark.parametrize("blobs", [4, 6])
def test_a_count_that_is_not_the_manifests(blobs):
    store = FakeStore()
    root = _two_level(store, _good_groups(random.Random(16)))
    _refused(store, dataclasses.replace(root, blobs=blobs), "blobs")


@pytest.mark.parametrize("leaf, match", [
    ((0, 0), "length 0, span 0"), ((10, 0), "length 10, span 0"),
    ((10, 11), "length 10, span 11"), ((5000, 5000), "at most 4096")])
def test_a_leaf_of_zero_length_a_span_not_its_length_or_too_long(leaf, match):
    rnd, store = random.Random(17), FakeStore()
    length, span = leaf
    groups = [[_leaf(rnd), _leaf(rnd, length=length, span=span), _leaf(rnd, cut=True)],
              [_leaf(rnd)]]
    root = _two_level(store, groups)
    with pytest.raises(BadTree, match=match):
        list(walk(store, root, max_length=4096))


def test_a_piece_cut_where_the_rule_does_not_cut():
    rnd, store = random.Random(18), FakeStore()
    root = _two_level(store, [[_leaf(rnd), _leaf(rnd)], [_leaf(rnd, cut=True), _leaf(rnd)]])
    _refused(store, root, "ends after 2 records, where the cut rule does not end it")


def test_a_piece_that_goes_on_past_a_cut():
    rnd, store = random.Random(19), FakeStore()
    root = _two_level(store, [[_leaf(rnd), _leaf(rnd, cut=True), _leaf(rnd, cut=True)],
                              [_leaf(rnd)]])
    _refused(store, root, "goes on after record 1")


def test_a_piece_cut_early_is_refused_even_by_a_partial_read():
    rnd, store = random.Random(20), FakeStore()
    root = _two_level(store, [[_leaf(rnd), _leaf(rnd)], [_leaf(rnd)]])
    with pytest.raises(BadTree, match="where the cut rule does not end it"):
        list(walk_range(store, root, 0, 5))


def test_a_root_of_height_two_over_one_piece():
    rnd, store = random.Random(21), FakeStore()
    root = _two_level(store, [[_leaf(rnd), _leaf(rnd)]])
    _refused(store, root, "over one piece")
    assert _write(FakeStore(), [(i.hex(), n) for i, n, _ in [_leaf(random.Random(21)),
                                                             _leaf(random.Random(21))]]
                  ).height == 1


def test_a_piece_of_more_than_8192_records():
    rnd, store = random.Random(22), FakeStore()
    root = _two_level(store, [[_leaf(rnd) for _ in range(MAX_RECORDS + 1)], [_leaf(rnd)]])
    _refused(store, root, f"not 1 to {MAX_RECORDS} records")


def test_a_piece_of_8192_records_that_ends_without_a_cut_id_is_accepted():
    rnd, store = random.Random(23), FakeStore()
    groups = [[_leaf(rnd) for _ in range(MAX_RECORDS)], [_leaf(rnd)]]
    root = _two_level(store, groups)
    assert not ends_piece(groups[0][-1][0])
    assert sum(1 for _ in walk(store, root)) == MAX_RECORDS + 1


def test_a_leaf_at_the_wrong_depth_is_refused():
    """A tree whose root says height 3 over leaf pieces: the leaves are read as pieces."""
    rnd, store = random.Random(24), FakeStore()
    good = _two_level(store, _good_groups(rnd))
    with pytest.raises(IntegrityError):
        list(walk(store, dataclasses.replace(good, height=3)))


def test_a_list_that_would_need_a_taller_tree_is_refused_by_the_writer(monkeypatch):
    from volbackup.repo import trees
    monkeypatch.setattr(trees, "MAX_HEIGHT", 1)
    rnd = random.Random(25)
    writer = TreeWriter(FakeStore(), 3)
    writer.add(_id(rnd, cut=True).hex(), 5)
    with pytest.raises(trees.TreeTooTall, match="taller than 1"):
        writer.add(_id(rnd, cut=True).hex(), 5)  # a second leaf piece: a level above


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_tree_in_a_packed_store_goes_into_tree_packs(tmp_path, encrypted):
    from tests.unit.test_packs import sealed_cipher, trailer_of
    from volbackup.repo.backends import LocalBackend
    from volbackup.repo.crypto import PlainChunks
    from volbackup.repo.packs import TREE_PACK
    from volbackup.repo.packstore import PackedBlobStore
    cipher = sealed_cipher() if encrypted else PlainChunks()
    store = PackedBlobStore(LocalBackend(str(tmp_path)), cipher, 1 << 20)
    leaves = _leaves(5000, seed=8)
    root = _write(store, leaves)
    store.flush()
    store.forget()
    assert list(walk(store, root)) == leaves
    kinds = {trailer_of(p.read_bytes(), cipher.mac).kind for p in (tmp_path / "packs").rglob("*/*")}
    assert kinds == {TREE_PACK}

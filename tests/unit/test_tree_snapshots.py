"""Tree snapshots (manifest format 4): what a packed repository writes now. The data's blob
list and the catalogue (version 2) are trees of blobs, nothing is written beside the
manifest, and every reader (restore, partial reads, catalogue, verify, prune, copy) goes
through the trees; list snapshots in the same repository keep working."""

from __future__ import annotations

import json
import random
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.unit.chunkrepos import backup, chunked_repo, restored, volume_tar
from tests.unit.tars import end_of_members, make_tar
from tests.unit.test_encryption import age_identity, opened
from volbackup.errors import ChunkMissing, IntegrityError, RepositoryError
from volbackup.ops import copy as copy_ops
from volbackup.ops.prune import PruneOptions, prune
from volbackup.ops.snapshots import verify
from volbackup.repo.config import MIN_PACK, PACKED, RepoConfig
from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository
from volbackup.repo.retention import Rules
from volbackup.repo.trees import BadTree
from volbackup.stream.archive import END_MARKER
from volbackup.stream.catalog import Selection

ALL = copy_ops.Choice([], all=True)
AGO = datetime.now(timezone.utc) - timedelta(days=30)


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def snapshot_files(root: Path) -> set[str]:
    return {p.name for p in (root / "snapshots").rglob("*") if p.is_file()}


def small_files_tar(count: int, seed: int = 7, change: int | None = None) -> bytes:
    """A volume of `count` small files (40-200 bytes, in 100 directories); file `change`
    has other content."""
    rng = random.Random(seed)
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    members = [(root, b"")]
    for d in range(100):
        info = tarfile.TarInfo(f"./d{d:02}")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        members.append((info, b""))
        for i in range(d, count, 100):
            data = rng.randbytes(rng.randrange(40, 200))
            if i == change:
                data = b"changed " + data
            members.append((tarfile.TarInfo(f"./d{d:02}/f{i:06}"), data))
    tar = make_tar(members)
    return tar[:end_of_members(tar) + END_MARKER]


@pytest.fixture
def root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def repo(root):
    return chunked_repo(root, seed=1, layout=PACKED)


def test_a_packed_snapshot_is_a_tree_snapshot_and_restores(repo, root):
    tar = volume_tar(seed=3, size=2 << 20)
    manifest = backup(repo, tar)
    stored = json.loads((root / "snapshots" / "pgdata" /
                         f"{manifest.snapshot.split('@')[1]}.json").read_text())
    assert stored["format_version"] == 4 and stored["layout"] == "chunked"
    assert stored["data"]["blobs"] > 100 and stored["data"]["bytes"] == len(tar)
    assert stored["catalog"]["version"] == 3 and stored["chunks"] is None
    assert stored["sha256"] == "" and stored["tar_sha256"] is None
    assert snapshot_files(root) == {f"{manifest.snapshot.split('@')[1]}.json"}  # no lists
    assert restored(Repository.open(str(root)), manifest) == tar
    entries = list(repo.catalog(manifest))
    assert [e.path for e in entries] == [".", "note", "data.bin"]
    assert entries[2].size == 2 << 20


def test_an_encrypted_packed_snapshot_round_trips(tmp_path):
    root, key_file, identity = tmp_path / "repo", tmp_path / "repo.key", tmp_path / "id.txt"
    root.mkdir()
    Repository.init(str(root), config=RepoConfig.new(avg_size=4096, layout=PACKED,
                                                     pack_size=MIN_PACK),
                    encrypt_to=[age_identity(identity)], key_file=str(key_file))
    repo = opened(root, key_file)
    tar = volume_tar(seed=4, size=1 << 20)
    manifest = backup(repo, tar)
    raw = json.loads(next((root / "snapshots").rglob("*.json")).read_text())
    assert raw["format_version"] == 4 and raw["encrypted"] and raw["data"]["blobs"] > 10
    reader = opened(root, key_file, identity)
    loaded = reader.load(manifest.snapshot)
    assert restored(reader, loaded) == tar
    assert [e.path for e in reader.catalog(loaded)] == [".", "note", "data.bin"]
    assert [c.message for c in verify(reader, [], True).snapshots if c.failed] == []
    # The MAC covers the roots: another data root is not authentic.
    raw["data"]["root"] = "ab" * 32
    next((root / "snapshots").rglob("*.json")).write_text(json.dumps(raw))
    with pytest.raises(IntegrityError, match="not authentic"):
        reader.reveal(reader.load(manifest.snapshot))


def test_an_unchanged_rebackup_of_many_small_files_adds_only_its_manifest(repo, root):
    tar = small_files_tar(20_000)
    first = backup(repo, tar)
    before = stored_bytes(root)
    second = backup(repo, tar)
    added = stored_bytes(root) - before
    manifest_size = len(Path(root / "snapshots" / "pgdata" /
                             f"{second.snapshot.split('@')[1]}.json").read_bytes())
    print(f"unchanged re-backup of 20,000 files ({len(tar)} tar bytes, "
          f"{first.data['blobs']} blobs) added {added} bytes")
    assert added == manifest_size < 2048
    assert second.data == first.data and second.catalog == first.catalog
    assert second.new_chunks == 0
    # One changed file: its blob, a leaf piece of each tree and the pieces above.
    changed = backup(repo, small_files_tar(20_000, change=12_345))
    assert changed.new_chunks <= 2
    assert stored_bytes(root) - before - added < 400_000
    assert restored(repo, changed) == small_files_tar(20_000, change=12_345)


def test_a_partial_read_fetches_only_the_pieces_it_needs(repo):
    tar = small_files_tar(3_000)
    manifest = backup(repo, tar)
    selection = Selection(include=("d42",))
    part = b"".join(repo.unpacker(manifest, selection=selection).chunks())
    with tarfile.open(fileobj=__import__("io").BytesIO(part)) as got, \
            tarfile.open(fileobj=__import__("io").BytesIO(tar)) as whole:
        names = got.getnames()
        assert names[0] == "." and len(names) == 32   # the root (its metadata), d42/, 30 files
        assert names[1:] == [n for n in whole.getnames() if n.startswith("./d42")]
        assert all(got.extractfile(n).read() == whole.extractfile(n).read()
                   for n in names[2:])
    one = next(e for e in repo.catalog(manifest) if e.path == "d07/f000107")
    store = repo.blobs
    loads: list[str] = []
    real_load = store.load

    def counting_load(blob_id, length):
        loads.append(blob_id)
        return real_load(blob_id, length)

    store.load = counting_load      # an instance attribute: this store only
    data = b"".join(repo.partial(manifest, lambda: iter([one])).chunks())
    assert data.startswith(tar[one.at:one.end])
    # the root piece, the pieces down to the file's leaf, the blob(s) holding it
    assert manifest.data["blobs"] > 50 and len(loads) <= manifest.data["height"] + 2


def test_prune_keeps_every_piece_a_kept_snapshot_needs(repo, root):
    old = backup(repo, volume_tar(seed=1, size=3 << 20), when=AGO)
    new = backup(repo, small_files_tar(2_000), when=AGO + timedelta(days=1))
    before = stored_bytes(root / "packs")
    result = prune(repo, PruneOptions(Rules(last=1), leftover_age=0))
    assert [d.snapshot for d in result.removed] == [old.snapshot]
    assert result.chunks.problems == [] and result.chunks.removed >= old.data["blobs"] - 5
    assert stored_bytes(root / "packs") < before - (2 << 20)
    reopened = Repository.open(str(root))
    assert restored(reopened, new) == small_files_tar(2_000)
    assert len(list(reopened.catalog(new))) == new.entries
    assert [c.message for c in verify(reopened, [], True).snapshots if c.failed] == []
    again = prune(reopened, PruneOptions(Rules(last=1), leftover_age=0))
    assert (again.chunks.removed, again.chunks.packs_removed) == (0, 0)


def test_a_dry_run_counts_a_tree_snapshots_blobs_as_freed(repo):
    backup(repo, volume_tar(seed=1, size=2 << 20), when=AGO)
    backup(repo, volume_tar(seed=2, size=2 << 20), when=AGO + timedelta(days=1))
    dry = prune(repo, PruneOptions(Rules(last=1), leftover_age=0, dry_run=True))
    assert dry.chunks.problems == [] and dry.chunks.removed > 100


@pytest.mark.parametrize("damage", ["missing-root", "garbage-manifest"])
def test_a_tree_or_manifest_that_cannot_be_read_stops_the_sweep(repo, root, damage):
    old = backup(repo, volume_tar(seed=1, size=1 << 20), when=AGO)
    kept = backup(repo, volume_tar(seed=2, size=1 << 20), when=AGO + timedelta(days=1))
    path = root / "snapshots" / "pgdata" / f"{kept.snapshot.split('@')[1]}.json"
    if damage == "missing-root":
        raw = json.loads(path.read_text())
        raw["data"]["root"] = "ab" * 32
        path.write_text(json.dumps(raw))
    else:
        (root / "snapshots" / "pgdata" / "20261129T031500Z-1a2b.json").write_text("{junk")
    packs_before = sorted(p.name for p in (root / "packs").rglob("*/*"))
    result = prune(repo, PruneOptions(Rules(last=1), leftover_age=0))
    assert result.chunks.problems and "no chunk swept" in result.chunks.problems[0]
    assert result.chunks.removed == 0
    assert sorted(p.name for p in (root / "packs").rglob("*/*")) == packs_before
    del old


def test_a_manifest_naming_another_tree_is_refused_cleanly(repo, root):
    manifest = backup(repo, volume_tar(seed=5, size=1 << 20))
    path = root / "snapshots" / "pgdata" / f"{manifest.snapshot.split('@')[1]}.json"
    raw = json.loads(path.read_text())
    good = dict(raw["data"])
    cases = [
        # the catalogue's root as the data's: its leaves are not data blobs of these bytes
        ({**good, "root": raw["catalog"]["root"], "length": raw["catalog"]["length"]},
         (BadTree, IntegrityError)),
        ({**good, "root": "ab" * 32}, (ChunkMissing, RepositoryError)),
        ({**good, "blobs": good["blobs"] + 1}, (BadTree,)),
    ]
    for data, errors in cases:
        path.write_text(json.dumps({**raw, "data": data}))
        loaded = Repository.open(str(root)).load(manifest.snapshot)
        with pytest.raises(errors):
            restored(repo, loaded)
    path.write_text(json.dumps({**raw, "data": {**good, "height": 9}}))
    with pytest.raises(RepositoryError, match="invalid data or catalog field"):
        Repository.open(str(root)).load(manifest.snapshot)


def test_list_snapshots_in_a_packed_repository_still_read_and_prune(tmp_path, repo, root):
    """A list snapshot copied into a packed repository (as chunks) sits beside tree ones."""
    chunked = chunked_repo(tmp_path / "chunked", seed=1)
    listed = backup(chunked, volume_tar(seed=8, size=1 << 20), when=AGO)
    copy_ops.copy(chunked, repo, copy_ops.Choice([listed.snapshot]))
    tree = backup(repo, volume_tar(seed=9, size=1 << 20), when=AGO + timedelta(days=1))
    assert not repo.load(listed.snapshot).tree and repo.load(tree.snapshot).tree
    assert [c.message for c in verify(repo, [], True).snapshots if c.failed] == []
    result = prune(repo, PruneOptions(Rules(last=1), leftover_age=0))
    assert result.chunks.problems == [] and result.chunks.removed > 0
    assert snapshot_files(root) == {f"{tree.snapshot.split('@')[1]}.json"}
    assert restored(Repository.open(str(root)), tree) == volume_tar(seed=9, size=1 << 20)


def test_copy_packed_to_chunked_and_back(tmp_path, repo):
    made = [backup(repo, volume_tar(seed=1)), backup(repo, small_files_tar(500), volume="c")]
    chunked = chunked_repo(tmp_path / "chunked")
    out = copy_ops.copy(repo, chunked, ALL).snapshots
    assert [o.how for o in out] == ["stream", "stream"] and all(o.chunks > 0 for o in out)
    for manifest in made:
        copied = chunked.load(manifest.snapshot)
        assert not copied.tree and copied.chunks and copied.catalog["version"] == 1
        assert restored(chunked, copied) == restored(repo, manifest)
    packed = chunked_repo(tmp_path / "packed", layout=PACKED)
    back = copy_ops.copy(chunked, packed, ALL).snapshots
    assert [o.how for o in back] == ["chunks", "chunks"]  # list snapshots, as stored
    again = chunked_repo(tmp_path / "again", layout=PACKED)
    tree_copy = copy_ops.copy(repo, again, ALL).snapshots
    assert [o.how for o in tree_copy] == ["blobs", "blobs"]   # two plain packed ones
    for manifest in made:
        assert again.load(manifest.snapshot).tree
        assert restored(again, again.load(manifest.snapshot)) == restored(repo, manifest)
        assert restored(packed, packed.load(manifest.snapshot)) == restored(repo, manifest)
    for target in (chunked, packed, again):
        assert [c.message for c in verify(target, [], True).snapshots if c.failed] == []
    skipped = copy_ops.copy(repo, again, ALL).snapshots
    assert [o.status for o in skipped] == ["skipped", "skipped"]


def test_an_older_manifest_reader_is_told_to_upgrade():
    raw = json.dumps({"format": "volbackup-snapshot", "format_version": 5})
    with pytest.raises(RepositoryError, match="format version 5.*upgrade volbackup"):
        Manifest.from_json(raw, "m")

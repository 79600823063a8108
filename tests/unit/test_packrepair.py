"""repair-index (volbackup.repo.packrepair, ops.repair): the index of a packed repository
rebuilt from its packs, on a real LocalBackend, after each way an index goes wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.unit.chunkrepos import backup, chunked_repo, restored, volume_tar
from tests.unit.test_encryption import age_identity, opened
from volbackup.errors import RepositoryError
from volbackup.ops.repair import RepairIndexOptions, repair_index
from volbackup.repo import packindex, packs
from volbackup.repo.backends import LocalBackend
from volbackup.repo.config import PACKED, RepoConfig
from volbackup.repo.crypto import PlainChunks
from volbackup.repo.packcheck import check_packs
from volbackup.repo.packindex import PackInfo
from volbackup.repo.packs import DATA, DATA_PACK, NO_SLOT, TREE_PACK, PackBuilder
from volbackup.repo.repository import Repository

PLAIN = PlainChunks()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def repo(root):
    return chunked_repo(root, seed=1, layout=PACKED)


@pytest.fixture
def two(repo):
    return (backup(repo, volume_tar(seed=1, size=3 << 20)),
            backup(repo, volume_tar(seed=2, size=3 << 20)))


def index_files(root: Path) -> list[Path]:
    return sorted((root / "index").iterdir())


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*/*"))


def repaired(root: Path, **options) -> object:
    return repair_index(Repository.open(str(root)), RepairIndexOptions(**options))


def assert_sound(root: Path, *snapshots) -> None:
    """verify --packs finds nothing, and every snapshot restores."""
    reopened = Repository.open(str(root))
    check = check_packs(reopened.blobs)
    assert check.problems == [] and check.unindexed == 0, check.problems
    for seed, manifest in enumerate(snapshots, start=1):
        assert restored(reopened, reopened.reveal(reopened.load(manifest.snapshot))) == \
            volume_tar(seed=seed, size=3 << 20)


def test_a_lost_index_is_rebuilt_from_the_trailers(root, two):
    blobs_before = check_packs(Repository.open(str(root)).blobs).blobs
    for path in index_files(root):
        path.unlink()
    result = repaired(root)
    assert result.problems == [] and result.damaged_index == []
    assert result.from_index == 0 and result.from_trailers == result.packs == len(pack_files(root))
    assert result.blobs == blobs_before and result.index_written == len(index_files(root)) == 1
    assert result.index_removed == 0 and result.lost_packs == 0
    assert_sound(root, *two)


def test_a_sound_index_is_rewritten_from_itself_without_reading_a_pack(root, two, monkeypatch):
    before = index_files(root)
    assert len(before) == 2                       # one per backup
    reads = []
    real = LocalBackend.read_range
    monkeypatch.setattr(LocalBackend, "read_range",
                        lambda self, *a: reads.append(a) or real(self, *a))
    result = repaired(root)
    assert reads == [] and result.from_trailers == 0 and result.from_index == result.packs
    assert result.index_written == 1 and result.index_removed == 2
    assert set(index_files(root)).isdisjoint(before)     # compacted into a new one
    assert_sound(root, *two)
    # and again: the same single object (named by its bytes), nothing to remove
    again = repaired(root)
    assert (again.index_written, again.index_removed) == (1, 0)


def test_a_damaged_index_object_is_replaced_by_its_packs_trailers(root, two):
    damaged = index_files(root)[0]
    body = bytearray(damaged.read_bytes())
    body[40] ^= 1
    damaged.write_bytes(bytes(body))
    result = repaired(root)
    assert len(result.damaged_index) == 1 and "does not match its name" in result.damaged_index[0]
    assert result.problems == [] and result.from_trailers >= 1 and result.from_index >= 1
    assert not damaged.exists() and result.index_removed == 2
    assert_sound(root, *two)


def pack_kinds(root: Path) -> dict[Path, int]:
    """Each pack file of a plain repository, and its kind (DATA_PACK or TREE_PACK)."""
    backend = LocalBackend(str(root))
    return {p: packs.read_trailer(backend, p.name, p.stat().st_size, PLAIN.mac).kind
            for p in pack_files(root)}


@pytest.mark.parametrize("kind", [DATA_PACK, TREE_PACK])
def test_packs_that_are_gone_leave_the_index_so_the_next_backup_stores_them_again(root, repo,
                                                                                   kind):
    backup(repo, volume_tar(seed=1, size=3 << 20))
    # a pack of the first backup's (a data pack, or one of its tree pieces)
    lost = next(p for p, k in pack_kinds(root).items() if k == kind)
    backup(repo, volume_tar(seed=2, size=3 << 20))
    lost.unlink()
    result = repaired(root)
    assert result.lost_packs == 1 and result.lost_blobs > 0 and result.problems == []
    reopened = Repository.open(str(root))
    check = check_packs(reopened.blobs)
    assert check.problems == []                   # the index names only what is there
    # a backup of the same data stores the lost blobs again, and then restores
    before = pack_kinds(root)
    again = backup(reopened, volume_tar(seed=1, size=3 << 20))
    if kind == DATA_PACK:
        assert again.new_chunks >= result.lost_blobs - 2
    else:   # tree pieces are not counted in new_chunks: a new tree pack holds them
        assert again.new_chunks == 0
        assert [k for p, k in pack_kinds(root).items() if p not in before] == [TREE_PACK]
    reader = Repository.open(str(root))
    assert restored(reader, reader.reveal(reader.load(again.snapshot))) == \
        volume_tar(seed=1, size=3 << 20)


def test_a_pack_with_a_bad_trailer_is_reported_and_the_rest_indexed(root, two):
    for path in index_files(root):
        path.unlink()
    bad = pack_files(root)[0]
    body = bytearray(bad.read_bytes())
    body[-1 - packs.TAIL_BYTES] ^= 0xFF           # inside the trailer's last record
    body[-3] = 0x7F                               # and an unknown version in the tail
    bad.write_bytes(bytes(body))
    result = repaired(root)
    assert len(result.problems) == 1 and bad.name in result.problems[0]
    assert result.from_trailers == result.packs - 1 and result.index_written == 1


def test_an_index_entry_for_a_pack_of_another_length_is_read_from_its_trailer(root, two):
    """An index object (say a crafted one) giving a stored pack another length: the pack
    is indexed from its trailer, at the length it has."""
    pack = pack_files(root)[0]
    name, raw = packindex.encode([(PackInfo(bytes.fromhex(pack.name), 12345, DATA_PACK),
                                   [(b"\x01" * 32, 0, 5, 5)])], PLAIN.mac)
    (root / "index" / name).write_bytes(raw)
    result = repaired(root)
    assert result.problems == [] and result.from_trailers == 1
    assert_sound(root, *two)


def test_read_all_packs_ignores_an_index_that_lies_about_a_pack(root, two):
    """The old index names a blob in a pack that does not hold it: by default its entries
    are kept (as restic's repair index does); --read-all-packs rebuilds from the packs."""
    pack = next(p for p, kind in pack_kinds(root).items() if kind == DATA_PACK)  # its kind
    name, raw = packindex.encode([(PackInfo(bytes.fromhex(pack.name), pack.stat().st_size,
                                            DATA_PACK), [(b"\x01" * 32, 0, 5, 5)])],
                                 PLAIN.mac)
    (root / "index" / name).write_bytes(raw)
    kept = repaired(root)
    assert kept.problems == [] and kept.from_trailers == 0
    assert any("does not hold 1 of the blobs" in p
               for p in check_packs(Repository.open(str(root)).blobs).problems)
    rebuilt = repaired(root, read_all_packs=True)
    assert rebuilt.from_trailers == rebuilt.packs and rebuilt.from_index == 0
    assert_sound(root, *two)


def test_an_unindexed_pack_of_a_killed_backup_is_indexed(root, repo, two):
    builder = PackBuilder(DATA_PACK, PLAIN.mac)
    builder.add(b"\x02" * 32, DATA, b"left by a killed backup", 23, NO_SLOT)
    pack_id, data = builder.finish()
    repo.backend.write_bytes(packs.pack_key(pack_id), data)
    result = repaired(root)
    assert result.from_trailers == 1 and result.problems == []
    index = Repository.open(str(root)).blobs.index()
    assert index.has(b"\x02" * 32)


def test_dry_run_writes_and_removes_nothing(root, two):
    for path in index_files(root)[:1]:
        path.unlink()
    before = index_files(root)
    result = repaired(root, dry_run=True)
    assert result.dry_run and result.from_trailers >= 1 and result.blobs > 0
    assert result.index_written == result.index_removed == 0
    assert index_files(root) == before


def test_killed_between_writing_and_removing_the_next_run_finishes(root, two, monkeypatch):
    failing = LocalBackend.delete_many
    monkeypatch.setattr(LocalBackend, "delete_many",
                        lambda self, keys: [(k, "refused") for k in keys])
    first = repaired(root)
    assert len(first.problems) == 2 and first.index_removed == 0
    assert len(index_files(root)) == 3            # both generations: consistent, loadable
    assert_sound(root, *two)
    monkeypatch.setattr(LocalBackend, "delete_many", failing)
    second = repaired(root)
    assert second.problems == [] and second.index_removed == 2 and len(index_files(root)) == 1


def test_a_packs_directory_that_cannot_be_listed_stops_it_before_any_write(root, two):
    before = index_files(root)
    (root / "packs" / "zz").symlink_to("/tmp")
    with pytest.raises(RepositoryError, match="cannot be rebuilt"):
        repaired(root)
    assert index_files(root) == before


def test_an_encrypted_repository_is_repaired_with_the_key_alone(tmp_path):
    identity, key_file, root = tmp_path / "id.txt", tmp_path / "repo.key", tmp_path / "repo"
    root.mkdir()
    Repository.init(str(root), config=RepoConfig.new(avg_size=4096, layout=PACKED,
                                                     pack_size=1 << 20),
                    encrypt_to=[age_identity(identity)], key_file=str(key_file))
    made = backup(opened(root, key_file), volume_tar(seed=3, size=1 << 20))
    for path in index_files(root):
        path.unlink()
    # a pack planted by someone without the key: its trailer's MAC fails, so it is refused
    builder = PackBuilder(DATA_PACK, PLAIN.mac)
    builder.add(b"\x03" * 32, DATA, b"planted", 7, NO_SLOT)
    planted, data = builder.finish()
    LocalBackend(str(root)).write_bytes(packs.pack_key(planted), data)
    result = repair_index(opened(root, key_file), RepairIndexOptions())      # no identity
    assert len(result.problems) == 1 and planted in result.problems[0]
    assert result.from_trailers == result.packs - 1 >= 1
    reader = opened(root, key_file, identity)
    assert not reader.blobs.index().has(b"\x03" * 32)
    assert restored(reader, reader.reveal(reader.load(made.snapshot))) == volume_tar(
        seed=3, size=1 << 20)


def test_other_layouts_are_refused(tmp_path):
    repo = chunked_repo(tmp_path / "chunked", seed=1)
    with pytest.raises(RepositoryError, match="not packed"):
        repair_index(repo, RepairIndexOptions())


def test_the_command(root, two):
    lost = index_files(root)[0]
    lost.unlink()
    ok = run_cli("repair-index", "-r", str(root))
    assert ok.code == 0, ok.stderr
    assert "index names" in ok.stdout and "1 index objects written, 1 removed" in ok.stdout
    as_json = run_cli("repair-index", "-r", str(root), "--dry-run", "--json")
    assert as_json.code == 0 and '"from_index"' in as_json.stdout
    pack_files(root)[0].unlink()
    gone = run_cli("repair-index", "-r", str(root))
    assert gone.code == 6 and "packs are gone" in gone.stderr
    assert "Traceback" not in gone.stderr
    # the exit code of a problem the repair could not fix
    bad = pack_files(root)[0]
    for path in index_files(root):
        path.unlink()
    bad.write_bytes(b"not a pack at all" * 10)
    failed = run_cli("repair-index", "-r", str(root))
    assert failed.code == 6 and "1 problem(s)" in failed.stderr

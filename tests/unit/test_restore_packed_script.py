"""docs/format.md's python3 script restores a packed snapshot with python3's standard
library, zstd and GNU tar (age and openssl when encrypted): the script is taken from the
doc and run here on packed repositories volbackup made, plain and encrypted, intact and
damaged."""

from __future__ import annotations

import ast
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from tests.unit.chunkrepos import AVG, backup, blob_count, chunk_list, chunked_repo
from tests.unit.tars import end_of_members, make_tar
from tests.unit.test_encryption import age_identity, opened
from tests.unit.test_packsweep import AGO, keep_last
from tests.unit.test_restore_chunked_script import make_tree, snapshot_of
from volbackup.repo import packs
from volbackup.repo.config import MIN_PACK, PACKED, RepoConfig
from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository, split_id
from volbackup.stream.archive import END_MARKER

DOC = Path(__file__).parents[2] / "docs" / "format.md"

pytestmark = pytest.mark.skipif(not shutil.which("zstd"), reason="needs the zstd command")
needs_age = pytest.mark.skipif(not (shutil.which("age") and shutil.which("openssl")),
                               reason="needs the age and openssl commands")


def documented_script() -> str:
    match = re.search(r"<!-- restore-packed.py -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/format.md lost its restore-packed.py block"
    return match[1]


def test_the_script_needs_only_the_standard_library():
    imported = set()
    for node in ast.walk(ast.parse(documented_script())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported


def stored_tar(tree: Path) -> bytes:
    """GNU tar of `tree` as a snapshot stores it: up to its end-of-archive marker."""
    tar = subprocess.run(["tar", "--create", "--format=pax", "--numeric-owner", "-C",
                          str(tree), "."], capture_output=True, check=True).stdout
    return tar[:end_of_members(tar) + END_MARKER]


def file_tar(data: bytes) -> bytes:
    """A tar of a root and one file holding `data`, as a snapshot stores it."""
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    tar = make_tar([(root, b""), (tarfile.TarInfo("./data.bin"), data)])
    return tar[:end_of_members(tar) + END_MARKER]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    return root


def encrypted_packed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An encrypted packed repository (small chunks and packs): (root, key file, identity
    file with the key file appended, as the doc asks)."""
    root, key_file, identity = tmp_path / "repo", tmp_path / "repo.key", tmp_path / "id.txt"
    root.mkdir()
    Repository.init(str(root), config=RepoConfig.new(avg_size=AVG, layout=PACKED,
                                                     pack_size=MIN_PACK),
                    encrypt_to=[age_identity(identity)], key_file=str(key_file))
    with_key = tmp_path / "id-and-key.txt"
    with_key.write_text(identity.read_text() + key_file.read_text())
    return root, key_file, with_key


def run_script(tmp_path: Path, root: Path, manifest: Manifest, target: str,
               identity: Path | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "restore-packed.py"
    script.write_text(documented_script())
    _, stamp = split_id(manifest.snapshot)
    args = [sys.executable, "-I", str(script), str(root), manifest.volume, stamp, target]
    return subprocess.run(args + ([str(identity)] if identity else []), capture_output=True)


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*/*"))


def new_target(tmp_path: Path, name: str = "target") -> Path:
    target = tmp_path / name
    target.mkdir()
    return target


def assert_restores(tmp_path, root, manifest, tree, tar, identity=None):
    """The script extracts `tree` exactly, and writes the stored tar stream to stdout."""
    target = new_target(tmp_path)
    done = run_script(tmp_path, root, manifest, str(target), identity)
    assert done.returncode == 0, done.stderr.decode()
    assert snapshot_of(target) == snapshot_of(tree)
    assert os.stat(target / "hard.bin").st_ino == os.stat(target / "big.bin").st_ino
    streamed = run_script(tmp_path, root, manifest, "-", identity)
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert streamed.stdout == tar
    return done


def test_the_documented_script_restores_a_plain_packed_snapshot(tmp_path, tree):
    tar = stored_tar(tree)
    repo = chunked_repo(tmp_path / "repo", layout=PACKED)
    manifest = backup(repo, tar, volume="vol")
    assert blob_count(manifest) > 1000 and len(pack_files(tmp_path / "repo")) >= 8
    done = assert_restores(tmp_path, tmp_path / "repo", manifest, tree, tar)
    assert done.stderr == b""


@needs_age
def test_the_documented_script_restores_an_encrypted_packed_snapshot(tmp_path, tree):
    tar = stored_tar(tree)
    root, key_file, identity = encrypted_packed(tmp_path)
    manifest = backup(opened(root, key_file), tar, volume="vol")
    assert len(pack_files(root)) >= 8
    assert_restores(tmp_path, root, manifest, tree, tar, identity)


@needs_age
def test_the_script_refuses_a_missing_or_wrong_key_and_a_forged_manifest(tmp_path):
    root, key_file, identity = encrypted_packed(tmp_path)
    manifest = backup(opened(root, key_file), file_tar(random.Random(1).randbytes(1 << 20)),
                      volume="vol")
    target = new_target(tmp_path)
    bare = tmp_path / "bare.txt"      # the identity alone, without the key file
    bare.write_text("".join(line + "\n" for line in identity.read_text().splitlines()
                            if line.startswith("AGE-SECRET-KEY-")))
    for who, message in ((None, b"the repository is encrypted: give IDENTITY_FILE"),
                         (bare, b"append the key file to it")):
        done = run_script(tmp_path, root, manifest, str(target), who)
        assert done.returncode == 1 and message in done.stderr
    other = tmp_path / "other.txt"    # another repository's key
    (tmp_path / "elsewhere").mkdir()
    encrypted_packed(tmp_path / "elsewhere")
    other.write_text(bare.read_text() + (tmp_path / "elsewhere" / "repo.key").read_text())
    done = run_script(tmp_path, root, manifest, str(target), other)
    assert done.returncode == 1 and b"is not this repository's" in done.stderr
    stored = root / "snapshots" / "vol" / f"{split_id(manifest.snapshot)[1]}.json"
    stored.write_text(stored.read_text().replace('"host": "', '"host": "x'))
    done = run_script(tmp_path, root, manifest, str(target), identity)
    assert done.returncode == 1 and b"the manifest is not authentic" in done.stderr
    assert list(target.iterdir()) == []


def damage_record(root: Path, repo: Repository, manifest: Manifest, n: int) -> str:
    """Flip a byte in the middle of the record of the snapshot's `n`th chunk; its id."""
    victim = chunk_list(repo, manifest)[n][0]
    store = repo.blobs
    store.forget()
    location = store.index().locations(bytes.fromhex(victim))[0]
    path = root / "packs" / location.pack.hex[:2] / location.pack.hex
    data = bytearray(path.read_bytes())
    data[location.offset + location.stored // 2] ^= 0x55
    path.write_bytes(bytes(data))
    return victim


@pytest.mark.parametrize("encrypted", [False, pytest.param(True, marks=needs_age)])
@pytest.mark.parametrize("where", [1, -2])      # near the start, and near the end
def test_a_damaged_chunk_fails_loudly_before_tar_runs(tmp_path, tree, encrypted, where):
    tar = stored_tar(tree)
    if encrypted:
        root, key_file, identity = encrypted_packed(tmp_path)
        repo = opened(root, key_file)
    else:
        root, identity = tmp_path / "repo", None
        repo = chunked_repo(root, layout=PACKED)
    manifest = backup(repo, tar, volume="vol")
    victim = damage_record(root, repo, manifest, where)
    target = new_target(tmp_path)
    done = run_script(tmp_path, root, manifest, str(target), identity)
    assert done.returncode == 1
    assert f"restore-packed: chunk {victim} is corrupt".encode() in done.stderr
    assert list(target.iterdir()) == []
    streamed = run_script(tmp_path, root, manifest, "-", identity)
    assert streamed.returncode == 1 and streamed.stdout == b""


def swap_records(root: Path, repo: Repository, manifest: Manifest) -> str:
    """Swap two records of one pack with the same stored length: each is still a sound
    record (zstd frame, or sealed frame) of a chunk, under the other's id. The id of the
    one the stream reaches first."""
    store = repo.blobs
    store.forget()
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    for chunk_id, _ in chunk_list(repo, manifest):
        location = store.index().locations(bytes.fromhex(chunk_id))[0]
        first = seen.setdefault((location.pack.hex, location.stored),
                                (chunk_id, location.offset))
        if first[0] != chunk_id and first[1] != location.offset:
            break
    else:
        raise AssertionError("no two records of one pack have the same length")
    path = root / "packs" / location.pack.hex[:2] / location.pack.hex
    data = bytearray(path.read_bytes())
    a, b, n = first[1], location.offset, location.stored
    data[a:a + n], data[b:b + n] = data[b:b + n], data[a:a + n]
    path.write_bytes(bytes(data))
    return first[0]


@pytest.mark.parametrize("encrypted", [False, pytest.param(True, marks=needs_age)])
def test_a_record_moved_under_another_id_is_refused_by_its_id(tmp_path, tree, encrypted):
    """The frames are sound, their plaintexts are not what the ids say: the script checks
    ids (it does not check GCM tags)."""
    if encrypted:
        root, key_file, identity = encrypted_packed(tmp_path)
        repo = opened(root, key_file)
    else:
        root, identity = tmp_path / "repo", None
        repo = chunked_repo(root, layout=PACKED)
    manifest = backup(repo, stored_tar(tree), volume="vol")
    victim = swap_records(root, repo, manifest)
    target = new_target(tmp_path)
    done = run_script(tmp_path, root, manifest, str(target), identity)
    assert done.returncode == 1 and list(target.iterdir()) == []
    assert f"restore-packed: chunk {victim} is corrupt: it does not match its name".encode() \
        in done.stderr
    assert b"zstd" not in done.stderr      # every frame was sound


def test_a_missing_pack_names_the_chunk(tmp_path, tree):
    repo = chunked_repo(tmp_path / "repo", layout=PACKED)
    manifest = backup(repo, stored_tar(tree), volume="vol")
    victim = chunk_list(repo, manifest)[-1][0]
    store = repo.blobs
    store.forget()
    pack = store.index().locations(bytes.fromhex(victim))[0].pack.hex
    (tmp_path / "repo" / "packs" / pack[:2] / pack).unlink()
    target = new_target(tmp_path)
    done = run_script(tmp_path, tmp_path / "repo", manifest, str(target))
    assert done.returncode == 1 and list(target.iterdir()) == []
    assert re.search(rb"restore-packed: chunk [0-9a-f]{64} is missing", done.stderr)


@pytest.mark.parametrize("encrypted", [False, pytest.param(True, marks=needs_age)])
def test_a_lost_index_is_read_from_the_pack_trailers(tmp_path, tree, encrypted):
    tar = stored_tar(tree)
    if encrypted:
        root, key_file, identity = encrypted_packed(tmp_path)
        repo = opened(root, key_file)
    else:
        root, identity = tmp_path / "repo", None
        repo = chunked_repo(root, layout=PACKED)
    manifest = backup(repo, tar, volume="vol")
    for index_object in (root / "index").iterdir():
        index_object.unlink()
    done = assert_restores(tmp_path, root, manifest, tree, tar, identity)
    assert b"reading every pack's trailer" in done.stderr


@needs_age
def test_a_forged_index_object_or_trailer_is_left_out(tmp_path, tree):
    """An encrypted repository's index objects and trailers count only with their MAC: a
    forged index object is left out (the trailers are read instead), and a pack whose
    trailer was altered is refused."""
    tar = stored_tar(tree)
    root, key_file, identity = encrypted_packed(tmp_path)
    manifest = backup(opened(root, key_file), tar, volume="vol")
    (index_object,) = (root / "index").iterdir()
    forged = bytearray(index_object.read_bytes())
    forged[-1] ^= 1                               # the MAC no longer matches
    index_object.write_bytes(bytes(forged))
    done = assert_restores(tmp_path, root, manifest, tree, tar, identity)
    assert f"index object {index_object.name} left out: its MAC does not match".encode() \
        in done.stderr
    pack = pack_files(root)[0]
    data = bytearray(pack.read_bytes())
    data[-13] ^= 1                                # the last byte of the trailer's MAC
    pack.write_bytes(bytes(data))
    target = new_target(tmp_path, "again")
    done = run_script(tmp_path, root, manifest, str(target), identity)
    assert done.returncode == 1 and list(target.iterdir()) == []
    assert f"pack {pack.name} left out: its MAC does not match".encode() in done.stderr


@needs_age
def test_records_prune_moved_under_several_data_keys_restore(tmp_path):
    """Prune repacks records as they are stored, with their sealed keys: a new pack holds
    several slots, and the script opens each record with its own."""
    root, key_file, identity = encrypted_packed(tmp_path)
    old = random.Random(5).randbytes(3 << 20)
    fill, mib = random.Random(6).randbytes(3 << 20), 1 << 20
    # the newer snapshot keeps 400 KB of each MiB of the older one: each of its packs is
    # mostly unused once the older snapshot goes, and is repacked
    new = b"".join(old[i * mib:i * mib + 400_000] + fill[i * mib + 400_000:(i + 1) * mib]
                   for i in range(3))
    backup(opened(root, key_file), file_tar(old), when=AGO)
    manifest = backup(opened(root, key_file), file_tar(new),
                      when=AGO + timedelta(days=1))
    swept = keep_last(opened(root, key_file)).chunks
    assert swept.problems == [] and swept.packs_repacked >= 2
    slots = []
    for path in pack_files(root):
        data = path.read_bytes()
        length, flags = packs.parse_tail(data[-packs.TAIL_BYTES:], len(data), path.name)
        slots.append(data[len(data) - packs.TAIL_BYTES - length:][:3])
    assert max(int.from_bytes(head[1:3], "little") for head in slots) >= 3
    streamed = run_script(tmp_path, root, manifest, "-", identity)
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert streamed.stdout == file_tar(new)

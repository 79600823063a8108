"""The repository config (untrusted input: read from the store) and `init`."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.chunkrepos import backup, chunked_repo, restored, volume_tar
from tests.unit.manifests import make_manifest
from volbackup.errors import RepositoryError
from volbackup.repo.backends import LocalBackend
from volbackup.repo.config import (CHUNKED, CONFIG_KEY, DEFAULT_AVG, DEFAULT_PACKED_AVG, PACKED,
                                   RepoConfig)
from volbackup.repo.repository import Repository
from volbackup.stream import archive


def config_json(**changes) -> bytes:
    data = json.loads(RepoConfig.new().to_json())
    chunker = changes.pop("chunker", {})
    data.update(changes)
    if isinstance(chunker, dict):
        data["chunker"].update(chunker)
    else:
        data["chunker"] = chunker
    return json.dumps(data).encode()


def test_a_new_config_reads_back_as_itself():
    config = RepoConfig.new(avg_size=512 << 10)
    assert RepoConfig.from_json(config.to_json(), "config") == config
    assert config.chunker.min_size == 128 << 10 and config.chunker.max_size == 2 << 20


def test_two_new_configs_differ_in_id_and_seed():
    a, b = RepoConfig.new(), RepoConfig.new()
    assert a.id != b.id and a.chunker.seed != b.chunker.seed


def test_a_newer_format_version_asks_for_an_upgrade():
    with pytest.raises(RepositoryError, match=r"format version 4; .*upgrade volbackup"):
        RepoConfig.from_json(config_json(format_version=4), "config")


def test_a_packed_config_round_trips_and_a_chunked_one_has_no_pack_size():
    packed = RepoConfig.new(layout=PACKED, pack_size=4 << 20)
    assert RepoConfig.from_json(packed.to_json(), "config") == packed
    assert (packed.layout, packed.format_version, packed.pack_size) == (PACKED, 3, 4 << 20)
    assert b"pack_size" not in RepoConfig.new().to_json()     # as versions before packs


def test_each_layout_has_its_own_default_chunk_size():
    """256 KiB in a packed repository (min 64 KiB, max 1 MiB), 1 MiB in a chunked one; the
    three sizes are written into the config, and a repository keeps what it was made with
    (packed ones made at 1M, and at 512K, the default before 256K)."""
    packed, chunked = RepoConfig.new(layout=PACKED), RepoConfig.new(layout=CHUNKED)
    assert (packed.chunker.min_size, packed.chunker.avg_size, packed.chunker.max_size) == (
        64 << 10, DEFAULT_PACKED_AVG, 1 << 20)
    assert (chunked.chunker.min_size, chunked.chunker.avg_size, chunked.chunker.max_size) == (
        256 << 10, DEFAULT_AVG, 4 << 20)
    raw = json.loads(packed.to_json())["chunker"]
    assert (raw["min_size"], raw["avg_size"], raw["max_size"]) == (65536, 262144, 1048576)
    older = RepoConfig.new(avg_size=1 << 20, layout=PACKED)   # a packed one made at 1M
    assert RepoConfig.from_json(older.to_json(), "config").chunker.avg_size == 1 << 20
    at_512k = RepoConfig.new(avg_size=512 << 10, layout=PACKED)
    assert RepoConfig.from_json(at_512k.to_json(), "config").chunker == at_512k.chunker
    assert (at_512k.chunker.min_size, at_512k.chunker.max_size) == (128 << 10, 2 << 20)
    plain = RepoConfig.new()        # the library's own default stays what it was
    assert (plain.layout, plain.chunker.avg_size, plain.pack_size) == (CHUNKED, 1 << 20, None)


@pytest.mark.parametrize("changes, message", [
    ({"pack_size": 1 << 10}, "pack size 1024; it must be"),
    ({"pack_size": 1 << 30}, "pack size 1073741824"),
    ({"pack_size": "16M"}, "pack size '16M'"),
    ({"pack_size": True}, "pack size True"),
    ({"pack_size": None}, "pack size None"),
    ({"format_version": 1}, "packed repository has format version 3, not 1"),
    ({"layout": "chunked"}, "gives a pack size to a chunked repository"),
    ({"layout": "bundled"}, "asks for layout 'bundled'"),
], ids=["small", "large", "text", "bool", "none", "version", "chunked-with-size", "unknown"])
def test_a_bad_packed_config_is_refused(changes, message):
    data = json.loads(RepoConfig.new(layout=PACKED).to_json())
    data.update(changes)
    with pytest.raises(RepositoryError, match=re.escape(message)):
        RepoConfig.from_json(json.dumps(data).encode(), "config")


# Random seeds and ids inside: explicit ids keep the test names the same in every process
# (pytest-xdist's workers must collect the same names).
JUNK = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"[]", "not a volbackup repository config"),
    (config_json(format="restic"), "not a volbackup repository config"),
    (config_json(format_version=True), "invalid format version"),
    (config_json(format_version="1"), "invalid format version"),
    (config_json(format_version=0), "invalid format version"),
    (config_json(chunker=[]), "invalid chunker"),
    (config_json(chunker={"extra": 1}), "invalid chunker"),
    (config_json(chunker={"min_size": True}), "non-integer"),
    (config_json(chunker={"seed": 1.5}), "non-integer"),
    (config_json(chunker={"avg_size": "1048576"}), "non-integer"),
    (config_json(chunker={"min_size": 10}), "out of bounds"),
    (config_json(chunker={"max_size": 1 << 30}), "out of bounds"),
    (config_json(chunker={"min_size": 2 << 20, "avg_size": 1 << 20}), "out of bounds"),
    (config_json(chunker={"normalized_chunking": 9}), "out of bounds"),
    (config_json(chunker={"seed": -1}), "out of bounds"),
    (config_json(chunker={"algorithm": "rabin"}), "chunker 'rabin'"),
    (config_json(layout="tree"), "layout 'tree'"),
    (config_json(chunk_hash="md5"), "hash 'md5'"),
    (config_json(compression="lz4"), "compression 'lz4'"),
    (config_json(id=5), "invalid id"),
    (config_json(id="../x"), "invalid id"),
]


@pytest.mark.parametrize("raw, words", JUNK, ids=[f"{i}-{words}" for i, (_, words) in enumerate(JUNK)])
def test_junk_configs_are_refused(raw, words):
    with pytest.raises(RepositoryError) as caught:
        RepoConfig.from_json(raw, "config of repository X")
    message = str(caught.value)
    assert words in message and message.startswith("config of repository X")
    assert "\n" not in message


def test_a_config_without_a_field_is_refused():
    data = json.loads(config_json())
    del data["compression"]
    with pytest.raises(RepositoryError, match="lacks 'compression'"):
        RepoConfig.from_json(json.dumps(data).encode(), "config")


def test_open_refuses_a_repository_with_a_junk_config(tmp_path):
    (tmp_path / "config").write_text("{}")
    with pytest.raises(RepositoryError, match="not a volbackup repository config"):
        Repository.open(str(tmp_path))


# -- init


def files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


def test_init_writes_a_config_that_open_reads(tmp_path):
    made = Repository.init(str(tmp_path))
    assert list(files(tmp_path)) == ["config"]
    opened = Repository.open(str(tmp_path))
    assert opened.layout.name == "chunked" and opened.config == made.config


def test_init_on_a_repository_with_a_config_refuses_and_changes_nothing(tmp_path):
    repo = chunked_repo(tmp_path)
    backup(repo, volume_tar())
    before = files(tmp_path)
    with pytest.raises(RepositoryError, match="already a chunked repository.*nothing was changed"):
        Repository.init(str(tmp_path))
    assert files(tmp_path) == before


def test_a_chunked_repository_made_before_packed_was_the_default_stays_chunked(tmp_path):
    """Its config (as the first versions wrote it: format 1, no pack size, 1 MiB chunks) is
    never rewritten, and backups into it still write loose chunks and a chunk list."""
    config = (b'{\n  "chunk_hash": "sha256",\n  "chunker": {\n    "algorithm": '
              b'"fastcdc-2020-members",\n    "avg_size": 1048576,\n    "max_size": 4194304,\n'
              b'    "min_size": 262144,\n    "normalized_chunking": 1,\n    "seed": 1183741903\n'
              b'  },\n  "compression": "zstd",\n  "format": "volbackup-repository",\n'
              b'  "format_version": 1,\n  "id": "3d9c9e58e4b80d3e14203eb28abdbc85",\n'
              b'  "layout": "chunked"\n}\n')
    (tmp_path / CONFIG_KEY).write_bytes(config)
    repo = Repository.open(str(tmp_path), writable=True)
    assert repo.layout.name == "chunked" and repo.config.chunker.avg_size == 1 << 20
    assert repo.config.to_json() == config
    tar = volume_tar(size=3 << 20)
    made = backup(repo, tar)
    assert made.chunked and not made.tree and made.chunks >= 2
    assert (tmp_path / CONFIG_KEY).read_bytes() == config
    assert any((tmp_path / "chunks").rglob("*")) and not (tmp_path / "packs").exists()
    assert restored(repo, made) == tar


def test_init_on_a_packed_repository_names_its_layout(tmp_path):
    Repository.init(str(tmp_path), config=RepoConfig.new(layout=PACKED))
    before = files(tmp_path)
    with pytest.raises(RepositoryError, match="already a packed repository.*nothing was changed"):
        Repository.init(str(tmp_path))
    assert files(tmp_path) == before


def test_init_on_a_directory_of_other_files_refuses(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    before = files(tmp_path)
    with pytest.raises(RepositoryError, match="not a volbackup repository: it holds etc, passwd"):
        Repository.init(str(tmp_path))
    assert files(tmp_path) == before and not (tmp_path / CONFIG_KEY).exists()


def test_init_over_an_archive_layout_repository_keeps_its_snapshots(tmp_path):
    old = Repository(LocalBackend(tmp_path))
    tar = volume_tar(seed=3)
    snapshot = "pgdata@20261101T000000Z-0001"
    with old.snapshot_writer(snapshot) as writer:
        packed = writer.pack([tar], 3)
    assert list(writer.fields(packed)) == ["catalog"]   # no chunked fields
    manifest = make_manifest(snapshot, "2026-11-01T00:00:00.000Z", archive=writer.archive,
                             bytes=packed.bytes, stored_bytes=packed.stored_bytes,
                             sha256=packed.sha256, entries=packed.entries)
    old.commit(manifest)

    Repository.init(str(tmp_path))
    repo = Repository.open(str(tmp_path))
    assert repo.layout.name == "chunked"
    assert not repo.resolve(snapshot).chunked
    assert restored(repo, repo.resolve(snapshot)) == tar       # still readable
    new = backup(repo, tar)                                     # new ones are chunked
    assert new.chunked and restored(repo, new) == tar
    assert [m.snapshot for m in repo.snapshots().snapshots] == [snapshot, new.snapshot]
    assert isinstance(repo.unpacker(repo.resolve(snapshot)), archive.Unpacker)

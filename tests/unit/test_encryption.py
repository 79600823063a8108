"""Encrypted chunked repositories without an engine: Repository on a real LocalBackend, tars
made in memory, stock `age` and `zstd` as an outsider's tools. Round trips (age and SSH
recipients), what the stored bytes give away (nothing), and forgeries by a writer to the
repository who knows only public data."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pyrage
import pytest
import zstandard
from pyrage import x25519

from tests.unit.chunkrepos import (AVG, backup, chunk_files, chunk_list, list_key,
                                   read_until_error, restored, volume_tar)
from tests.unit.tars import end_of_members, make_tar
from volbackup.errors import IntegrityError, KeyProblem
from volbackup.repo import crypto
from volbackup.repo.chunkstore import chunk_key
from volbackup.repo.config import CONFIG_KEY, Encryption, RepoConfig
from volbackup.repo.repository import Repository
from volbackup.repo.sealing import Secrets
from volbackup.stream.archive import END_MARKER

MARKERS = (b"FILENAME-MARKER", b"CONTENT-MARKER", b"LABELVALUE123", b"OPTVALUE456",
           b"MOUNTPATH-MARKER")


def age_identity(path: Path) -> str:
    """Write a new age identity file at `path`; its recipient."""
    identity = x25519.Identity.generate()
    path.write_text(f"# test identity\n{identity}\n")
    return str(identity.to_public())


def ssh_identity(path: Path) -> str:
    """An unencrypted ssh-ed25519 key at `path` (ssh-keygen); its public key."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test",
                    "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def encrypted_repo(root: Path, recipients: list[str], key_file: Path) -> Repository:
    root.mkdir(exist_ok=True)
    return Repository.init(str(root), config=RepoConfig.new(avg_size=AVG),
                           encrypt_to=recipients, key_file=str(key_file))


def opened(root: Path, key_file: Path | None = None, identity: Path | None = None,
           trust: bool = False) -> Repository:
    return Repository.open(str(root), secrets=Secrets(key_file and str(key_file),
                                                      identity and str(identity), trust))


@pytest.fixture
def setup(tmp_path):
    """An encrypted repository to one age recipient: (root, key file, identity file)."""
    identity = tmp_path / "identity.txt"
    key_file = tmp_path / "repo.key"
    encrypted_repo(tmp_path / "repo", [age_identity(identity)], key_file)
    return tmp_path / "repo", key_file, identity


def marked_tar() -> bytes:
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    tar = make_tar([(root, b""), (tarfile.TarInfo("./FILENAME-MARKER"), b"CONTENT-MARKER" * 5000),
                    (tarfile.TarInfo("./data.bin"), volume_tar(seed=7, size=200_000))])
    return tar[:end_of_members(tar) + END_MARKER]


def every_stored_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def repository_key(key_file: Path) -> crypto.RepositoryKey:
    return crypto.load_key_file(str(key_file))


# -- round trips


def test_round_trip_with_an_age_recipient(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    stored = json.loads((root / "snapshots" / "pgdata" / f"{manifest.archive[:-7]}.json")
                        .read_text())
    assert stored["encrypted"] is True and stored["format_version"] == 3
    assert stored["labels"] == {} and stored["tar_sha256"] is None and stored["sealed"]
    reader = opened(root, key_file, identity)
    assert restored(reader, reader.load(manifest.snapshot)) == tar


def test_exclude_patterns_are_sealed_and_older_sealed_parts_still_open(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    with_patterns = backup(opened(root, key_file), tar, excluded=["cache", "/tmp/**"])
    without = backup(opened(root, key_file), tar, volume="other")
    stored = json.loads((root / "snapshots" / "pgdata" / f"{with_patterns.archive[:-7]}.json")
                        .read_text())
    assert stored["excluded"] is None  # the patterns name paths: private, like labels
    reader = opened(root, key_file, identity)
    assert reader.reveal(reader.load(with_patterns.snapshot)).excluded == ["cache", "/tmp/**"]
    # A sealed part without `excluded` (older versions, or no patterns) is still valid.
    assert reader.reveal(reader.load(without.snapshot)).excluded is None


def test_round_trip_with_an_ssh_ed25519_recipient(tmp_path):
    ssh_key = tmp_path / "id_ed25519"
    root, key_file = tmp_path / "repo", tmp_path / "repo.key"
    encrypted_repo(root, [ssh_identity(ssh_key)], key_file)
    tar = volume_tar(seed=3)
    manifest = backup(opened(root, key_file), tar)
    reader = opened(root, key_file, ssh_key)
    whole = reader.reveal(reader.load(manifest.snapshot))
    assert whole.labels == {"app": "db"}
    assert restored(reader, whole) == tar
    with open(ssh_key, "a") as out:  # the key file appended to the SSH key: still one identity
        out.write(key_file.read_text())
    reader = opened(root, identity=ssh_key)
    assert restored(reader, reader.load(manifest.snapshot)) == tar


def test_either_of_two_recipients_restores(tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    root, key_file = tmp_path / "repo", tmp_path / "repo.key"
    encrypted_repo(root, [age_identity(one), age_identity(two)], key_file)
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    for identity in (one, two):
        reader = opened(root, key_file, identity)
        assert restored(reader, reader.load(manifest.snapshot)) == tar
    stranger = tmp_path / "stranger.txt"
    age_identity(stranger)
    reader = opened(root, key_file, stranger)
    with pytest.raises(KeyProblem, match="not encrypted to the identity"):
        restored(reader, reader.load(manifest.snapshot))


def test_a_second_backup_of_the_same_data_writes_no_chunk(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    first = backup(opened(root, key_file), tar)
    before = chunk_files(root)
    second = backup(opened(root, key_file), tar, volume="other")
    assert first.new_chunks == first.chunks > 50
    assert second.new_chunks == 0 and second.stored_bytes == 0
    assert chunk_files(root) == before
    reader = opened(root, key_file, identity)
    assert restored(reader, reader.load(second.snapshot)) == tar


def test_the_key_appended_to_the_identity_file_is_enough(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    with open(identity, "a") as out:
        out.write(key_file.read_text())
    reader = opened(root, identity=identity)
    assert restored(reader, reader.load(manifest.snapshot)) == tar


def test_a_key_file_given_wins_over_the_key_an_identity_file_carries(tmp_path, setup):
    """One identity file can read several repositories; it can carry only one key."""
    root, key_file, identity = setup
    other_key = tmp_path / "other.key"
    encrypted_repo(tmp_path / "other", [age_identity(tmp_path / "other-id.txt")], other_key)
    with open(identity, "a") as out:
        out.write(other_key.read_text())
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    reader = opened(root, key_file, identity)
    assert restored(reader, reader.load(manifest.snapshot)) == tar
    reader = opened(root, identity=identity)  # the carried key alone: not this repository's
    with pytest.raises(KeyProblem, match="is not the key of repository"):
        restored(reader, reader.load(manifest.snapshot))


# -- what stock tools see


@pytest.mark.skipif(not (shutil.which("age") and shutil.which("zstd")), reason="needs age, zstd")
def test_stock_age_and_zstd_give_a_chunks_plaintext(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    name_key = repository_key(key_file)._derive("chunk names")
    offset = 0
    chunks = chunk_list(opened(root, key_file), manifest)[:5]
    assert chunks, "the snapshot lists no chunks"
    for chunk_id, length in chunks:
        age = subprocess.run(["age", "-d", "-i", str(identity), str(root / chunk_key(chunk_id))],
                             capture_output=True, check=True)
        plain = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True,
                               check=True).stdout
        assert plain == tar[offset:offset + length]
        assert crypto._hmac(name_key, plain).hex() == chunk_id
        assert hashlib.sha256(plain).hexdigest() != chunk_id
        offset += length


def test_the_stored_bytes_give_nothing_away(tmp_path, setup):
    root, key_file, identity = setup
    tar = marked_tar()
    manifest = backup(opened(root, key_file), tar, volume="vol")
    # the manifest's private fields, as a real backup fills them
    manifest = replace(manifest, labels={"secret-label": "LABELVALUE123"},
                       driver_options={"o": "OPTVALUE456"},
                       mount_path="/var/lib/MOUNTPATH-MARKER/_data")
    opened(root, key_file).commit(manifest)
    files = every_stored_file(root)
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        for marker in MARKERS:
            assert marker not in data, (marker, path)
        with pytest.raises(zstandard.ZstdError):
            zstandard.ZstdDecompressor().decompressobj().decompress(data)
    plaintexts = {hashlib.sha256(tar[o:o + n]).hexdigest()
                  for o, n in _offsets(chunk_list(opened(root, key_file), manifest))}
    assert plaintexts and not plaintexts & chunk_files(root)
    reader = opened(root, key_file, identity)
    whole = reader.reveal(reader.load(manifest.snapshot))
    assert whole.labels == {"secret-label": "LABELVALUE123"}
    assert whole.mount_path == "/var/lib/MOUNTPATH-MARKER/_data"
    assert restored(reader, whole) == tar


def _offsets(listing):
    offset = 0
    for _, length in listing:
        yield offset, length
        offset += length


# -- forgeries: someone who can write to the repository and knows only its public data


@pytest.fixture
def snapshot(setup):
    root, key_file, identity = setup
    tar = volume_tar()
    manifest = backup(opened(root, key_file), tar)
    return root, key_file, identity, tar, manifest


def refused(root, key_file, identity, manifest, tar, *words):
    reader = opened(root, key_file, identity)
    try:
        seen, error = read_until_error(reader, reader.load(manifest.snapshot))
    except IntegrityError as e:  # refused before a byte
        seen, error = b"", e
    assert isinstance(error, IntegrityError), error
    for word in words:
        assert word in str(error), str(error)
    assert tar.startswith(seen) and len(seen) <= end_of_members(tar)


def test_two_chunks_swapped_are_refused(snapshot):
    root, key_file, identity, tar, manifest = snapshot
    (a, _), (b, _) = chunk_list(opened(root, key_file), manifest)[3:5]
    pa, pb = root / chunk_key(a), root / chunk_key(b)
    data_a = pa.read_bytes()
    pa.write_bytes(pb.read_bytes())
    pb.write_bytes(data_a)
    refused(root, key_file, identity, manifest, tar, f"chunk {a}")  # its size, or its name


def test_a_chunk_encrypted_by_an_outsider_to_the_recipient_is_refused(snapshot):
    root, key_file, identity, tar, manifest = snapshot
    chunk_id, length = chunk_list(opened(root, key_file), manifest)[2]
    recipient = json.loads((root / CONFIG_KEY).read_bytes())["encryption"]["recipients"][0]
    chosen = zstandard.ZstdCompressor().compress(b"A" * length)
    (root / chunk_key(chunk_id)).write_bytes(
        pyrage.encrypt(chosen, [x25519.Recipient.from_str(recipient)]))
    refused(root, key_file, identity, manifest, tar, f"chunk {chunk_id}",
            "does not match its name")


def test_a_chunk_encrypted_to_an_outsider_is_damage_not_a_wrong_identity(tmp_path, snapshot):
    """The identity opened the config's sealed key, so it is a recipient: a chunk it cannot
    open was replaced (exit 6), not read with the wrong identity (exit 17)."""
    root, key_file, identity, tar, manifest = snapshot
    chunk_id, length = chunk_list(opened(root, key_file), manifest)[2]
    outsider = x25519.Recipient.from_str(age_identity(tmp_path / "outsider.txt"))
    frame = zstandard.ZstdCompressor().compress(b"A" * length)
    (root / chunk_key(chunk_id)).write_bytes(pyrage.encrypt(frame, [outsider]))
    reader = opened(root, key_file, identity)
    reader.check_secrets(reading=True)
    refused(root, key_file, identity, manifest, tar, f"chunk {chunk_id}")


def _manifest_path(root: Path, manifest) -> Path:
    return root / "snapshots" / manifest.volume / f"{manifest.snapshot.split('@')[1]}.json"


@pytest.mark.parametrize("field, value", [("bytes", 1), ("host", "elsewhere"),
                                          ("created", "2020-01-01T00:00:00.000Z")])
def test_a_changed_public_field_of_a_manifest_is_refused(snapshot, field, value):
    root, key_file, identity, tar, manifest = snapshot
    path = _manifest_path(root, manifest)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    refused(root, key_file, identity, manifest, tar, "not authentic")


def test_a_sealed_part_an_outsider_encrypted_to_the_recipient_is_refused(snapshot):
    root, key_file, identity, tar, manifest = snapshot
    path = _manifest_path(root, manifest)
    data = json.loads(path.read_text())
    recipient = json.loads((root / CONFIG_KEY).read_bytes())["encryption"]["recipients"][0]
    private = {"labels": {"com.docker.compose.project": "evil"}, "driver_options": {},
               "mount_path": None, "bind_path": None, "source_container": None,
               "tar_sha256": hashlib.sha256(tar).hexdigest()}
    data["sealed"] = base64.b64encode(pyrage.encrypt(
        json.dumps(private).encode(), [x25519.Recipient.from_str(recipient)])).decode()
    path.write_text(json.dumps(data))
    refused(root, key_file, identity, manifest, tar, "not authentic")


@pytest.mark.parametrize("change", ["swap", "drop"])
def test_a_changed_chunk_list_with_its_digest_recomputed_is_refused(snapshot, change):
    root, key_file, identity, tar, manifest = snapshot
    list_path = root / list_key(manifest)
    lines = list_path.read_bytes().splitlines(keepends=True)
    if change == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[1]
    new_list = b"".join(lines)
    list_path.write_bytes(new_list)
    path = _manifest_path(root, manifest)
    data = json.loads(path.read_text())
    data["sha256"] = hashlib.sha256(new_list).hexdigest()
    if change == "drop":
        data["chunks"] -= 1
    path.write_text(json.dumps(data))
    refused(root, key_file, identity, manifest, tar, "not authentic")


def _forged_config(root: Path, **encryption_changes) -> dict:
    data = json.loads((root / CONFIG_KEY).read_bytes())
    data["encryption"].update(encryption_changes)
    return data


def test_a_config_with_an_outsiders_recipient_is_refused_by_backup(tmp_path, setup):
    root, key_file, identity = setup
    outsider = age_identity(tmp_path / "outsider.txt")
    (root / CONFIG_KEY).write_text(json.dumps(_forged_config(root, recipients=[outsider])))
    before = every_stored_file(root)
    with pytest.raises(IntegrityError, match="config of repository .* is not authentic"):
        backup(opened(root, key_file), volume_tar())
    assert every_stored_file(root) == before


def _config_sealed_to_the_recipients_with_an_outsiders_key(root: Path) -> crypto.RepositoryKey:
    """What a writer to the bucket can do with public data alone: a key of their own,
    sealed to the real recipients, with its key check and a MAC by it."""
    data = json.loads((root / CONFIG_KEY).read_bytes())
    config = RepoConfig.from_json((root / CONFIG_KEY).read_bytes(), "config")
    recipients = [crypto.parse_recipient(r) for r in data["encryption"]["recipients"]]
    key = crypto.RepositoryKey.generate()
    sealed = base64.b64encode(crypto.encrypt(key.to_text().encode(), recipients)).decode()
    assert config.encryption is not None
    forged = replace(config, encryption=Encryption(config.encryption.recipients, key.check,
                                                   sealed), mac=None)
    forged = replace(forged, mac=key.mac(forged.signed_bytes()))
    (root / CONFIG_KEY).write_bytes(forged.to_json())
    return key


def test_a_config_whose_sealed_key_an_outsider_replaced(snapshot):
    """The key file, or the key carried in the identity file, wins: the forgery is refused.
    With --trust-repository-key the outsider's key is taken (that is what the option
    trusts: docs/security.md); the snapshots made with the real key are then refused as
    not authentic, so nothing the outsider did not write is restored under their key."""
    root, key_file, identity, tar, manifest = snapshot
    _config_sealed_to_the_recipients_with_an_outsiders_key(root)
    with pytest.raises(KeyProblem, match="is not the key of repository"):
        backup(opened(root, key_file), volume_tar())
    reader = opened(root, key_file, identity)
    with pytest.raises(KeyProblem, match="is not the key of repository"):
        restored(reader, reader.load(manifest.snapshot))
    carried = identity.parent / "carried.txt"
    carried.write_text(identity.read_text() + key_file.read_text())
    reader = opened(root, identity=carried, trust=True)
    with pytest.raises(KeyProblem, match="is not the key of repository"):
        restored(reader, reader.load(manifest.snapshot))
    reader = opened(root, identity=identity, trust=True)
    with pytest.raises(IntegrityError, match="not authentic"):
        restored(reader, reader.load(manifest.snapshot))


def test_trust_repository_key_reads_without_the_key_file(snapshot):
    root, key_file, identity, tar, manifest = snapshot
    with pytest.raises(KeyProblem, match="--trust-repository-key"):
        reader = opened(root, identity=identity)
        restored(reader, reader.load(manifest.snapshot))
    reader = opened(root, identity=identity, trust=True)
    assert restored(reader, reader.load(manifest.snapshot)) == tar


@pytest.mark.parametrize("downgrade", ["config removed", "plain config"])
def test_a_repository_downgraded_to_plain_is_refused_to_whoever_holds_a_secret(
        snapshot, downgrade):
    """A writer to the repository removes the config, or writes a plain one: a backup host
    with the key file would store its data in the clear, and a restore with the identity
    would take the writer's plain snapshots. Holding a secret means expecting encryption."""
    root, key_file, identity, tar, manifest = snapshot
    if downgrade == "config removed":
        (root / CONFIG_KEY).unlink()
    else:
        (root / CONFIG_KEY).write_bytes(RepoConfig.new(avg_size=AVG).to_json())
    before = every_stored_file(root)
    for secrets in ((key_file, None), (None, identity), (key_file, identity)):
        with pytest.raises(KeyProblem, match="is not encrypted"):
            opened(root, *secrets)
    assert every_stored_file(root) == before
    assert opened(root).keyring is None  # no secret given: a plain repository, as it says
    # commands that need no secret (list, prune, cleanup) open it without any, whatever
    # the environment says
    os.environ["VOLBACKUP_KEY_FILE"] = str(key_file)
    try:
        assert Repository.open(str(root)).keyring is None
    finally:
        del os.environ["VOLBACKUP_KEY_FILE"]


# -- missing and wrong secrets (library level; the CLI's one-line errors are in
# tests/integration/test_encrypted.py)


def test_backup_without_the_key_writes_nothing(setup):
    root, _, _ = setup
    before = every_stored_file(root)
    with pytest.raises(KeyProblem, match="--key-file"):
        backup(opened(root), volume_tar())
    assert every_stored_file(root) == before


def test_the_key_of_another_repository_is_refused(tmp_path, setup):
    root, _, _ = setup
    other_key = tmp_path / "other.key"
    encrypted_repo(tmp_path / "other", [age_identity(tmp_path / "other-id.txt")], other_key)
    before = every_stored_file(root)
    with pytest.raises(KeyProblem, match="is not the key of repository"):
        backup(opened(root, other_key), volume_tar())
    assert every_stored_file(root) == before


@pytest.mark.parametrize("content", [b"", b"junk\n", b"AGE-SECRET-KEY-1NOTAKEY\n",
                                     b"# volbackup-repository-key-v1: bm90IGEga2V5\n"])
def test_junk_secret_files_are_key_problems(tmp_path, snapshot, content):
    root, key_file, identity, tar, manifest = snapshot
    junk = tmp_path / "junk"
    junk.write_bytes(content)
    with pytest.raises(KeyProblem):
        backup(opened(root, junk), tar)
    reader = opened(root, key_file, junk)
    with pytest.raises(KeyProblem):
        restored(reader, reader.load(manifest.snapshot))


def test_a_passphrase_protected_ssh_key_is_a_key_problem(tmp_path):
    path = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)],
                   check=True)
    with pytest.raises(KeyProblem, match="passphrase"):
        crypto.load_identities(str(path))

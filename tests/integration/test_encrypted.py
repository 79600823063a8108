"""Encrypted chunked repositories end to end: a real engine, the real CLI, a directory
repository and S3 on moto. Round trips, what the stored bytes give away, forgeries, missing
and wrong secrets (exit 17, one line, nothing made), and that no secret is ever printed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pyrage
import pytest
import zstandard
from pyrage import x25519

from tests.conftest import run_cli
from tests.integration.helpers import contents, fill, one_line_error, repo_files
from tests.integration.test_scheduling import write_config
from volbackup.repo import crypto
from volbackup.repo.chunked import iter_list
from volbackup.repo.chunkstore import chunk_key
from volbackup.repo.config import RepoConfig

MARKERS = (b"FILENAME-MARKER", b"CONTENT-MARKER", b"LABELVALUE123", b"73400320")
SECRET_ENV = ("VOLBACKUP_KEY_FILE", "VOLBACKUP_IDENTITY_FILE")


@dataclass
class Keys:
    """One encrypted repository's secrets, and their texts that must never be printed."""

    repo: Path
    key_file: Path
    identity: Path         # age identity, without the key
    carrying: Path         # the same identity with the key file appended
    secrets: list[str]

    def key(self) -> tuple[str, ...]:
        return ("--key-file", str(self.key_file))

    def reading(self) -> tuple[str, ...]:
        return ("--identity", str(self.carrying))


def _without_secret_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


def cli(*args: str, secrets: list[str] = (), env: dict | None = None):
    """Run the CLI with no secret in the environment unless given; assert that no secret
    text appears in its output, whatever the outcome."""
    result = run_cli(*args, env={**(env or {})})
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr, (args, secret)
    return result


@pytest.fixture(autouse=True)
def no_secret_env(monkeypatch):
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


def new_identity(path: Path) -> tuple[str, str]:
    identity = x25519.Identity.generate()
    path.write_text(f"{identity}\n")
    return str(identity.to_public()), str(identity)


def make_keys(tmp_path: Path, *extra_init: str, name: str = "repo") -> Keys:
    repo, key_file = tmp_path / name, tmp_path / f"{name}.key"
    repo.mkdir()
    identity, carrying = tmp_path / f"{name}-id.txt", tmp_path / f"{name}-id+key.txt"
    recipient, secret = new_identity(identity)
    layout = [] if "--layout" in extra_init else ["--layout", "chunked"]   # this module's
    init = run_cli("init", "-r", str(repo), "--encrypt-to", recipient, "--key-file",
                   str(key_file), "--chunk-size", "512K", *layout, *extra_init)
    assert init.code == 0, init.stderr
    assert secret not in init.stdout + init.stderr
    carrying.write_text(identity.read_text() + key_file.read_text())
    key_b64 = key_file.read_text().split(":", 1)[1].strip()
    assert key_b64 not in init.stdout + init.stderr
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    return Keys(repo, key_file, identity, carrying, [secret, secret.lower(), key_b64])


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path)


def ok(*args: str, keys: Keys):
    result = cli(*args, secrets=keys.secrets)
    assert result.code == 0, f"volbackup {' '.join(args)}: {result.stderr}"
    return result


def backed_up(keys: Keys, volume: str) -> dict:
    out = ok("backup", volume, "-r", str(keys.repo), "--json", *keys.key(), keys=keys)
    (vol,) = json.loads(out.stdout)["volumes"]
    return vol


def refused(code: int, *args: str, keys: Keys, words: tuple[str, ...] = ()) -> str:
    result = cli(*args, secrets=keys.secrets)
    assert result.code == code, (args, result.code, result.stderr)
    line = one_line_error(result.stderr)
    for word in words:
        assert word in line, line
    return line


def marked_volume(make_volume, mountpoint):
    volume = make_volume("marked", labels={"secret-label": "LABELVALUE123"})
    fill(mountpoint(volume.name), {"FILENAME-MARKER": b"CONTENT-MARKER" * 20000,
                                   "note": b"hello\n"})
    return volume


def volume_names(client) -> set[str]:
    return {v.name for v in client.volumes.list()}


# -- round trips


def test_round_trip_dedup_and_nothing_given_away(keys, make_volume, mountpoint, names, client):
    source = marked_volume(make_volume, mountpoint)
    fill(mountpoint(source.name), {"random.bin": os.urandom(3 << 20)})
    tmpfs = make_volume("opts", driver_opts={"type": "tmpfs", "device": "tmpfs",
                                             "o": "size=73400320"})
    expected = contents(mountpoint(source.name))
    first = backed_up(keys, source.name)
    second = backed_up(keys, source.name)
    assert first["new_chunks"] == first["chunks"] >= 3
    assert second["new_chunks"] == 0 and second["chunks"] == first["chunks"]
    backed_up(keys, tmpfs.name)

    target = names("restored")
    ok("restore", first["snapshot"], "--as", target, "-r", str(keys.repo), *keys.reading(),
       keys=keys)
    assert contents(mountpoint(target)) == expected
    assert client.volumes.get(target).attrs["Labels"] == {"secret-label": "LABELVALUE123"}
    out = ok("verify", "--all", "-r", str(keys.repo), "--identity", str(keys.identity),
             *keys.key(), keys=keys)
    assert out.stdout.count(": ok") == 3

    # every stored byte: no marker (nor the volume's path on the host), nothing zstd reads
    files = [p for p in keys.repo.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for marker in (*MARKERS, mountpoint(source.name).encode()):
            assert marker not in data, (marker, path)
        with pytest.raises(zstandard.ZstdError):
            zstandard.ZstdDecompressor().decompressobj().decompress(data)
    # `show` without secrets prints the public part only
    shown = json.loads(ok("show", first["snapshot"], "-r", str(keys.repo), "--json",
                          keys=keys).stdout)["manifest"]
    assert shown["labels"] == {} and shown["encrypted"] is True and shown["mount_path"] is None


@pytest.mark.skipif(not (shutil.which("age") and shutil.which("zstd")), reason="needs age, zstd")
def test_stock_age_and_zstd_read_a_chunk(keys, make_volume, mountpoint):
    volume = marked_volume(make_volume, mountpoint)
    vol = backed_up(keys, volume.name)
    stamp = vol["snapshot"].split("@")[1]
    with open(keys.repo / "snapshots" / volume.name / f"{stamp}.chunks", "rb") as reader:
        ((chunk_id, length),) = list(iter_list(reader))
    age = subprocess.run(["age", "-d", "-i", str(keys.carrying),
                          str(keys.repo / chunk_key(chunk_id))], capture_output=True, check=True)
    plain = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True,
                           check=True).stdout
    assert len(plain) == length and b"FILENAME-MARKER" in plain
    assert (b"CONTENT-MARKER" * 20000) in plain


def test_an_ssh_ed25519_recipient_and_a_second_recipient(tmp_path, make_volume, mountpoint,
                                                         names):
    ssh_key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_key)],
                   check=True)
    ssh_body = "".join(ssh_key.read_text().splitlines()[1:-1])
    recipients = tmp_path / "recipients"
    recipients.write_text(f"# the backup team\n{Path(f'{ssh_key}.pub').read_text()}\n")
    keys = make_keys(tmp_path, "--recipients-file", str(recipients))
    keys.secrets.append(ssh_body)
    volume = marked_volume(make_volume, mountpoint)
    vol = backed_up(keys, volume.name)
    for identity in (keys.carrying, ssh_key):
        target = names("either")
        ok("restore", vol["snapshot"], "--as", target, "-r", str(keys.repo), "--identity",
           str(identity), *keys.key(), keys=keys)
        assert contents(mountpoint(target)) == contents(mountpoint(volume.name))


def test_force_restore_keeps_a_safety_snapshot_in_an_encrypted_repository(
        keys, make_volume, mountpoint):
    volume = marked_volume(make_volume, mountpoint)
    vol = backed_up(keys, volume.name)
    fill(mountpoint(volume.name), {"later": b"written after the backup\n"})
    out = ok("restore", vol["snapshot"], "--force", "-r", str(keys.repo), "--json",
             *keys.reading(), keys=keys)
    (restored,) = json.loads(out.stdout)["volumes"]
    safety = restored["safety_snapshot"]
    assert safety and "later" not in contents(mountpoint(volume.name))
    exported = keys.repo.parent / "safety.tar.zst"
    ok("export", safety, "-r", str(keys.repo), "-o", str(exported), *keys.reading(), keys=keys)
    with zstandard.open(exported, "rb") as tar:
        assert b"written after the backup" in tar.read()


def test_an_encrypted_repository_on_s3(tmp_path, s3_bucket, s3_client, make_volume,
                                      mountpoint, names, client):
    repo = f"s3://{s3_bucket}/enc"
    recipient, secret = new_identity(tmp_path / "id.txt")
    key_file = tmp_path / "s3.key"
    assert run_cli("init", "-r", repo, "--encrypt-to", recipient, "--key-file",
                   str(key_file)).code == 0
    volume = marked_volume(make_volume, mountpoint)
    backup = run_cli("backup", volume.name, "-r", repo, "--key-file", str(key_file))
    assert backup.code == 0, backup.stderr
    target = names("from-s3")
    denied = run_cli("restore", volume.name, "--as", target, "-r", repo)
    assert denied.code == 17 and target not in volume_names(client)
    restore = run_cli("restore", volume.name, "--as", target, "-r", repo, "--identity",
                      str(tmp_path / "id.txt"), "--key-file", str(key_file))
    assert restore.code == 0, restore.stderr
    assert contents(mountpoint(target)) == contents(mountpoint(volume.name))
    assert secret not in restore.stdout + restore.stderr + backup.stdout + backup.stderr
    objects = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="enc/")["Contents"]
    assert len(objects) >= 4  # config, manifest, a pack and an index (init's default: packed)
    for item in objects:
        data = s3_client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        for marker in MARKERS:
            assert marker not in data, (marker, item["Key"])


# -- forgeries, through the CLI: exit 6, one line, no volume left behind


def _swap_two_chunks(repo: Path, vol: dict) -> None:
    volume, stamp = vol["snapshot"].split("@")
    with open(repo / "snapshots" / volume / f"{stamp}.chunks", "rb") as reader:
        ids = [chunk_id for chunk_id, _ in iter_list(reader)]
    a, b = repo / chunk_key(ids[0]), repo / chunk_key(ids[1])
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _change_host(repo: Path, vol: dict) -> None:
    volume, stamp = vol["snapshot"].split("@")
    path = repo / "snapshots" / volume / f"{stamp}.json"
    data = json.loads(path.read_text())
    data["host"] = "elsewhere"
    path.write_text(json.dumps(data))


def _manifest(repo: Path, vol: dict) -> tuple[Path, dict]:
    volume, stamp = vol["snapshot"].split("@")
    path = repo / "snapshots" / volume / f"{stamp}.json"
    return path, json.loads(path.read_text())


def _recipient(repo: Path):
    return x25519.Recipient.from_str(
        json.loads((repo / "config").read_text())["encryption"]["recipients"][0])


def _outsiders_chunk(repo: Path, vol: dict) -> None:
    """A fresh age file of chosen content, to the public recipient, under a chunk's name."""
    volume, stamp = vol["snapshot"].split("@")
    with open(repo / "snapshots" / volume / f"{stamp}.chunks", "rb") as reader:
        chunk_id, length = next(iter_list(reader))
    frame = zstandard.ZstdCompressor().compress(b"\0" * length)
    (repo / chunk_key(chunk_id)).write_bytes(pyrage.encrypt(frame, [_recipient(repo)]))


def _outsiders_sealed_part(repo: Path, vol: dict) -> None:
    path, data = _manifest(repo, vol)
    private = {"labels": {"evil": "1"}, "driver_options": {}, "mount_path": None,
               "bind_path": None, "source_container": None, "tar_sha256": "0" * 64}
    data["sealed"] = base64.b64encode(pyrage.encrypt(json.dumps(private).encode(),
                                                     [_recipient(repo)])).decode()
    path.write_text(json.dumps(data))


def _chunk_list_lines_swapped(repo: Path, vol: dict) -> None:
    volume, stamp = vol["snapshot"].split("@")
    list_path = repo / "snapshots" / volume / f"{stamp}.chunks"
    lines = list_path.read_bytes().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    list_path.write_bytes(b"".join(lines))
    path, data = _manifest(repo, vol)
    data["sha256"] = hashlib.sha256(b"".join(lines)).hexdigest()
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("tamper, words", [(_swap_two_chunks, ("chunk",)),
                                           (_change_host, ("not authentic",)),
                                           (_outsiders_chunk, ("does not match its name",)),
                                           (_outsiders_sealed_part, ("not authentic",)),
                                           (_chunk_list_lines_swapped, ("not authentic",))])
def test_tampering_is_caught_at_restore_and_verify(keys, make_volume, mountpoint, names,
                                                   client, tamper, words):
    volume = make_volume("tampered")
    fill(mountpoint(volume.name), {"random.bin": os.urandom(3 << 20)})
    vol = backed_up(keys, volume.name)
    assert vol["chunks"] >= 2
    tamper(keys.repo, vol)
    target = names("forged")
    refused(6, "restore", vol["snapshot"], "--as", target, "-r", str(keys.repo),
            *keys.reading(), keys=keys, words=words)
    assert target not in volume_names(client)
    refused(6, "verify", vol["snapshot"], "-r", str(keys.repo), *keys.reading(), keys=keys,
            words=words)


def test_a_config_with_an_outsiders_recipient_makes_backup_refuse(keys, tmp_path, make_volume,
                                                                 mountpoint):
    volume = marked_volume(make_volume, mountpoint)
    config = json.loads((keys.repo / "config").read_text())
    config["encryption"]["recipients"] = [new_identity(tmp_path / "outsider.txt")[0]]
    (keys.repo / "config").write_text(json.dumps(config))
    before = repo_files(keys.repo)
    refused(6, "backup", volume.name, "-r", str(keys.repo), *keys.key(), keys=keys,
            words=("not authentic",))
    assert repo_files(keys.repo) == before


def test_a_config_whose_sealed_key_an_outsider_replaced(keys, make_volume, mountpoint, names,
                                                        client):
    """An outsider seals a key of their own to the real recipients (public data), with its
    key check and MAC. The key file, or the key the identity file carries, refuses that
    config (17); --trust-repository-key takes the outsider's key, and then every snapshot
    made with the real key is refused as not authentic (6)."""
    volume = marked_volume(make_volume, mountpoint)
    vol = backed_up(keys, volume.name)
    config = RepoConfig.from_json((keys.repo / "config").read_bytes(), "config")
    assert config.encryption is not None
    key = crypto.RepositoryKey.generate()
    sealed = base64.b64encode(crypto.encrypt(key.to_text().encode(), [_recipient(keys.repo)]))
    forged = replace(config, encryption=replace(config.encryption, key_check=key.check,
                                                sealed_key=sealed.decode()), mac=None)
    (keys.repo / "config").write_bytes(replace(forged, mac=key.mac(forged.signed_bytes()))
                                       .to_json())
    repo, target = str(keys.repo), names("forged")
    refused(17, "backup", volume.name, "-r", repo, *keys.key(), keys=keys,
            words=("not the key of repository",))
    refused(17, "restore", vol["snapshot"], "--as", target, "-r", repo, *keys.reading(),
            keys=keys, words=("not the key of repository",))
    refused(6, "restore", vol["snapshot"], "--as", target, "-r", repo, "--identity",
            str(keys.identity), "--trust-repository-key", keys=keys, words=("not authentic",))
    assert target not in volume_names(client)


def test_no_command_prints_a_secret(keys, tmp_path, make_volume, mountpoint, names):
    """Every command, in text and --json, given the identity file and the key file."""
    volume = marked_volume(make_volume, mountpoint)
    vol = backed_up(keys, volume.name)
    repo = str(keys.repo)
    both = ("--identity", str(keys.carrying), *keys.key())
    tar = tmp_path / "in.tar"
    subprocess.run(["tar", "-C", mountpoint(volume.name), "-cf", str(tar), "."], check=True)
    for json_flag in ((), ("--json",)):
        out = tmp_path / f"export{len(json_flag)}.tar.zst"
        for args in (("backup", volume.name, *keys.key()),
                     ("import", str(tar), "--volume", names("imported"), *keys.key()),
                     ("list",), ("show", vol["snapshot"]),
                     ("verify", "--all", *both),
                     ("export", vol["snapshot"], "-o", str(out), *both),
                     ("restore", vol["snapshot"], "--as", names("shown"), *both),
                     ("prune", "--keep-last", "5", "--dry-run", *keys.key()),
                     ("cleanup", "--dry-run")):
            ok(*args, "-r", repo, *json_flag, keys=keys)
    # an identity whose secret is damaged: its text must not be echoed either
    damaged = tmp_path / "damaged.txt"
    secret = keys.secrets[0]
    damaged.write_text(secret[:-1] + ("Q" if secret[-1] != "Q" else "P") + "\n")
    keys.secrets.append(damaged.read_text().strip())
    args = ("verify", vol["snapshot"], "-r", repo, "--identity", str(damaged), *keys.key())
    refused(17, *args, keys=keys, words=("invalid AGE-SECRET-KEY",))
    debug = cli("--debug", *args, secrets=keys.secrets)  # the traceback too
    assert debug.code == 17 and "Traceback" in debug.stderr


# -- missing and wrong secrets: exit 17, one line, nothing made


def test_missing_and_wrong_secrets(keys, tmp_path, make_volume, mountpoint, names, client):
    volume = marked_volume(make_volume, mountpoint)
    repo = str(keys.repo)
    before = repo_files(keys.repo)
    refused(17, "backup", volume.name, "-r", repo, keys=keys, words=("--key-file",))
    other = make_keys(tmp_path, name="other")
    keys.secrets += other.secrets
    refused(17, "backup", volume.name, "-r", repo, *other.key(), keys=keys,
            words=("not the key of repository",))
    for junk_key in (b"", b"junk\n", b"# volbackup-repository-key-v1: c2hvcnQ=\n"):
        (tmp_path / "junk.key").write_bytes(junk_key)
        refused(17, "backup", volume.name, "-r", repo, "--key-file", str(tmp_path / "junk.key"),
                keys=keys, words=("not a volbackup repository key file",))
    assert repo_files(keys.repo) == before

    vol = backed_up(keys, volume.name)
    target = names("denied")
    output = tmp_path / "out.tar.zst"
    junk = tmp_path / "junk"
    junk.write_text("AGE-SECRET-KEY-1 this is no key\n")
    keys.secrets.append("this is no key")
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(locked)],
                   check=True)
    keys.secrets.append("".join(locked.read_text().splitlines()[1:-1]))
    cases = [
        ((), "--identity"),                                        # no identity
        (("--identity", str(other.carrying)), "not the key"),      # wrong identity and key
        (("--identity", str(other.identity), *keys.key()), "not encrypted to the identity"),
        (("--identity", str(keys.identity)), "--trust-repository-key"),  # no key
        (("--identity", str(junk), *keys.key()), "invalid AGE-SECRET-KEY"),
        (("--identity", str(locked), *keys.key()), "passphrase"),
        (("--identity", str(keys.identity), "--key-file", str(junk)), "not a volbackup"),
    ]
    for secrets, word in cases:
        refused(17, "restore", vol["snapshot"], "--as", target, "-r", repo, *secrets,
                keys=keys, words=(word,))
        assert target not in volume_names(client)
        refused(17, "verify", vol["snapshot"], "-r", repo, *secrets, keys=keys, words=(word,))
        refused(17, "export", vol["snapshot"], "-r", repo, "-o", str(output), *secrets,
                keys=keys, words=(word,))
        assert not output.exists()
        for debug in (["--debug"], []):  # a traceback must not print a secret either
            cli(*debug, "verify", vol["snapshot"], "-r", repo, "--json", *secrets,
                secrets=keys.secrets)
    ok("restore", vol["snapshot"], "--as", target, "-r", repo, "--identity", str(keys.identity),
       "--trust-repository-key", keys=keys)
    assert contents(mountpoint(target)) == contents(mountpoint(volume.name))


def test_a_missing_secret_is_one_error_before_any_volume_is_touched(
        keys, make_volume, mountpoint, run_container, client, names):
    """Several volumes, --all, --stop: still one line and exit 17, and the container that
    --stop would have stopped keeps running (the key is checked before anything is done)."""
    one, two = marked_volume(make_volume, mountpoint), make_volume("two")
    running = run_container("db", one.name)
    running.reload()
    started = running.attrs["State"]["StartedAt"]
    repo = str(keys.repo)
    refused(17, "backup", one.name, two.name, "--stop", "-r", repo, keys=keys,
            words=("--key-file",))
    running.reload()
    assert running.status == "running" and running.attrs["State"]["StartedAt"] == started
    assert not list((keys.repo / "snapshots").glob("*/*.json"))
    backed_up(keys, two.name)
    refused(17, "verify", "--all", "-r", repo, keys=keys, words=("--identity",))
    refused(17, "restore", "--all", "-r", repo, *keys.key(), keys=keys, words=("--identity",))
    stranger = keys.repo.parent / "stranger.txt"
    keys.secrets.append(new_identity(stranger)[1])
    refused(17, "restore", "--all", "-r", repo, "--identity", str(stranger), *keys.key(),
            keys=keys, words=("not encrypted to the identity",))
    refused(17, "export", two.name, "-r", repo, "-o", str(keys.repo.parent / "x.tar.zst"),
            "--identity", str(stranger), *keys.key(), keys=keys)


def test_a_repository_downgraded_to_plain_is_refused(keys, make_volume, mountpoint):
    """A writer to the repository removed its config: a backup host with the key file
    must not then store the volume in the clear."""
    volume = marked_volume(make_volume, mountpoint)
    (keys.repo / "config").unlink()
    before = repo_files(keys.repo)
    refused(17, "backup", volume.name, "-r", str(keys.repo), *keys.key(), keys=keys,
            words=("is not encrypted",))
    env = {"VOLBACKUP_KEY_FILE": str(keys.key_file)}  # from the environment, the same
    result = cli("backup", volume.name, "-r", str(keys.repo), env=env, secrets=keys.secrets)
    assert result.code == 17 and "is not encrypted" in one_line_error(result.stderr)
    assert repo_files(keys.repo) == before
    listed = cli("list", "-r", str(keys.repo), env=env)  # needs no secret: not refused
    assert listed.code == 0, listed.stderr


def test_the_environment_gives_the_secrets(keys, make_volume, mountpoint):
    volume = marked_volume(make_volume, mountpoint)
    env = {"VOLBACKUP_KEY_FILE": str(keys.key_file)}
    assert cli("backup", volume.name, "-r", str(keys.repo), env=env).code == 0
    env = {"VOLBACKUP_IDENTITY_FILE": str(keys.carrying)}
    verified = cli("verify", volume.name, "-r", str(keys.repo), env=env, secrets=keys.secrets)
    assert verified.code == 0, verified.stderr


# -- init refusals


def test_init_refusals(tmp_path, keys):
    recipient, _ = new_identity(tmp_path / "r.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(17, "init", "-r", str(empty), "--encrypt-to", "age1notakey", "--key-file",
            str(tmp_path / "k1"), keys=keys, words=("not valid",))
    refused(17, "init", "-r", str(empty), "--encrypt-to", "hello", "--key-file",
            str(tmp_path / "k1"), keys=keys, words=("neither an age",))
    no_key = cli("init", "-r", str(empty), "--encrypt-to", recipient)
    assert no_key.code in (2, 17)
    assert len([line for line in no_key.stderr.splitlines() if line.strip()]) == 1
    assert not (empty / "config").exists() and not (tmp_path / "k1").exists()

    existing = tmp_path / "existing.key"
    existing.write_text("precious\n")
    refused(17, "init", "-r", str(empty), "--encrypt-to", recipient, "--key-file",
            str(existing), keys=keys, words=("exists",))
    assert existing.read_text() == "precious\n" and not (empty / "config").exists()

    refused(5, "init", "-r", str(keys.repo), "--encrypt-to", recipient, "--key-file",
            str(tmp_path / "k2"), keys=keys)
    assert not (tmp_path / "k2").exists()


def test_init_refuses_a_repository_with_snapshots(tmp_path, make_volume, mountpoint, keys):
    recipient, _ = new_identity(tmp_path / "r.txt")
    archive_repo = tmp_path / "archive"
    archive_repo.mkdir()
    volume = marked_volume(make_volume, mountpoint)
    assert cli("backup", volume.name, "-r", str(archive_repo)).code == 0
    before = repo_files(archive_repo)
    line = refused(5, "init", "-r", str(archive_repo), "--encrypt-to", recipient, "--key-file",
                   str(tmp_path / "k3"), keys=keys)
    assert "holds snapshots" in line
    assert repo_files(archive_repo) == before and not (tmp_path / "k3").exists()


# -- what needs no secret


def test_list_and_cleanup_need_no_secret_and_prune_needs_the_key(keys, make_volume, mountpoint):
    """prune decides only on snapshots whose MAC it checked: without the key, exit 17."""
    volume = make_volume("pruned")
    fill(mountpoint(volume.name), {"random.bin": os.urandom(2 << 20)})
    first = backed_up(keys, volume.name)
    fill(mountpoint(volume.name), {"random.bin": os.urandom(2 << 20)})  # new content: new chunks
    second = backed_up(keys, volume.name)
    chunks = {p.name for p in (keys.repo / "chunks").rglob("*") if p.is_file()}
    repo = str(keys.repo)
    listed = json.loads(ok("list", "-r", repo, "--json", keys=keys).stdout)["snapshots"]
    assert {s["snapshot"] for s in listed} == {first["snapshot"], second["snapshot"]}
    refused(17, "prune", "-r", repo, "--keep-last", "1", keys=keys, words=("--key-file",))
    ok("prune", "-r", repo, "--keep-last", "1", "--leftover-age", "0s", *keys.key(), keys=keys)
    ok("cleanup", "-r", repo, "--older-than", "0s", keys=keys)
    listed = json.loads(ok("list", "-r", repo, "--json", keys=keys).stdout)["snapshots"]
    assert [s["snapshot"] for s in listed] == [second["snapshot"]]
    left = {p.name for p in (keys.repo / "chunks").rglob("*") if p.is_file()}
    catalogue = (keys.repo / "snapshots" / volume.name /
                 second["snapshot"].split("@")[1]).with_suffix(".catalog").read_text().split()
    assert left < chunks and len(left) == second["chunks"] + len(catalogue) // 2
    ok("verify", "--all", "-r", repo, *keys.reading(), keys=keys)


def test_a_run_job_with_a_key_file(keys, tmp_path, make_volume, mountpoint):
    volume = marked_volume(make_volume, mountpoint)
    config = write_config(tmp_path / "jobs.toml", str(keys.repo), [volume.name],
                          key_file=str(keys.key_file))
    ok("run", "--config", config, keys=keys)
    listed = json.loads(ok("list", "-r", str(keys.repo), "--json", keys=keys).stdout)
    assert [s["volume"] for s in listed["snapshots"]] == [volume.name]
    ok("verify", "--all", "-r", str(keys.repo), *keys.reading(), keys=keys)
    without = write_config(tmp_path / "nokey.toml", str(keys.repo), [volume.name])
    result = cli("run", "--config", without, secrets=keys.secrets)
    assert result.code != 0 and re.search(r"key", result.stderr), result.stderr


def test_part_of_an_encrypted_snapshot_needs_the_identity(keys, make_volume, mountpoint, names,
                                                         tmp_path, client):
    volume = marked_volume(make_volume, mountpoint)
    snap = backed_up(keys, volume.name)["snapshot"]
    target, to = names("part"), tmp_path / "out"
    refused(17, "restore", snap, "--as", target, "--include", "note", "-r", str(keys.repo),
            keys=keys)
    refused(17, "extract", snap, "--to", str(to), "--include", "note", "-r", str(keys.repo),
            keys=keys)
    assert target not in volume_names(client) and not to.exists()
    ok("restore", snap, "--as", target, "--include", "note", "-r", str(keys.repo),
       *keys.reading(), keys=keys)
    assert contents(mountpoint(target)) == {"note": b"hello\n"}
    ok("extract", snap, "--to", str(to), "--include", "/note", "-r", str(keys.repo),
       *keys.reading(), keys=keys)
    assert contents(str(to)) == {"note": b"hello\n"}


def test_a_run_prunes_only_authentic_snapshots(keys, tmp_path, make_volume, mountpoint):
    """`run` with keep rules: a manifest planted by a writer without the key (a copy of a
    genuine one under a newer id) took a `last` place, and the run's prune removed a
    genuine snapshot; now it is reported, left alone and not counted, and the run fails."""
    from datetime import datetime, timedelta, timezone

    volume = marked_volume(make_volume, mountpoint)
    first = backed_up(keys, volume.name)["snapshot"]
    folder = keys.repo / "snapshots" / volume.name
    data = json.loads((folder / f"{first.split('@')[1]}.json").read_text())
    when = datetime.now(timezone.utc) - timedelta(seconds=30)
    stamp = when.strftime("%Y%m%dT%H%M%SZ") + "-f0f0"
    data.update(snapshot=f"{volume.name}@{stamp}",
                created=when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    (folder / f"{stamp}.json").write_text(json.dumps(data))
    config = write_config(tmp_path / "jobs.toml", str(keys.repo), [volume.name],
                          key_file=str(keys.key_file), keep="{ last = 2 }")
    ran = cli("run", "--config", config, "--json", secrets=keys.secrets)
    assert ran.code == 6, ran.stderr
    (job,) = json.loads(ran.stdout)["jobs"]
    made = job["volumes"][0]["snapshot"]
    assert [u["snapshot"] for u in job["prune"]["unauthentic"]] == [f"{volume.name}@{stamp}"]
    assert job["prune"]["removed"] == 0 and "not authentic" in ran.stderr
    left = {f"{volume.name}@{p.stem}" for p in folder.glob("*.json")}
    assert left == {first, made, f"{volume.name}@{stamp}"}
    listed = json.loads(ok("list", "-r", str(keys.repo), "--json", *keys.key(),
                           keys=keys).stdout)
    assert [s["snapshot"] for s in listed["snapshots"]] == [first, made]

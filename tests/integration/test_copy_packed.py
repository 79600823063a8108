"""`copy` between packed repositories, end to end: a real engine's volume backed up into a
packed directory repository, copied by its blobs into a packed one on S3 (moto's server and
Ceph RGW) or into an encrypted one, and restored from the copy into a fresh volume,
compared entry for entry with the original. CountingBackend says what a second copy read."""

from __future__ import annotations

import json
import os
import time
import shutil
import subprocess
from pathlib import Path

from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.helpers import named_again
from volbackup.ops import copy as ops
from volbackup.repo.backends import open_backend
from volbackup.repo.backends.counting import CountingBackend
from volbackup.repo.repository import Repository, read_config
from volbackup.repo.sealing import Secrets
from volbackup.repo.trees import TreeRoot, walk


def _age_identity(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def _counted(url: str, secrets: Secrets | None = None,
             writable: bool = False) -> tuple[Repository, CountingBackend]:
    backend = CountingBackend(open_backend(url))
    backend.check(writable=writable)
    return Repository(backend, read_config(backend), secrets or Secrets()), backend


def test_a_second_copy_into_s3_reads_and_sends_only_the_new_blobs(
        make_volume, mountpoint, names, repo_dir, any_s3_bucket, cli):
    volume = make_volume("pcopy")
    root = mountpoint(volume.name)
    write_corpus(root)
    # older than the files cache's settle time (2 s): both backups record the files' stat
    # data, so their catalogues differ in the changed file's line alone
    time.sleep(2.1)
    assert cli("init", "-r", str(repo_dir), "--layout", "packed").code == 0
    first = cli("backup", volume.name, "-r", str(repo_dir), "--json")
    assert first.code == 0, first.stderr
    offsite = f"s3://{any_s3_bucket}/offsite"
    assert cli("init", "-r", offsite, "--layout", "packed").code == 0
    copied = cli("copy", volume.name, "-r", str(repo_dir), "--to", offsite, "--json")
    assert copied.code == 0, copied.stderr
    (entry,) = json.loads(copied.stdout)["snapshots"]
    assert entry["status"] == "copied" and entry["how"] == "blobs"
    repeats = named_again(repo_dir, json.loads(first.stdout)["volumes"][0]["snapshot"])
    assert entry["chunks_sent"] == entry["chunks"] - repeats > 0
    assert entry["chunks_present"] == repeats     # named twice in the snapshot, sent once

    # one small file changed: the second snapshot shares all but a few blobs
    with open(os.path.join(root, "hello.txt"), "ab") as f:
        f.write(b"changed\n")
    expected = tree(root)
    second = cli("backup", volume.name, "-r", str(repo_dir), "--json")
    assert second.code == 0, second.stderr
    snapshot = json.loads(second.stdout)["volumes"][0]["snapshot"]
    source, counting = _counted(str(repo_dir))
    target = Repository.open(offsite, writable=True)
    (outcome,) = ops.copy(source, target, ops.Choice([snapshot])).snapshots
    assert outcome.status == "copied" and outcome.how == "blobs", outcome.message
    assert 0 < outcome.chunks_sent <= 12 and outcome.chunks_present >= entry["chunks"] - 12
    # the trees' pieces and the new blobs were read from the source, not the snapshot
    assert counting.bytes["packs"] < entry["bytes_sent"] / 50, counting.bytes
    assert counting.bytes["packs"] <= outcome.bytes_sent + 512 * 1024

    # the catalogue (version 3 lines with the files cache's `st`, where backed up directly)
    # is cut again there, line for line
    made = source.load(snapshot)
    assert target.load(snapshot).catalog["version"] == made.catalog["version"]
    assert list(target.catalog(target.load(snapshot))) == list(source.catalog(made))

    target_volume = names("frompcopy")
    restored = cli("restore", snapshot, "-r", offsite, "--as", target_volume)
    assert restored.code == 0, restored.stderr
    assert differences(expected, tree(mountpoint(target_volume))) == []
    checked = cli("verify", "--all", "--packs", "-r", offsite)
    assert checked.code == 0, checked.stderr
    again = cli("copy", "--all", "-r", str(repo_dir), "--to", offsite, "--json")
    assert [s["status"] for s in json.loads(again.stdout)["snapshots"]] == ["skipped"] * 2


def test_a_tampered_source_blob_fails_the_copy_and_leaves_no_snapshot(
        make_volume, mountpoint, repo_dir, tmp_path, cli):
    volume = make_volume("pcopybad")
    write_corpus(mountpoint(volume.name))
    assert cli("init", "-r", str(repo_dir), "--layout", "packed").code == 0
    made = cli("backup", volume.name, "-r", str(repo_dir), "--json")
    assert made.code == 0, made.stderr
    snapshot = json.loads(made.stdout)["volumes"][0]["snapshot"]
    repo = Repository.open(str(repo_dir))
    manifest = repo.load(snapshot)
    blob_id, _ = list(walk(repo.blobs, TreeRoot.from_fields(manifest.data, "t")))[20]
    loc = repo.blobs.index().locations(bytes.fromhex(blob_id))[0]
    pack = repo_dir / "packs" / loc.pack.hex[:2] / loc.pack.hex
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    target = tmp_path / "target"
    assert cli("init", "-r", str(target), "--layout", "packed").code == 0
    failed = cli("copy", snapshot, "-r", str(repo_dir), "--to", str(target))
    assert failed.code == 6, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and blob_id in errors[0] and "Traceback" not in failed.stderr
    assert not (target / "snapshots").exists() or not any((target / "snapshots").rglob("*.json"))
    listed = cli("list", "-r", str(target), "--json")
    assert json.loads(listed.stdout)["snapshots"] == []
    # what the failed copy left trips neither verify nor prune
    assert cli("verify", "--packs", "-r", str(target)).code == 0
    pruned = cli("prune", "-r", str(target), "--keep-last", "1", "--leftover-age", "0")
    assert pruned.code == 0, pruned.stderr


def test_encrypted_copies_by_blobs_with_the_same_key_and_by_the_stream_with_another(
        make_volume, mountpoint, names, tmp_path, cli):
    volume = make_volume("pcopyenc")
    write_corpus(mountpoint(volume.name))
    expected = tree(mountpoint(volume.name))
    identity, key = tmp_path / "one.id", tmp_path / "one.key"
    (tmp_path / "one").mkdir()
    made = cli("init", "-r", str(tmp_path / "one"), "--layout", "packed", "--encrypt-to",
               _age_identity(identity), "--key-file", str(key))
    assert made.code == 0, made.stderr
    backed = cli("backup", volume.name, "-r", str(tmp_path / "one"), "--key-file", str(key),
                 "--json")
    assert backed.code == 0, backed.stderr
    snapshot = json.loads(backed.stdout)["volumes"][0]["snapshot"]
    secrets = ["--identity", str(identity), "--key-file", str(key)]

    # a mirror started from the source's config: the same key and recipients
    (tmp_path / "mirror").mkdir()
    shutil.copy(tmp_path / "one" / "config", tmp_path / "mirror" / "config")
    same = cli("copy", snapshot, "-r", str(tmp_path / "one"), *secrets, "--to",
               str(tmp_path / "mirror"), "--to-key-file", str(key), "--json")
    assert same.code == 0, same.stderr
    assert json.loads(same.stdout)["snapshots"][0]["how"] == "blobs"

    # another repository, its own key: through the tar stream, as before
    other_id, other_key = tmp_path / "two.id", tmp_path / "two.key"
    (tmp_path / "two").mkdir()
    assert cli("init", "-r", str(tmp_path / "two"), "--layout", "packed", "--encrypt-to",
               _age_identity(other_id), "--key-file", str(other_key)).code == 0
    other = cli("copy", snapshot, "-r", str(tmp_path / "one"), *secrets, "--to",
                str(tmp_path / "two"), "--to-key-file", str(other_key), "--json")
    assert other.code == 0, other.stderr
    assert json.loads(other.stdout)["snapshots"][0]["how"] == "stream"

    for where, restore_secrets in ((tmp_path / "mirror", secrets),
                                   (tmp_path / "two", ["--identity", str(other_id),
                                                       "--key-file", str(other_key)])):
        into = names("frompenc")
        restored = cli("restore", snapshot, "-r", str(where), "--as", into, *restore_secrets)
        assert restored.code == 0, restored.stderr
        assert differences(expected, tree(mountpoint(into))) == []
        checked = cli("verify", "--all", "--packs", "-r", str(where), *restore_secrets)
        assert checked.code == 0, checked.stderr

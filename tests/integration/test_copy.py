"""`copy` end to end: a real engine's volume backed up, copied into a second repository (S3 on
moto's server; an encrypted directory through a `run` job's `copy_to`), and restored from the
copy into a fresh volume, compared entry for entry with the original."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.helpers import named_again


@pytest.mark.parametrize("layout", ["chunked", "packed"])
def test_a_volume_restores_from_its_copy_in_s3(make_volume, mountpoint, names, repo_dir,
                                               s3_bucket, cli, layout):
    """Between two plain repositories of one layout only what the target lacks is sent:
    chunks and their lists (chunked), blobs found through the trees (packed)."""
    volume = make_volume("copysrc")
    write_corpus(mountpoint(volume.name))
    expected = tree(mountpoint(volume.name))
    assert cli("init", "-r", str(repo_dir), "--layout", layout).code == 0
    backed = cli("backup", volume.name, "-r", str(repo_dir))
    assert backed.code == 0, backed.stderr
    offsite = f"s3://{s3_bucket}/offsite"
    assert cli("init", "-r", offsite, "--layout", layout).code == 0
    copied = cli("copy", volume.name, "-r", str(repo_dir), "--to", offsite, "--json")
    assert copied.code == 0, copied.stderr
    (entry,) = json.loads(copied.stdout)["snapshots"]
    assert entry["status"] == "copied"
    assert entry["how"] == {"chunked": "chunks", "packed": "blobs"}[layout]
    # a packed snapshot may name a blob twice (repeated bytes): it is sent once
    repeats = named_again(repo_dir, entry["snapshot"]) if layout == "packed" else 0
    assert entry["chunks_sent"] == entry["chunks"] - repeats > 0
    again = cli("copy", "--all", "-r", str(repo_dir), "--to", offsite, "--json")
    assert [s["objects_written"] for s in json.loads(again.stdout)["snapshots"]] == [0]

    target = names("fromcopy")
    restored = cli("restore", entry["snapshot"], "-r", offsite, "--as", target)
    assert restored.code == 0, restored.stderr
    assert differences(expected, tree(mountpoint(target))) == []


def test_a_run_job_copies_into_an_encrypted_repository(make_volume, mountpoint, names, tmp_path,
                                                       cli):
    volume = make_volume("copyrun")
    write_corpus(mountpoint(volume.name))
    expected = tree(mountpoint(volume.name))
    (tmp_path / "main").mkdir()
    (tmp_path / "sealed").mkdir()
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    key = tmp_path / "sealed.key"
    made = cli("init", "-r", str(tmp_path / "sealed"), "--encrypt-to", recipient,
               "--key-file", str(key))
    assert made.code == 0, made.stderr
    config = tmp_path / "volbackup.toml"
    config.write_text(f'[jobs.db]\nrepository = "{tmp_path / "main"}"\n'
                      f'volumes = ["{volume.name}"]\ncopy_to = "{tmp_path / "sealed"}"\n'
                      f'copy_to_key_file = "{key}"\n')
    ran = cli("run", "--config", str(config), "--json")
    assert ran.code == 0, ran.stderr
    (job,) = json.loads(ran.stdout)["jobs"]
    assert job["copy"]["copied"] == 1 and job["copy"]["failed"] == 0
    snapshot = job["volumes"][0]["snapshot"]
    assert not list((tmp_path / "main").glob("chunks"))   # the main one: archive layout

    target = names("fromsealed")
    restored = cli("restore", snapshot, "-r", str(tmp_path / "sealed"), "--as", target,
                   "--identity", str(identity), "--key-file", str(key))
    assert restored.code == 0, restored.stderr
    assert differences(expected, tree(mountpoint(target))) == []

"""Backup and restore through a real engine give back every entry, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.corpus import SMALL_FILES, differences, tree, write_corpus

LABELS = {"com.example.app": "shop", "tier": "db"}


@pytest.fixture(scope="module")
def corpus(client, tmp_path_factory):
    """A volume holding the fidelity corpus, backed up once into a module-wide repository."""
    from tests.integration.conftest import PREFIX

    name = f"{PREFIX}corpus"
    volume = client.volumes.create(name, labels=LABELS)
    try:
        root = client.api.inspect_volume(name)["Mountpoint"]
        write_corpus(root)
        repo = tmp_path_factory.mktemp("corpus-repo")
        from tests.conftest import run_cli

        result = run_cli("backup", name, "-r", str(repo), "--json")
        assert result.code == 0, result.stderr
        yield {"name": name, "root": root, "repo": repo, "tree": tree(root),
               "backup": json.loads(result.stdout)}
    finally:
        volume.remove(force=True)


def test_backup_json_reports_the_snapshot(corpus):
    out = corpus["backup"]
    assert out["volbackup_json"] == 1 and out["command"] == "backup"
    (vol,) = out["volumes"]
    assert vol["volume"] == corpus["name"] and vol["status"] == "ok"
    for key in ("snapshot", "bytes", "stored_bytes", "sha256", "seconds"):
        assert key in vol
    assert vol["bytes"] > 50 * 1024 * 1024 > vol["stored_bytes"]
    assert vol["snapshot"].startswith(corpus["name"] + "@")
    assert vol["entries"] == len(corpus["tree"])


def test_restore_gives_back_every_entry(corpus, cli, names, client):
    target = names("restored")
    result = cli("restore", corpus["name"], "-r", str(corpus["repo"]), "--as", target)
    assert result.code == 0, result.stderr
    restored = tree(client.api.inspect_volume(target)["Mountpoint"])
    assert len(restored) > SMALL_FILES
    assert differences(corpus["tree"], restored) == []


def test_restore_recreates_labels_and_driver(corpus, cli, names, client):
    target = names("restored")
    assert cli("restore", corpus["name"], "-r", str(corpus["repo"]), "--as", target).code == 0
    attrs = client.api.inspect_volume(target)
    assert attrs["Labels"] == LABELS
    assert attrs["Driver"] == "local"


def test_manifest_records_the_volume(corpus, cli):
    snapshot = corpus["backup"]["volumes"][0]["snapshot"]
    result = cli("show", snapshot, "-r", str(corpus["repo"]), "--json")
    assert result.code == 0, result.stderr
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["labels"] == LABELS and manifest["driver"] == "local"
    assert manifest["format_version"] == 1 and manifest["compression"] == "zstd"
    assert manifest["level"] == 3 and manifest["created"].endswith("Z")
    assert manifest["sha256"] == corpus["backup"]["volumes"][0]["sha256"]
    archive = Path(corpus["repo"], "snapshots", corpus["name"], manifest["archive"])
    assert archive.stat().st_size == manifest["stored_bytes"]


def test_verify_reads_the_whole_archive(corpus, cli):
    result = cli("verify", "--all", "-r", str(corpus["repo"]), "--json")
    assert result.code == 0, result.stderr
    (check,) = json.loads(result.stdout)["snapshots"]
    assert check["status"] == "ok" and check["entries"] == len(corpus["tree"])


def test_stock_zstd_and_tar_restore_the_files(corpus, tmp_path):
    """The command in docs/format.md, run verbatim, gives back the same tree."""
    doc = Path(__file__).parents[2] / "docs" / "format.md"
    command = "zstd -dc SNAPSHOT.tar.zst | tar -xpf - --numeric-owner -C TARGET_DIR"
    assert command in doc.read_text(), "docs/format.md must show the stock restore command"
    if not shutil.which("zstd"):
        pytest.fail("the zstd command is needed for this test (apt-get install zstd)")
    manifest_dir = Path(corpus["repo"], "snapshots", corpus["name"])
    (archive,) = manifest_dir.glob("*.tar.zst")
    target = tmp_path / "extracted"
    target.mkdir()
    shell = command.replace("SNAPSHOT.tar.zst", str(archive)).replace("TARGET_DIR", str(target))
    subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True)
    assert differences(corpus["tree"], tree(str(target))) == []
    os.chmod(target, 0o700)

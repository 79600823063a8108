"""volbackup against an SFTP repository end to end: a real engine, a real OpenSSH sshd on
127.0.0.1 (tests/sftp_server.py), the real CLI. The S3 round trips' equivalents (archive
layout, chunked, encrypted), doctor, and a server killed in the middle of a backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.helpers import contents, random_file
from tests.integration.test_chunked import concurrent_backups, same_files, verify_all
from tests.integration.test_encrypted import MARKERS, marked_volume, new_identity
from volbackup.repo.backends.sftp import parse_url


def ok(*args: str, env: dict | None = None):
    result = run_cli(*args, env=env)
    assert result.code == 0, f"volbackup {' '.join(args)}: {result.stderr}"
    return result


def on_server(url: str) -> Path:
    """The directory an sftp:// URL of the test server names (it runs on this machine)."""
    return Path(parse_url(url)[3])


def stored_files(url: str) -> list[Path]:
    return [p for p in on_server(url).rglob("*") if p.is_file()]


def test_archive_layout_round_trip(make_volume, mountpoint, names, sftp_repo):
    source = make_volume("corpus")
    write_corpus(mountpoint(source.name))
    expected = tree(mountpoint(source.name))
    (vol,) = json.loads(ok("backup", source.name, "-r", sftp_repo, "--json").stdout)["volumes"]
    stored = sorted(p.name.split(".", 1)[-1] for p in stored_files(sftp_repo))
    assert stored == ["catalog.zst", "json", "tar.zst"]
    listed = json.loads(ok("list", "-r", sftp_repo, "--json").stdout)["snapshots"]
    assert [s["snapshot"] for s in listed] == [vol["snapshot"]]
    ok("verify", vol["snapshot"], "-r", sftp_repo)
    target = names("from-sftp")
    ok("restore", source.name, "-r", sftp_repo, "--as", target)
    assert differences(expected, tree(mountpoint(target))) == []


@pytest.mark.parametrize("layout", ["chunked", "packed"])
def test_chunked_round_trip_and_prune(make_volume, mountpoint, names, sftp_repo, layout):
    source = make_volume("corpus")
    write_corpus(mountpoint(source.name))
    expected = tree(mountpoint(source.name))
    ok("init", "-r", sftp_repo, "--layout", layout)
    first = json.loads(ok("backup", source.name, "-r", sftp_repo, "--json").stdout)["volumes"][0]
    second = json.loads(ok("backup", source.name, "-r", sftp_repo, "--json").stdout)["volumes"][0]
    shown = json.loads(ok("show", second["snapshot"], "-r", sftp_repo, "--json").stdout)
    assert shown["manifest"]["new_chunks"] == 0  # every chunk was there already
    root = on_server(sftp_repo)
    assert (root / "config").is_file()
    assert any((root / ("packs" if layout == "packed" else "chunks")).rglob("*"))
    ok("verify", "--all", "-r", sftp_repo)
    target = names("from-sftp")
    ok("restore", source.name, "-r", sftp_repo, "--as", target)
    assert differences(expected, tree(mountpoint(target))) == []
    pruned = json.loads(ok("prune", "-r", sftp_repo, "--keep-last", "1", "--json").stdout)
    assert first["snapshot"] in json.dumps(pruned)
    listed = json.loads(ok("list", "-r", sftp_repo, "--json").stdout)["snapshots"]
    assert [s["snapshot"] for s in listed] == [second["snapshot"]]
    ok("verify", "--all", "-r", sftp_repo)
    assert not [p for p in root.rglob(".*") if ".tmp-" in p.name]  # no temp file left


def test_an_encrypted_repository_on_sftp(tmp_path, make_volume, mountpoint, names, sftp_repo):
    recipient, secret = new_identity(tmp_path / "id.txt")
    key_file = tmp_path / "sftp.key"
    ok("init", "-r", sftp_repo, "--encrypt-to", recipient, "--key-file", str(key_file))
    volume = marked_volume(make_volume, mountpoint)
    backup = ok("backup", volume.name, "-r", sftp_repo, "--key-file", str(key_file))
    target = names("from-sftp")
    denied = run_cli("restore", volume.name, "--as", target, "-r", sftp_repo)
    assert denied.code == 17
    restore = ok("restore", volume.name, "--as", target, "-r", sftp_repo, "--identity",
                 str(tmp_path / "id.txt"), "--key-file", str(key_file))
    assert contents(mountpoint(target)) == contents(mountpoint(volume.name))
    assert secret not in restore.stdout + restore.stderr + backup.stdout + backup.stderr
    files = stored_files(sftp_repo)
    assert len(files) >= 4  # config, manifest, a pack and an index (init's default: packed)
    for path in files:
        data = path.read_bytes()
        for marker in MARKERS:
            assert marker not in data, (marker, path)


def test_doctor_checks_an_sftp_repository(sftp_repo):
    ok("init", "-r", sftp_repo)
    run = run_cli("doctor", "-r", sftp_repo, "--json")
    assert "Traceback" not in run.stderr
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert checks["repository"]["status"] == "ok", checks["repository"]
    assert "sftp://" in checks["repository"]["reason"]
    assert checks["repository space"]["status"] in ("ok", "warning")
    assert checks["repository space"]["details"]["free_bytes"] > 0  # statvfs@openssh.com


def test_a_server_that_goes_away_mid_backup_leaves_no_half_snapshot(
        make_volume, mountpoint, sftp_server, sftp_repo):
    volume = make_volume("big")
    random_file(mountpoint(volume.name), "data.bin", 96 << 20)
    ok("init", "-r", sftp_repo, "--layout", "chunked")   # stopped after 20 chunk objects
    root = on_server(sftp_repo)
    env = {**os.environ, "VOLBACKUP_SFTP_ATTEMPTS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "volbackup", "backup", volume.name,
                             "-r", sftp_repo], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / "chunks").exists() or len(list((root / "chunks").rglob("*"))) < 20:
            assert proc.poll() is None and time.monotonic() < deadline, "no chunks written"
            time.sleep(0.05)
        sftp_server.stop()  # mid-backup: chunks written, no manifest yet
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        if sftp_server.process is None:
            sftp_server.start()
    assert proc.returncode == 10, stderr
    *warnings, error = stderr.strip().splitlines()
    assert "Traceback" not in stderr and all("warning" in w for w in warnings), stderr
    assert error.startswith("volbackup: ") and "SSH" in error and sftp_repo in error
    assert not list((root / "snapshots").rglob("*.json"))  # no half snapshot
    listed = json.loads(ok("list", "-r", sftp_repo, "--json").stdout)["snapshots"]
    assert listed == []

    (vol,) = json.loads(ok("backup", volume.name, "-r", sftp_repo, "--json").stdout)["volumes"]
    ok("verify", "--all", "-r", sftp_repo)
    listed = json.loads(ok("list", "-r", sftp_repo, "--json").stdout)["snapshots"]
    assert [s["snapshot"] for s in listed] == [vol["snapshot"]]
    # what the broken run left (temp files, chunks of no snapshot) goes with cleanup and prune
    cleaned = json.loads(ok("cleanup", "-r", sftp_repo, "--older-than", "0", "--json").stdout)
    assert all(o["status"] == "removed" for o in cleaned["leftovers"])
    assert not [p for p in root.rglob(".*") if ".tmp-" in p.name]
    ok("verify", "--all", "-r", sftp_repo)


def test_the_storage_doc_example(make_volume, mountpoint, names, sftp_repo):
    """docs/storage.md's SFTP example, line by line, against the test server."""
    text = (Path(__file__).parents[2] / "docs" / "storage.md").read_text()
    block = text.split("### Example", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    lines = [line[2:].split() for line in block.strip().splitlines()]
    assert [words[:2] for words in lines] == [
        ["volbackup", w] for w in ("init", "backup", "list", "verify", "restore", "prune",
                                   "doctor")]
    source = make_volume("doc")
    write_corpus(mountpoint(source.name))
    copy = names("doc-copy")
    swap = {"sftp://backup@nas.example.net/srv/backups/docker": sftp_repo,
            "pgdata-copy": copy, "pgdata": source.name}
    for words in lines:
        ok(*[swap.get(w, w) for w in words[1:]])
    assert differences(tree(mountpoint(source.name)), tree(mountpoint(copy))) == []


@pytest.fixture
def small_twins(make_volume, mountpoint, tmp_path):
    """Two volumes with the same 48 MiB file (test_chunked's twins, smaller: over SFTP on
    a busy 2-core machine its 128 MiB took two minutes)."""
    random_file(str(tmp_path), "data.bin", 48 << 20)
    volumes = [make_volume("twin").name for _ in range(2)]
    for volume in volumes:
        same_files(mountpoint(volume), tmp_path / "data.bin")
    return volumes


def test_two_backups_at_once_share_chunks(small_twins, sftp_repo):
    """Two processes writing the same chunks into one SFTP repository at once (the same
    temp-then-rename, and directories made by whichever gets there first)."""
    ok("init", "-r", sftp_repo, "--chunk-size", "512K", "--layout", "chunked")
    a, b = concurrent_backups(small_twins, sftp_repo)
    stored = [p for p in (on_server(sftp_repo) / "chunks").rglob("*")
              if p.is_file() and not p.name.startswith(".")]
    assert a["chunks"] > 60 and len(stored) <= max(a["chunks"], b["chunks"]) + 2
    assert verify_all(sftp_repo)[0] == 0
    assert not [p for p in on_server(sftp_repo).rglob(".*") if ".tmp-" in p.name]

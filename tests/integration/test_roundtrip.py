"""Backup and restore through a real engine give back every entry, byte for byte, on
both paths: through the engine's archive endpoints and with GNU tar on this host."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.integration.corpus import SMALL_FILES, differences, tree, write_corpus
from tests.integration.helpers import PATHS, named_again

LABELS = {"com.example.app": "shop", "tier": "db"}


@pytest.fixture(scope="module", params=[("direct", "archive"), ("engine", "archive"),
                                        ("direct", "chunked"), ("engine", "packed")],
                ids="-".join)
def corpus(client, tmp_path_factory, request):
    """A volume holding the fidelity corpus, backed up once (each way, and into a chunked
    repository the default way) into a repository."""
    from tests.integration.conftest import PREFIX, make_layout

    via, layout = request.param
    name = f"{PREFIX}corpus-{via}-{layout}"
    volume = client.volumes.create(name, labels=LABELS)
    try:
        root = client.api.inspect_volume(name)["Mountpoint"]
        write_corpus(root)
        repo = tmp_path_factory.mktemp("corpus-repo")
        make_layout(str(repo), layout)
        from tests.conftest import run_cli

        result = run_cli("backup", name, "-r", str(repo), "--json", PATHS[via])
        assert result.code == 0, result.stderr
        yield {"name": name, "root": root, "repo": repo, "tree": tree(root), "via": via,
               "layout": layout, "backup": json.loads(result.stdout)}
    finally:
        volume.remove(force=True)


def test_backup_json_reports_the_snapshot(corpus):
    out = corpus["backup"]
    assert out["volbackup_json"] == 1 and out["command"] == "backup"
    (vol,) = out["volumes"]
    assert vol["volume"] == corpus["name"] and vol["status"] == "ok"
    assert vol["via"] == corpus["via"]
    for key in ("snapshot", "bytes", "stored_bytes", "sha256", "seconds"):
        assert key in vol
    assert vol["bytes"] > 50 * 1024 * 1024 > vol["stored_bytes"]
    assert vol["snapshot"].startswith(corpus["name"] + "@")
    assert vol["entries"] == len(corpus["tree"])


@pytest.mark.parametrize("via", list(PATHS))
def test_restore_gives_back_every_entry(corpus, cli, names, client, via):
    """Each way of writing restores each way's archive (the format is one)."""
    target = names("restored")
    result = cli("restore", corpus["name"], "-r", str(corpus["repo"]), "--as", target,
                 PATHS[via], "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["volumes"][0]["via"] == via
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
    # a packed repository's snapshots are chunked ones (tree snapshots, their blobs in packs)
    assert manifest["compression"] == "zstd" and manifest["layout"] == (
        "chunked" if corpus["layout"] == "packed" else corpus["layout"])
    assert manifest["level"] == 3 and manifest["created"].endswith("Z")
    assert manifest["sha256"] == corpus["backup"]["volumes"][0]["sha256"]
    archive = Path(corpus["repo"], "snapshots", corpus["name"], manifest["archive"])
    if corpus["layout"] == "archive":
        assert manifest["format_version"] == 1
        assert archive.stat().st_size == manifest["stored_bytes"]
        return
    if corpus["layout"] == "packed":
        # a tree snapshot: its blob list and catalogue are trees of blobs in packs, and
        # nothing but the manifest is beside it; every blob is this backup's own
        assert manifest["format_version"] == 4 and archive.suffix == ".tree"
        assert not archive.exists() and manifest["sha256"] == "" and manifest["chunks"] is None
        # (a blob named twice, repeated bytes cut into equal chunks, is stored once)
        repeats = named_again(corpus["repo"], snapshot, catalogue=False)
        assert manifest["data"]["blobs"] - repeats == manifest["new_chunks"] > 0
        assert manifest["data"]["bytes"] == manifest["bytes"]
        assert manifest["catalog"]["version"] == 3
        assert sorted(p.name for p in archive.parent.iterdir()) == [
            archive.name.replace(".tree", ".json")]
        packs = list(Path(corpus["repo"], "packs").rglob("*/*"))
        assert not Path(corpus["repo"], "chunks").exists()
        assert manifest["stored_bytes"] < sum(p.stat().st_size for p in packs)
        return
    # chunked: the archive is the chunk list, and every chunk is this backup's own
    assert manifest["format_version"] == 2 and archive.suffix == ".chunks"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == manifest["sha256"]
    ids = [line.split()[0] for line in archive.read_text().splitlines()]
    assert len(ids) == manifest["chunks"] == manifest["new_chunks"]
    if corpus["layout"] == "packed":   # every byte stored is in a pack (records, trailers)
        packs = list(Path(corpus["repo"], "packs").rglob("*/*"))
        assert not Path(corpus["repo"], "chunks").exists()
        assert manifest["stored_bytes"] < sum(p.stat().st_size for p in packs)
        return
    chunks = Path(corpus["repo"], "chunks")
    assert sum((chunks / i[:2] / i).stat().st_size for i in set(ids)) == manifest["stored_bytes"]


def test_verify_reads_the_whole_archive(corpus, cli):
    result = cli("verify", "--all", "-r", str(corpus["repo"]), "--json")
    assert result.code == 0, result.stderr
    (check,) = json.loads(result.stdout)["snapshots"]
    assert check["status"] == "ok" and check["entries"] == len(corpus["tree"])


def test_stock_zstd_and_tar_restore_the_files(corpus, tmp_path):
    """The command in docs/format.md, run verbatim, gives back the same tree."""
    if corpus["layout"] != "archive":
        pytest.skip("a command for the archive layout (see the next test)")
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


def test_direct_path_keeps_what_the_engine_loses(make_volume, mountpoint, cli, names, client,
                                                 repo_dir):
    """GNU tar keeps user xattrs, nanosecond mtimes and holes; the engine's extractor keeps
    the first two from such an archive and writes holes out in full."""
    source = make_volume("extras")
    root = mountpoint(source.name)
    note = os.path.join(root, "attrs.txt")
    with open(note, "w") as f:
        f.write("x")
    os.setxattr(note, "user.note", b"hello")
    os.utime(note, ns=(1_600_000_000_123_456_789,) * 2)
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"data")
    assert cli("backup", source.name, "-r", str(repo_dir)).code == 0   # direct: no container
    for extra, sparse in (["--direct"], True), (["--no-direct"], False):
        target = names("extras")
        assert cli("restore", source.name, "--as", target, "-r", str(repo_dir), *extra).code == 0
        there = mountpoint(target)
        copy = os.path.join(there, "attrs.txt")
        assert os.getxattr(copy, "user.note") == b"hello"
        assert os.stat(copy).st_mtime_ns == 1_600_000_000_123_456_789
        image = os.stat(os.path.join(there, "sparse.img"))
        assert image.st_size == 64 << 20
        assert (image.st_blocks * 512 < 1 << 20) == sparse


BEFORE_1970 = -315_619_200        # 1960-01-01
AFTER_2262 = 10_413_792_000       # 2300-01-01, past what a Go time in nanoseconds holds


@pytest.mark.parametrize("via", list(PATHS))
def test_mtimes_the_engine_cannot_set(via, make_volume, mountpoint, cli, names, repo_dir):
    """Pins docs/user-guide.md (what is preserved): the engine's extractor sets mtimes
    before 1970 or after 2262 to 0 (1970-01-01) for files and directories, and keeps them
    for symlinks; GNU tar on the direct path keeps them all."""
    source = make_volume("mtimes")
    root = mountpoint(source.name)
    os.mkdir(os.path.join(root, "old-dir"))
    for name in ("old-file", "future-file"):
        Path(root, name).write_bytes(b"x")
    os.symlink("old-file", os.path.join(root, "old-link"))
    stamps = {"old-file": BEFORE_1970, "old-dir": BEFORE_1970, "old-link": BEFORE_1970,
              "future-file": AFTER_2262}
    for name, t in stamps.items():
        os.utime(os.path.join(root, name), (t, t), follow_symlinks=False)
    assert cli("backup", source.name, "-r", str(repo_dir)).code == 0
    target = names("mtimes")
    assert cli("restore", source.name, "--as", target, "-r", str(repo_dir), PATHS[via]).code == 0
    got = {name: int(os.lstat(os.path.join(mountpoint(target), name)).st_mtime)
           for name in stamps}
    if via == "direct":
        assert got == stamps
    else:
        assert got == {"old-file": 0, "old-dir": 0, "old-link": BEFORE_1970, "future-file": 0}


CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)  # v2: cap_net_bind_service


@pytest.mark.parametrize("read", list(PATHS))
@pytest.mark.parametrize("via", list(PATHS))
def test_file_capabilities_survive_on_hard_links(read, via, make_volume, mountpoint, cli,
                                                 names, repo_dir):
    """The engine's extractor chowns each hard link it makes, which drops the inode's
    security.capability; GNU tar's archives do not repeat the xattr on the link member."""
    source = make_volume("caps")
    root = mountpoint(source.name)
    tool = os.path.join(root, "tool")
    Path(tool).write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o755)
    os.setxattr(tool, "security.capability", CAPABILITY)
    os.link(tool, os.path.join(root, "tool-link"))
    assert cli("backup", source.name, "-r", str(repo_dir), PATHS[read]).code == 0
    target = names("caps")
    assert cli("restore", source.name, "--as", target, "-r", str(repo_dir), PATHS[via]).code == 0
    restored = os.path.join(mountpoint(target), "tool-link")
    assert os.stat(restored).st_nlink == 2
    assert os.getxattr(restored, "security.capability") == CAPABILITY


def test_stock_zstd_and_tar_restore_a_chunked_snapshot(corpus, tmp_path):
    """A chunked snapshot's chunks, concatenated in list order, are one zstd stream of the
    tar: a POSIX shell, zstd and tar restore it without volbackup."""
    if corpus["layout"] != "chunked":
        pytest.skip("the chunked layout")
    (chunk_list,) = Path(corpus["repo"], "snapshots", corpus["name"]).glob("*.chunks")
    target = tmp_path / "extracted"
    target.mkdir()
    shell = ('while read -r id len; do cat "$1/chunks/$(printf %.2s "$id")/$id"; done < "$2" '
             '| zstd -dc | tar -xpf - --numeric-owner -C "$3"')
    subprocess.run(["sh", "-c", f"set -e; {shell}", "sh", str(corpus["repo"]), str(chunk_list),
                    str(target)], check=True)
    assert differences(corpus["tree"], tree(str(target))) == []
    os.chmod(target, 0o700)

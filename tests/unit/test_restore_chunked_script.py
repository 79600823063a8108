"""docs/format.md's POSIX shell script restores a chunked snapshot with zstd, tar and
coreutils alone: the script is taken from the doc and run here on a real chunked snapshot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository, new_snapshot_id, split_id

DOC = Path(__file__).parents[2] / "docs" / "format.md"

pytestmark = pytest.mark.skipif(not shutil.which("zstd"), reason="needs the zstd command")


def documented_script() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- restore-chunked.sh -->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/format.md lost its restore-chunked.sh block"
    return match[1]


def make_tree(root: Path) -> None:
    rnd = __import__("random").Random(7)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(rnd.randbytes(8 << 20))  # several chunks (max 4 MiB)
    for i in range(40):
        (root / "sub" / f"small {i}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / "sub" / "deeper" / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "sub" / "deeper" / "exec.sh", 0o750)
    os.symlink("../big.bin", root / "sub" / "link")
    os.link(root / "big.bin", root / "hard.bin")
    (root / "empty").mkdir()


def store_chunked(tmp_path: Path, tree: Path) -> tuple[Path, Manifest]:
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    repo = Repository.init(str(repo_dir))
    tar = subprocess.Popen(["tar", "--create", "--format=pax", "--numeric-owner", "-C",
                            str(tree), "."], stdout=subprocess.PIPE)
    snapshot = new_snapshot_id("vol", datetime.now(timezone.utc))
    with repo.snapshot_writer(snapshot) as writer:
        packed = writer.pack(iter(lambda: tar.stdout.read(1 << 16), b""), 3)
    assert tar.wait() == 0
    manifest = Manifest(snapshot=snapshot, volume="vol", driver="local", driver_options={},
                        labels={}, created="2026-12-02T00:00:00.000Z", host="h",
                        tool_version="t", archive=writer.archive, compression="zstd", level=3,
                        bytes=packed.bytes, stored_bytes=packed.stored_bytes,
                        sha256=packed.sha256, entries=packed.entries, seconds=0.0,
                        **writer.fields(packed))
    repo.commit(manifest)
    assert manifest.chunks and manifest.chunks >= 3
    return repo_dir, manifest


def snapshot_of(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", st.st_mode, st.st_mtime_ns // 10**9, path.read_bytes())
    return out


def run_script(tmp_path: Path, repo_dir: Path, manifest: Manifest, target: Path):
    script = tmp_path / "restore-chunked.sh"
    script.write_text(documented_script())
    _, stamp = split_id(manifest.snapshot)
    return subprocess.run(["sh", str(script), str(repo_dir), manifest.volume, stamp,
                           str(target)], capture_output=True, text=True)


def test_the_documented_loop_restores_a_chunked_snapshot(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    repo_dir, manifest = store_chunked(tmp_path, tree)
    target = tmp_path / "target"
    target.mkdir()
    done = run_script(tmp_path, repo_dir, manifest, target)
    assert done.returncode == 0, done.stderr
    assert snapshot_of(target) == snapshot_of(tree)
    assert os.stat(target / "hard.bin").st_ino == os.stat(target / "big.bin").st_ino


def test_the_documented_loop_refuses_a_corrupt_chunk_before_tar_runs(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    repo_dir, manifest = store_chunked(tmp_path, tree)
    list_file = repo_dir / "snapshots" / "vol" / manifest.archive
    victim = list_file.read_text().splitlines()[1].split()[0]
    other = list_file.read_text().splitlines()[0].split()[0]
    chunk = repo_dir / "chunks" / victim[:2] / victim
    shutil.copyfile(repo_dir / "chunks" / other[:2] / other, chunk)  # valid zstd, wrong bytes
    target = tmp_path / "target"
    target.mkdir()
    done = run_script(tmp_path, repo_dir, manifest, target)
    assert done.returncode != 0
    assert f"chunk {victim} is missing or corrupt" in done.stderr
    assert list(target.iterdir()) == []

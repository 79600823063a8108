"""`restore --include/--exclude`: part of a snapshot into a fresh volume, on both
repository layouts and both write paths; bad input refused before a volume is made."""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import make_layout
from tests.integration.helpers import PATHS, contents, fill, one_line_error


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


FILES = {"conf/app.ini": b"[app]\nname = x\n", "conf/cache/blob": b"c" * 5000,
         "conf/deep/inner/leaf.txt": b"leaf\n", "data/big.bin": os.urandom(300_000),
         "data/small.txt": b"small\n", "top.txt": b"top\n"}


@pytest.fixture
def snapshot(cli, repo_dir, make_volume, mountpoint):
    source = make_volume("src")
    root = mountpoint(source.name)
    fill(root, FILES)
    os.chmod(os.path.join(root, "conf"), 0o750)
    os.chown(os.path.join(root, "conf"), 1234, 2345)
    os.chmod(os.path.join(root, "conf/deep"), 0o711)
    os.chown(os.path.join(root, "conf/deep/inner/leaf.txt"), 4321, 5432)
    os.chmod(os.path.join(root, "conf/deep/inner/leaf.txt"), 0o640)
    os.link(os.path.join(root, "data/small.txt"), os.path.join(root, "conf/hard.txt"))
    os.symlink("app.ini", os.path.join(root, "conf/link"))
    result = cli("backup", source.name, "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    return source.name


@pytest.mark.parametrize("via", list(PATHS))
def test_only_the_included_paths_are_restored(via, snapshot, cli, repo_dir, names,
                                              mountpoint):
    target = names("part")
    result = cli("restore", snapshot, "--as", target, "--include", "/conf",
                 "--exclude", "conf/cache", "--include", "data/small.txt/", "-r",
                 str(repo_dir), PATHS[via], "--json")
    assert result.code == 0, result.stderr
    assert '"partial": true' in result.stdout
    root = mountpoint(target)
    assert contents(root) == {k: v for k, v in FILES.items()
                              if k.startswith("conf/") and not k.startswith("conf/cache")
                              or k == "data/small.txt"} | {
        "conf/hard.txt": b"small\n", "conf/link": FILES["conf/app.ini"]}
    assert not os.path.exists(os.path.join(root, "conf/cache"))
    assert sorted(os.listdir(os.path.join(root, "data"))) == ["small.txt"]
    assert os.readlink(os.path.join(root, "conf/link")) == "app.ini"
    conf = os.lstat(os.path.join(root, "conf"))
    assert (conf.st_mode & 0o7777, conf.st_uid, conf.st_gid) == (0o750, 1234, 2345)
    assert os.lstat(os.path.join(root, "conf/deep")).st_mode & 0o7777 == 0o711
    leaf = os.lstat(os.path.join(root, "conf/deep/inner/leaf.txt"))
    assert (leaf.st_mode & 0o7777, leaf.st_uid, leaf.st_gid) == (0o640, 4321, 5432)
    hard = os.lstat(os.path.join(root, "conf/hard.txt"))
    assert hard.st_ino == os.lstat(os.path.join(root, "data/small.txt")).st_ino


def test_an_excluded_path_alone_keeps_the_rest(snapshot, cli, repo_dir, names, mountpoint):
    target = names("part")
    result = cli("restore", snapshot, "--as", target, "--exclude", "data", "-r",
                 str(repo_dir))
    assert result.code == 0, result.stderr
    assert "restored part from" in result.stdout
    restored = set(contents(mountpoint(target)))
    # data/small.txt may come back as the stored target of the hard link conf/hard.txt
    assert restored - {"data/small.txt"} == {k for k in FILES if not k.startswith("data/")} | {
        "conf/hard.txt", "conf/link"}


def test_force_replaces_with_the_part(snapshot, cli, repo_dir, make_volume, mountpoint):
    existing = make_volume("keep")
    fill(mountpoint(existing.name), {"old": b"old\n"})
    result = cli("restore", snapshot, "--as", existing.name, "--force", "--include", "top.txt",
                 "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert contents(mountpoint(existing.name)) == {"top.txt": b"top\n"}
    assert "safety snapshot" in result.stdout


def test_an_include_matching_nothing_creates_nothing(snapshot, cli, repo_dir, names, client):
    target = names("none")
    result = cli("restore", snapshot, "--as", target, "--include", "conf/nope", "-r",
                 str(repo_dir))
    assert result.code == 4, result.stderr
    assert "has no 'conf/nope'" in one_line_error(result.stderr)
    assert not client.volumes.list(filters={"name": target})


def test_an_include_matching_nothing_leaves_a_forced_target_alone(snapshot, cli, repo_dir,
                                                                 make_volume, mountpoint):
    existing = make_volume("keep")
    fill(mountpoint(existing.name), {"precious": b"old\n"})
    result = cli("restore", snapshot, "--as", existing.name, "--force", "--include", "nope",
                 "-r", str(repo_dir))
    assert result.code == 4, result.stderr
    assert contents(mountpoint(existing.name)) == {"precious": b"old\n"}
    assert "safety snapshot" not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [["--include", "../etc"], ["--include", "conf/../../x"],
                                  ["--exclude", "a/.."], ["--all", "--include", "conf"]])
def test_bad_paths_are_usage_errors(args, snapshot, cli, repo_dir, names, client):
    target = names("bad")
    refs = [] if "--all" in args else [snapshot, "--as", target]
    result = cli("restore", *refs, *args, "-r", str(repo_dir))
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not client.volumes.list(filters={"name": target})

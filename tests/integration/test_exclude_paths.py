"""`backup --exclude-path`, the volbackup.exclude labels and `exclude_path` in run jobs: the
same entries left out whether GNU tar or the engine reads the volume, in both layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import make_layout
from tests.integration.helpers import PATHS, fill, one_line_error, repo_files
from volbackup.stream.exclude import Matcher

LONG = "l" * 120                     # a name of more than 100 bytes: a PAX path record
PATTERNS = ["cache", "*.tmp", "/var/log/**", f"deep/**/{LONG}"]


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


def make_tree(root: str) -> None:
    fill(root, {
        "keep.txt": b"kept\n",
        "a.tmp": b"scratch",
        "sub/b.tmp": b"scratch" * 1000,
        "sub/b.tmp.keep": b"not a .tmp",
        "cache/blob": os.urandom(300_000),
        "cache/nested/more": b"x",
        "srv/cache/c": b"y",
        "srv/cached": b"kept: not a whole component",
        "var/log/app.log": b"log",
        "var/log/old/1.log": b"log",
        "var/lib/state": b"kept",
        f"deep/a/b/{LONG}": b"long name, left out",
        f"deep/{LONG}-kept": b"long name, kept",
        "data/file": b"hard-linked",
    })
    os.link(f"{root}/data/file", f"{root}/data/link")            # kept file, kept link
    os.link(f"{root}/data/file", f"{root}/sub/x.tmp")            # kept file, link left out
    os.symlink("../keep.txt", f"{root}/sub/symlink")
    os.mkdir(f"{root}/emptydir")


def entries(root: str) -> dict[str, str]:
    """Every entry under root (relative path -> kind), directories and links too."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            out[rel] = kind + (":" + path.read_bytes().hex()[:16] if kind == "file" else "")
    return out


def test_direct_and_engine_leave_out_the_same_entries(make_volume, mountpoint, cli, repo_dir,
                                                      names, layout):
    volume = make_volume("ex")
    make_tree(mountpoint(volume.name))
    everything = entries(mountpoint(volume.name))
    matcher = Matcher(PATTERNS)
    expected = {k: v for k, v in everything.items() if not matcher.excludes(k)}
    assert "cache/blob" not in expected and "srv/cached" in expected and "var/log" in expected
    assert "data/link" in expected and "sub/x.tmp" not in expected
    assert len(expected) < len(everything) - 10
    restored = {}
    for via, option in PATHS.items():
        args = [f"--exclude-path={p}" for p in PATTERNS]
        result = cli("backup", volume.name, option, *args, "-r", str(repo_dir), "--json")
        assert result.code == 0, result.stderr
        (out,) = json.loads(result.stdout)["volumes"]
        assert out["via"] == via
        assert out["entries"] == len(expected) + 1   # the root
        target = names(via)
        shown = cli("show", out["snapshot"], "-r", str(repo_dir), "--json")
        assert json.loads(shown.stdout)["manifest"]["excluded"] == PATTERNS
        text = cli("show", out["snapshot"], "-r", str(repo_dir)).stdout
        assert "excluded:" in text and "/var/log/**" in text
        assert cli("restore", out["snapshot"], "--as", target, "-r", str(repo_dir)).code == 0
        restored[via] = entries(mountpoint(target))
        assert os.stat(f"{mountpoint(target)}/data/link").st_ino == \
            os.stat(f"{mountpoint(target)}/data/file").st_ino
    assert restored["direct"] == restored["engine"] == expected


@pytest.mark.parametrize("via", list(PATHS))
def test_a_label_on_the_volume_or_on_a_container_adds_patterns(
        make_volume, mountpoint, run_container, cli, repo_dir, names, via):
    volume = make_volume("lab", labels={"volbackup.exclude": "cache, *.tmp\n/var/log/**"})
    make_tree(mountpoint(volume.name))
    result = cli("backup", volume.name, PATHS[via], "--exclude-path", "emptydir",
                 "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    snapshot = json.loads(result.stdout)["volumes"][0]["snapshot"]
    manifest = json.loads(cli("show", snapshot, "-r", str(repo_dir), "--json").stdout)["manifest"]
    assert manifest["excluded"] == ["emptydir", "cache", "*.tmp", "/var/log/**"]
    target = names("lab")
    assert cli("restore", snapshot, "--as", target, "-r", str(repo_dir)).code == 0
    got = entries(mountpoint(target))
    assert "keep.txt" in got and "var/log" in got
    assert not {"emptydir", "cache", "a.tmp", "var/log/app.log"} & set(got)

    plain = make_volume("ctr")
    make_tree(mountpoint(plain.name))
    container = run_container("app", plain.name, labels={"volbackup.exclude": "srv,deep"})
    for args in (["--container", container.name], [plain.name]):
        result = cli("backup", *args, "--stop", PATHS[via], "-r", str(repo_dir), "--json")
        assert result.code == 0, result.stderr
        snapshot = json.loads(result.stdout)["volumes"][0]["snapshot"]
        manifest = json.loads(cli("show", snapshot, "-r", str(repo_dir), "--json").stdout)
        assert manifest["manifest"]["excluded"] == ["srv", "deep"]
        target = names("ctr")
        assert cli("restore", snapshot, "--as", target, "-r", str(repo_dir)).code == 0
        got = entries(mountpoint(target))
        assert "cache/blob" in got and not {"srv", "deep"} & set(got)


def test_a_run_job_takes_exclude_path(make_volume, mountpoint, cli, repo_dir, names, tmp_path):
    volume = make_volume("job")
    make_tree(mountpoint(volume.name))
    config = tmp_path / "volbackup.toml"
    config.write_text(f'[jobs.j]\nrepository = "{repo_dir}"\nvolumes = ["{volume.name}"]\n'
                      f'exclude_path = ["cache", "*.tmp"]\n')
    result = cli("run", "--config", str(config), "--json")
    assert result.code == 0, result.stderr
    listed = json.loads(cli("list", volume.name, "-r", str(repo_dir), "--json").stdout)
    (snapshot,) = [s["snapshot"] for s in listed["snapshots"]]
    manifest = json.loads(cli("show", snapshot, "-r", str(repo_dir), "--json").stdout)
    assert manifest["manifest"]["excluded"] == ["cache", "*.tmp"]
    target = names("job")
    assert cli("restore", snapshot, "--as", target, "-r", str(repo_dir)).code == 0
    got = entries(mountpoint(target))
    assert "keep.txt" in got and not {"cache", "a.tmp", "sub/b.tmp"} & set(got)


def test_bad_patterns_are_refused_with_nothing_written(make_volume, mountpoint, cli, repo_dir,
                                                       names, tmp_path, run_container):
    volume = make_volume("bad")
    make_tree(mountpoint(volume.name))
    before = repo_files(repo_dir)
    for bad in ("a/../b", "", "/", "a//b", "[z-a]"):
        result = cli("backup", volume.name, "--exclude-path", bad, "-r", str(repo_dir))
        assert result.code == 2, (bad, result.stderr)
        assert "--exclude-path" in result.stderr and "Traceback" not in result.stderr
    labelled = make_volume("badlabel", labels={"volbackup.exclude": "ok,../up"})
    result = cli("backup", labelled.name, "-r", str(repo_dir))
    assert result.code == 19, result.stderr
    assert f"label volbackup.exclude of volume {labelled.name}: exclude pattern '../up' has " \
        f"a '..' component" in one_line_error(result.stderr)
    container = run_container("badlabel", volume.name, labels={"volbackup.exclude": "a//b"})
    result = cli("backup", volume.name, "-r", str(repo_dir))
    assert result.code == 19, result.stderr
    assert f"label volbackup.exclude of container {container.name}: exclude pattern 'a//b'" \
        in one_line_error(result.stderr)
    config = tmp_path / "bad.toml"
    config.write_text(f'[jobs.j]\nrepository = "{repo_dir}"\nvolumes = ["{volume.name}"]\n'
                      f'exclude_path = ["./cache"]\n')
    result = cli("run", "--config", str(config))
    assert result.code == 12 and "'exclude_path'" in result.stderr, result.stderr
    assert repo_files(repo_dir) == before


def test_kept_hard_links_to_a_left_out_file_keep_its_data(make_volume, mountpoint, cli,
                                                         repo_dir, names):
    """`one/blob`, `two/blob` and `three/blob` are one (sparse) file. Tar stores the data
    under whichever name it meets first (GNU tar: directory order; the engine: name order)
    and links the others to it. Whichever names are left out, the kept ones restore as
    one file with the data, the same by both paths."""
    volume = make_volume("hl")
    root = mountpoint(volume.name)
    for sub in ("one", "two", "three"):
        os.mkdir(f"{root}/{sub}")
    with open(f"{root}/one/blob", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    data = Path(f"{root}/one/blob").read_bytes()
    os.link(f"{root}/one/blob", f"{root}/two/blob")
    os.link(f"{root}/one/blob", f"{root}/three/blob")
    for left_out in (["one"], ["two"], ["one", "three"]):
        kept = [d for d in ("one", "two", "three") if d not in left_out]
        restored = {}
        for via, option in PATHS.items():
            result = cli("backup", volume.name, option, "-r", str(repo_dir), "--json",
                         *[f"--exclude-path={p}" for p in left_out])
            assert result.code == 0, result.stderr
            target = names("hl")
            snapshot = json.loads(result.stdout)["volumes"][0]["snapshot"]
            assert cli("restore", snapshot, "--as", target, "-r", str(repo_dir)).code == 0
            back = mountpoint(target)
            restored[via] = entries(back)
            assert sorted(restored[via]) == sorted(kept + [f"{d}/blob" for d in kept])
            assert {Path(f"{back}/{d}/blob").read_bytes() == data for d in kept} == {True}
            assert len({os.stat(f"{back}/{d}/blob").st_ino for d in kept}) == 1
        assert restored["direct"] == restored["engine"]

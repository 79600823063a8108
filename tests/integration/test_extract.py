"""`volbackup extract`: a snapshot, or part of it, onto a host directory; never a byte
outside it, whatever the repository holds; bad input refused with nothing created."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.conftest import make_layout
from tests.integration.helpers import contents, fill, one_line_error
from tests.integration.test_crafted_archives import CASES, put_snapshot
from tests.unit.tars import crafted

FILES = {"conf/app.ini": b"[app]\n", "conf/cache/blob": b"c" * 5000,
         "data/big.bin": os.urandom(200_000), "top.txt": b"top\n"}


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


@pytest.fixture
def snapshot(cli, repo_dir, make_volume, mountpoint):
    source = make_volume("src")
    root = mountpoint(source.name)
    fill(root, FILES)
    os.chmod(os.path.join(root, "conf"), 0o750)
    os.chown(os.path.join(root, "conf/app.ini"), 1234, 2345)
    os.symlink("/etc/passwd", os.path.join(root, "conf/abs-link"))
    result = cli("backup", source.name, "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    return source.name


def test_a_whole_snapshot_into_a_new_directory(snapshot, cli, repo_dir, tmp_path):
    to = tmp_path / "out"
    result = cli("extract", snapshot, "--to", str(to), "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["command"] == "extract" and out["created"] and not out["partial"]
    assert {k: v for k, v in contents(str(to)).items() if k != "conf/abs-link"} == FILES
    assert os.stat(to).st_mode & 0o777 == 0o700  # DIR keeps its own mode
    assert os.lstat(to / "conf").st_mode & 0o7777 == 0o750
    app = os.lstat(to / "conf/app.ini")
    assert (app.st_uid, app.st_gid) == (1234, 2345)  # root keeps owners
    assert os.readlink(to / "conf/abs-link") == "/etc/passwd"  # a link, not followed


def test_part_of_a_snapshot_into_an_empty_directory(snapshot, cli, repo_dir, tmp_path):
    to = tmp_path / "empty"
    to.mkdir(mode=0o755)
    result = cli("extract", snapshot, "--to", str(to), "--include", "/conf/",
                 "--exclude", "conf/cache", "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert "extracted part of" in result.stdout
    assert sorted(os.listdir(to)) == ["conf"]
    assert sorted(os.listdir(to / "conf")) == ["abs-link", "app.ini"]
    assert (to / "conf/app.ini").read_bytes() == b"[app]\n"
    assert os.stat(to).st_mode & 0o777 == 0o755


@pytest.mark.parametrize("layout", ["archive"])
def test_bad_input(snapshot, cli, repo_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_bytes(b"mine\n")
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    new = tmp_path / "new"
    cases = [
        (["--to", str(busy)], 8, "is not empty"),
        (["--to", str(a_file)], 2, "is a file"),
        (["--to", str(tmp_path / "no" / "such")], 8, "cannot create"),
        (["--to", str(new), "--include", "nope"], 4, "has no 'nope'"),
        (["--to", str(new), "--include", "conf/../.."], 2, "'..'"),
        (["--to", str(new), "--exclude", "../x"], 2, "'..'"),
    ]
    for args, code, words in cases:
        result = cli("extract", snapshot, *args, "-r", str(repo_dir))
        assert result.code == code, (args, result.stderr)
        # usage errors (2) are click's: a usage line, then one "Error:" line
        line = one_line_error(result.stderr) if code != 2 else result.stderr.splitlines()[-1]
        assert words in line and "Traceback" not in result.stderr, (args, result.stderr)
    unknown = cli("extract", "no-such-volume", "--to", str(new), "-r", str(repo_dir))
    assert unknown.code == 4 and "no-such-volume" in one_line_error(unknown.stderr)
    assert not new.exists()
    assert contents(str(busy)) == {"keep": b"mine\n"}
    assert a_file.read_bytes() == b"x"


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "a crafted archive wrote outside the directory"


@pytest.mark.parametrize("case", CASES + ["dotdot-inside", "deep-under-symlink",
                                          "hardlink-dotdot"])
def test_crafted_snapshots_write_nothing_outside(case, layout, cli, repo_dir, outside, names,
                                                 tmp_path):
    tar, member = crafted(str(outside), filler=os.urandom(100_000))[case]
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    to = tmp_path / "to"
    result = cli("extract", snapshot, "--to", str(to), "-r", str(repo_dir))
    assert result.code == 6, result.stderr
    line = one_line_error(result.stderr)
    assert f"tar member '{member}' " in line and "refused" in line
    assert not to.exists(), "a failed extract left its directory behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "repo"]


@pytest.mark.parametrize("case", ["dotdot", "under-symlink", "hardlink-to-symlink",
                                  "repeated-name"])
def test_a_part_of_a_crafted_snapshot_is_refused_before_the_directory_is_made(
        case, layout, cli, repo_dir, outside, names, tmp_path):
    """Without a catalogue the snapshot is catalogued by reading it, checked: the bad
    member is found before DIR exists."""
    tar, member = crafted(str(outside))[case]
    snapshot = put_snapshot(repo_dir, names("src"), tar, layout)
    to = tmp_path / "to"
    result = cli("extract", snapshot, "--to", str(to), "--include", "hello.txt", "-r",
                 str(repo_dir))
    assert result.code == 6, result.stderr
    assert f"tar member '{member}' " in one_line_error(result.stderr)
    assert not to.exists()

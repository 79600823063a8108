"""`ls`, `dump` and `diff` end to end: a real volume (every kind of entry), backed up
through the CLI into both layouts, then browsed through the CLI and compared with the
volume's real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

from tests.integration.conftest import make_layout
from tests.integration.corpus import tree, write_corpus


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


def ok(cli, *args):
    run = cli(*args)
    assert run.code == 0, f"volbackup {' '.join(args)}: {run.stderr}"
    return run


def snapshot_of(cli, volume, repo) -> str:
    run = ok(cli, "backup", volume, "-r", str(repo), "--json")
    return json.loads(run.stdout)["volumes"][0]["snapshot"]


def ls_json(cli, ref, repo, *args) -> list[dict]:
    head, *entries = [json.loads(line) for line in ok(
        cli, "ls", ref, *args, "--json", "-r", str(repo)).stdout.splitlines()]
    assert head["command"] == "ls"
    return entries


def raw(*args) -> bytes:
    """The stdout of `volbackup ARGS` as bytes (run_cli decodes it as UTF-8: a file's
    bytes, or a name that is not UTF-8, would not decode)."""
    proc = subprocess.run([sys.executable, "-m", "volbackup", *args], capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dump_bytes(repo, ref, path) -> bytes:
    return raw("dump", ref, path, "-r", str(repo))


@pytest.fixture
def corpus(make_volume, mountpoint, cli, repo_dir):
    volume = make_volume("browse").name
    root = mountpoint(volume)
    write_corpus(root)
    return volume, root, snapshot_of(cli, volume, repo_dir)


def test_ls_lists_the_volume_as_it_is(corpus, cli, repo_dir):
    volume, root, snapshot = corpus
    real = tree(root)
    entries = ls_json(cli, snapshot, repo_dir)
    listed = {os.fsencode(e["path"]): e for e in entries}
    assert set(listed) == set(real)
    for path, e in listed.items():
        kind, mode, uid, gid, size, content, mtime, _ = real[path]
        assert (e["mode"], e["uid"], e["gid"], int(e["mtime"])) == (mode, uid, gid, mtime), path
        if e["type"] == "file":
            assert (e["size"], e["sha256"]) == (size, content), path
        elif e["type"] == "symlink":
            assert os.fsencode(e["link"]) == content and kind == stat.S_IFLNK
        elif e["type"] == "hardlink":
            assert real[os.fsencode(e["link"])][5] == content
    assert [e["path"] for e in ls_json(cli, volume, repo_dir, "/dir/sub/")][0] == "dir/sub"
    long = ok(cli, "ls", volume, "/link-relative", "--long", "-r", str(repo_dir)).stdout
    assert long.startswith("lrwxrwxrwx  1234/5678 ") and long.endswith(
        " /link-relative -> hello.txt\n")
    names = raw("ls", volume, "-r", str(repo_dir)).splitlines()
    # text output: the names' own bytes, control characters escaped
    assert b"/new\\x0aline" in names and b"/latin1-\xe9\xff.bin" in names
    assert len(names) == len(real)


def test_dump_gives_the_real_files_bytes(corpus, repo_dir):
    volume, root, snapshot = corpus
    for path in ("big.bin", "hello.txt", "dir/sub/hardlink-b", "hardlink-c",
                 "many/00007.dat", "caf\u00e9-\u65e5\u672c.txt"):
        with open(os.path.join(root, path), "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        assert hashlib.sha256(dump_bytes(repo_dir, snapshot, "/" + path)).hexdigest() == want


def test_dump_of_a_directory_is_a_tar_of_it(corpus, repo_dir, cli, tmp_path):
    volume, root, snapshot = corpus
    out = tmp_path / "dir.tar"
    ok(cli, "dump", volume, "dir", "-o", str(out), "-r", str(repo_dir))
    with tarfile.open(out) as t:
        members = {m.name.lstrip("./") or ".": m for m in t.getmembers()}
        got = t.extractfile(members["dir/hardlink-a"]).read()
    want = {".", "dir", "dir/sub"} | {f"dir/{n}" for n in os.listdir(f"{root}/dir")} | {
        f"dir/sub/{n}" for n in os.listdir(f"{root}/dir/sub")}
    # and the entry holding the data of dir/'s hard links, where the stream has it first
    # (outside dir/ in readdir order; in name order, as a packed backup reads, dir/ has it)
    holder = members["dir/hardlink-a"].linkname.lstrip("./")
    assert set(members) - want == ({holder} if holder else set())
    assert got == b"one inode, two names\n"
    whole = io.BytesIO(dump_bytes(repo_dir, volume, "/"))
    with tarfile.open(fileobj=whole) as t:
        assert len(t.getmembers()) == len(tree(root))


def test_bad_input_is_one_line_and_an_exit_code(corpus, cli, repo_dir, tmp_path):
    volume, root, snapshot = corpus
    out = tmp_path / "x"
    for args, code, words in [
            (("ls", volume, "/nope"), 4, "has no 'nope'"),
            (("ls", volume, "dir/../../etc"), 2, "'..'"),
            (("ls", "vbt-no-such-volume"), 4, "vbt-no-such-volume"),
            (("dump", volume, "/link-relative", "-o", str(out)), 1,
             "symbolic link to 'hello.txt'"),
            (("dump", volume, "/fifo"), 1, "is a fifo"),
            (("dump", volume, "/nope", "-o", str(out)), 4, "has no 'nope'"),
            (("diff", volume, "vbt-no-such-volume"), 4, "vbt-no-such-volume")]:
        run = cli(*args, "-r", str(repo_dir))
        assert (run.code, run.stdout) == (code, ""), (args, run.stderr)
        lines = run.stderr.splitlines()
        assert words in lines[-1], run.stderr
        assert len(lines) == 1 or code == 2, run.stderr  # click's usage message, then it
    assert not out.exists() and os.listdir(tmp_path) == ["repo"]


def test_diff_names_what_changed_in_the_volume(corpus, cli, repo_dir):
    volume, root, first = corpus
    with open(f"{root}/hello.txt", "ab") as f:
        f.write(b"more\n")
    os.chmod(f"{root}/setuid", 0o755)
    os.chown(f"{root}/big-ids", 1, 2)
    os.remove(f"{root}/many/00001.dat")
    os.remove(f"{root}/link-dangling")
    os.symlink("somewhere/else", f"{root}/link-dangling")
    with open(f"{root}/added.txt", "wb") as f:
        f.write(b"x" * 1000)
    os.utime(f"{root}/many/00002.dat", (1, 1))     # mtime alone: no change
    second = snapshot_of(cli, volume, repo_dir)
    run = ok(cli, "diff", first, second, "--json", "-r", str(repo_dir))
    head, *changes, summary = [json.loads(line) for line in run.stdout.splitlines()]
    got = {(c["change"], c["path"], tuple(c["what"])) for c in changes
           if c["type"] != "dir"}  # directories' mtimes changed: not a change
    assert got == {("modified", "hello.txt", ("content",)),
                   ("modified", "setuid", ("mode",)),
                   ("modified", "big-ids", ("owner",)),
                   ("modified", "link-dangling", ("link",)),
                   ("removed", "many/00001.dat", ()),
                   ("added", "added.txt", ())}
    assert summary["summary"]["added"] == 1 and summary["summary"]["removed"] == 1
    hello = next(c for c in changes if c["path"] == "hello.txt")
    assert (hello["old_size"], hello["new_size"]) == (14, 19)
    text = ok(cli, "diff", first, second, "-r", str(repo_dir)).stdout.splitlines()
    assert "M    /hello.txt (content; 14 B -> 19 B)" in text and "+    /added.txt" in text
    assert text[-1].startswith("1 added, 1 removed, ")

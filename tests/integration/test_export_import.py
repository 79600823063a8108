"""`export` and `import` end to end: a real engine, stock zstd/tar/gzip/bzip2/xz, the real CLI.

Exports are extracted with stock `zstd -dc | tar -x` and compared, entry for entry (content,
modes, owners, mtimes, symlinks, hard links), with the volume they came from. Imports are
made with stock tools from a directory, restored into a fresh volume and compared with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from tests.integration.corpus import SMALL_FILES, differences, tree, write_corpus
from tests.integration.helpers import one_line_error, repo_files, start

MTIME = 1_650_000_000


def _layout(cli, repo: str, layout: str) -> str:
    if layout in ("chunked", "packed"):
        made = cli("init", "-r", repo, "--layout", layout)
        assert made.code == 0, made.stderr
    return repo


def _extract(archive: Path, into: Path) -> None:
    """Stock tools only: zstd -dc FILE | tar -x (as root: owners, modes, times, devices)."""
    into.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -C '{into}' -x --numeric-owner",
                   shell=True, check=True)


def _snapshots(cli, repo: str) -> list[str]:
    listed = cli("list", "-r", repo, "--json")
    assert listed.code == 0, listed.stderr
    return [s["snapshot"] for s in json.loads(listed.stdout)["snapshots"]]


@pytest.mark.parametrize("layout", ["archive", "chunked", "packed"])
def test_export_extracts_with_stock_tools_to_the_volume(layout, make_volume, mountpoint, repo_dir,
                                                        tmp_path, cli):
    repo = _layout(cli, str(repo_dir), layout)
    volume = make_volume("exp")
    write_corpus(mountpoint(volume.name))
    expected = tree(mountpoint(volume.name))
    assert cli("backup", volume.name, "-r", repo).code == 0

    out = tmp_path / "out" / "vol.tar.zst"
    out.parent.mkdir()
    done = cli("export", volume.name, "-r", repo, "-o", str(out), "--json")
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["command"] == "export" and result["file"] == str(out)
    assert result["bytes"] == out.stat().st_size
    assert result["sha256"] == subprocess.run(["sha256sum", str(out)], capture_output=True,
                                              text=True).stdout.split()[0]
    assert out.stat().st_mode & 0o777 == 0o600
    assert os.listdir(out.parent) == ["vol.tar.zst"]   # no temp file left
    _extract(out, tmp_path / "x")
    actual = tree(str(tmp_path / "x"))
    assert len(actual) > SMALL_FILES and differences(expected, actual) == []

    again = cli("export", volume.name, "-r", repo, "-o", str(out))
    assert again.code == 8 and "--force" in one_line_error(again.stderr)
    forced = cli("export", volume.name, "-r", repo, "-o", str(out), "--force", "--level", "1")
    assert forced.code == 0, forced.stderr


def test_export_to_stdout_and_tar_zstd(make_volume, mountpoint, repo_dir, tmp_path):
    volume = make_volume("stdout")
    Path(mountpoint(volume.name), "a.txt").write_text("to stdout\n")
    env = {**os.environ}
    subprocess.run([sys.executable, "-m", "volbackup", "backup", volume.name, "-r", str(repo_dir)],
                   check=True, capture_output=True, env=env)
    with open(tmp_path / "s.tar.zst", "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "volbackup", "export", volume.name, "-r",
                               str(repo_dir), "-o", "-"], stdout=f, stderr=subprocess.PIPE,
                              text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "exported" in proc.stderr   # the result goes to stderr, stdout is the archive
    (tmp_path / "y").mkdir()
    subprocess.run(["tar", "--zstd", "-C", str(tmp_path / "y"), "-xf",
                    str(tmp_path / "s.tar.zst")], check=True)
    assert (tmp_path / "y" / "a.txt").read_text() == "to stdout\n"


@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_a_damaged_snapshot_leaves_no_file(layout, make_volume, mountpoint, repo_dir, tmp_path,
                                           cli):
    repo = _layout(cli, str(repo_dir), layout)
    volume = make_volume("damaged")
    Path(mountpoint(volume.name), "data.bin").write_bytes(os.urandom(3 << 20))
    assert cli("backup", volume.name, "-r", repo).code == 0
    # The largest archive or chunk (chunk sizes vary with the repository's random seed).
    stored = sorted((p for p in repo_dir.rglob("*") if p.is_file() and p.name != "config"
                     and p.suffix not in (".json", ".chunks")), key=lambda p: p.stat().st_size,
                    reverse=True)
    assert stored and stored[0].stat().st_size > 64 << 10, "no archive or chunk to damage"
    with open(stored[0], "r+b") as f:   # one byte in the middle of an archive or a chunk
        f.seek(stored[0].stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "out"
    out.mkdir()
    failed = cli("export", volume.name, "-r", repo, "-o", str(out / "v.tar.zst"))
    assert failed.code == 6, failed.stderr
    one_line_error(failed.stderr)
    assert os.listdir(out) == []


def _source_tree(root: Path) -> None:
    """Files, subdirectories, a symlink, a hard link, spaces and UTF-8 in a name, an empty
    directory, odd modes and owners, fixed mtimes."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "sub" / "spaced name \u00fc\u65e5.txt").write_text("unicode\n")
    (root / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(2 << 20) + bytes(2 << 20))
    (root / "secret").write_text("0600, owned by 1234\n")
    os.chmod(root / "secret", 0o600)
    os.chown(root / "secret", 1234, 5678)
    os.symlink("hello.txt", root / "link")
    os.symlink("../hello.txt", root / "sub" / "up-link")
    os.link(root / "hello.txt", root / "sub" / "hard")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.chmod(root, 0o750)
    os.utime(root, (MTIME - 5, MTIME - 5))


COMPRESSORS = {"tar": "cat", "gzip": "gzip -c", "bzip2": "bzip2 -c", "xz": "xz -c -T2",
               "zstd": "zstd -q -c"}


@pytest.mark.parametrize("kind,layout", [("tar", "archive"), ("gzip", "archive"),
                                         ("bzip2", "archive"), ("xz", "chunked"),
                                         ("zstd", "packed")])
def test_import_each_format_restores_to_the_source(kind, layout, names, mountpoint, repo_dir,
                                                   tmp_path, cli):
    repo = _layout(cli, str(repo_dir), layout)
    source = tmp_path / "src"
    source.mkdir()
    _source_tree(source)
    archive = tmp_path / "input.bin"   # no telling name: the format comes from its bytes
    subprocess.run(f"tar -C '{source}' -c . | {COMPRESSORS[kind]} > '{archive}'", shell=True,
                   check=True)
    volume = names("imp")
    done = cli("import", str(archive), "-r", repo, "--volume", volume, "--label", "app=shop",
               "--label", "tier=db", "--json")
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["format"] == kind and result["root_added"] is False
    show = json.loads(cli("show", result["snapshot"], "-r", repo, "--json").stdout)
    manifest = show.get("manifest", show)
    assert manifest["source_kind"] == "import" and manifest["driver"] == "local"
    assert manifest["labels"] == {"app": "shop", "tier": "db"}
    # a packed repository's snapshots are chunked ones written as trees (format version 4)
    assert manifest["layout"] == ("archive" if layout == "archive" else "chunked")
    assert (manifest["format_version"] == 4) == (layout == "packed")

    target = names("restored")
    restored = cli("restore", volume, "-r", repo, "--as", target)
    assert restored.code == 0, restored.stderr
    assert differences(tree(str(source)), tree(mountpoint(target))) == []


def test_import_offen_layout_with_strip_components(names, mountpoint, repo_dir, tmp_path, cli):
    """offen/docker-volume-backup archives /backup/<name>/...: members backup/NAME/x."""
    parent = tmp_path / "offen"
    source = parent / "backup" / "app_data"
    source.mkdir(parents=True)
    _source_tree(source)
    archive = tmp_path / "backup-2026-12-02T03-00-00.tar.gz"
    subprocess.run(["tar", "-C", str(parent), "-czf", str(archive), "backup"], check=True)
    volume = names("offen")
    done = cli("import", str(archive), "-r", str(repo_dir), "--volume", volume,
               "--strip-components", "2")
    assert done.code == 0, done.stderr
    target = names("offen-restored")
    assert cli("restore", volume, "-r", str(repo_dir), "--as", target).code == 0
    assert differences(tree(str(source)), tree(mountpoint(target))) == []


def test_import_without_a_root_entry_gets_one(names, mountpoint, repo_dir, tmp_path, cli):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a\n")
    (source / "d").mkdir()
    (source / "d" / "b").write_text("b\n")
    archive = tmp_path / "noroot.tar"
    subprocess.run(["tar", "-C", str(source), "-cf", str(archive), "a", "d"], check=True)
    volume = names("noroot")
    with open(archive, "rb") as stdin:   # `-` reads stdin
        proc = subprocess.run([sys.executable, "-m", "volbackup", "import", "-", "-r", str(repo_dir),
                               "--volume", volume], stdin=stdin, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "root ./ added" in proc.stdout
    target = names("noroot-restored")
    assert cli("restore", volume, "-r", str(repo_dir), "--as", target).code == 0
    root = mountpoint(target)
    assert Path(root, "d", "b").read_text() == "b\n"
    assert os.stat(root).st_mode & 0o7777 == 0o755


def _junk(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    src = tmp_path / "junk-src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(16 << 20))  # chunks stored before the cut
    good = tmp_path / "good.tar.gz"
    subprocess.run(["tar", "-C", str(src), "-czf", str(good), "."], check=True)
    cases = {}

    def case(name: str, data: bytes, extra: list[str], words: str) -> None:
        path = tmp_path / f"junk-{name}"
        path.write_bytes(data)
        cases[name] = (path, extra, words)

    case("random", os.urandom(8192), [], "not a tar archive")
    case("empty", b"", [], "empty")
    case("truncated-gzip", good.read_bytes()[:-5000], [], "truncated")
    case("zstd-not-tar", subprocess.run(["zstd", "-q", "-c"], input=b"plain text\n" * 99,
                                        capture_output=True, check=True).stdout, [],
         "corrupt tar header")
    absolute = subprocess.run(["tar", "-C", "/", "-cf", "-", "-P", str(src / "f")],
                              capture_output=True, check=True).stdout
    case("absolute", absolute, [], "absolute name")
    dotdot = subprocess.run(["tar", "-C", str(src), "-cf", "-", "-P", "../junk-src/f"],
                            capture_output=True, check=True).stdout
    case("dotdot", dotdot, [], "'..'")
    case("strip-everything", good.read_bytes(), ["--strip-components", "3"], "leaves nothing")
    appended = tmp_path / "appended.tar"   # `tar -r` of a changed file: its name twice
    subprocess.run(["tar", "-C", str(src), "-cf", str(appended), "./f"], check=True)
    (src / "f").write_bytes(b"changed\n")
    subprocess.run(["tar", "-C", str(src), "-rf", str(appended), "./f"], check=True)
    case("repeated-name", appended.read_bytes(), [],
         "tar member './f' has the name of an earlier member")
    two = tmp_path / "two" / "backup"
    for volume in ("app_data", "db_data"):
        (two / volume).mkdir(parents=True)
        (two / volume / "x").write_text(volume)
    offen_two = subprocess.run(["tar", "-C", str(two.parent), "-czf", "-", "backup"],
                               capture_output=True, check=True).stdout
    case("offen-two-volumes", offen_two, ["--strip-components", "2"], "would be merged")
    return cases


@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_junk_is_refused_and_makes_no_snapshot(layout, repo_dir, tmp_path, cli):
    repo = _layout(cli, str(repo_dir), layout)
    before = repo_files(repo_dir)
    for name, (path, extra, words) in _junk(tmp_path).items():
        refused = cli("import", str(path), "-r", repo, "--volume", "vbt-io-junk", *extra)
        assert refused.code == 16, (name, refused.stderr)
        line = one_line_error(refused.stderr)
        assert words in line and "no snapshot made" in line, (name, line)
    assert _snapshots(cli, repo) == []
    after = repo_files(repo_dir)
    if layout == "archive":
        assert after == before   # no archive, no temp file, no lock
    else:   # chunks the truncated input had stored, which nothing names; prune sweeps them
        leftover = [f for f in after if f not in before]
        assert leftover and all(f.startswith("chunks/") for f in leftover), leftover
        pruned = cli("prune", "-r", repo, "--keep-last", "1", "--leftover-age", "0")
        assert pruned.code == 0, pruned.stderr
        assert [f for f in repo_files(repo_dir) if f not in before] == []


def test_import_and_export_on_s3(names, mountpoint, s3_bucket, tmp_path, cli):
    repo = f"s3://{s3_bucket}/io"
    source = tmp_path / "src"
    source.mkdir()
    _source_tree(source)
    archive = tmp_path / "in.tar.xz"
    subprocess.run(["tar", "-C", str(source), "-cJf", str(archive), "."], check=True)
    volume = names("s3imp")
    done = cli("import", str(archive), "-r", repo, "--volume", volume)
    assert done.code == 0, done.stderr
    junk = tmp_path / "junk"
    junk.write_bytes(archive.read_bytes()[:-200])
    refused = cli("import", str(junk), "-r", repo, "--volume", volume)
    assert refused.code == 16 and len(_snapshots(cli, repo)) == 1
    out = tmp_path / "out.tar.zst"
    exported = cli("export", volume, "-r", repo, "-o", str(out))
    assert exported.code == 0, exported.stderr
    _extract(out, tmp_path / "x")
    assert differences(tree(str(source)), tree(str(tmp_path / "x"))) == []


_PEAK = ("import resource, subprocess, sys; "
         "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _peak_rss_mib(args: list[str], feed=None) -> float:
    """Peak RSS of `volbackup ARGS` (MiB), with `feed(stdin)` writing its input."""
    proc = subprocess.Popen([sys.executable, "-c", _PEAK, sys.executable, "-m", "volbackup",
                             *args], stdin=subprocess.PIPE if feed else None,
                            stdout=subprocess.PIPE, text=False)
    if feed:
        feed(proc.stdin)
        proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait() == 0
    return int(out) / 1024


def _gzipped_tar(size: int):
    """A tar.gz of one file of `size` bytes, half random, written as it is made."""
    def feed(out) -> None:
        z = zlib.compressobj(1, wbits=16 + zlib.MAX_WBITS)
        info = tarfile.TarInfo("./data.bin")
        info.size = size
        out.write(z.compress(_root_header() + info.tobuf(tarfile.PAX_FORMAT)))
        for i in range(size >> 20):
            out.write(z.compress(os.urandom(1 << 20) if i % 2 else bytes(1 << 20)))
        out.write(z.compress(bytes(1024)) + z.flush())
    return feed


def _root_header() -> bytes:
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    return root.tobuf(tarfile.PAX_FORMAT)


@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_memory_stays_flat_for_import_and_export(layout, tmp_path, cli):
    peaks = {}
    for mib in (32, 256):
        repo_path = tmp_path / f"repo{mib}"
        repo_path.mkdir()
        repo = _layout(cli, str(repo_path), layout)
        imported = _peak_rss_mib(["import", "-", "--volume", "vbt-io-mem", "-r", repo],
                                 _gzipped_tar(mib << 20))
        exported = _peak_rss_mib(["export", "vbt-io-mem", "-r", repo, "-o",
                                  str(tmp_path / f"out{mib}.tar.zst")])
        assert (tmp_path / f"out{mib}.tar.zst").stat().st_size > (mib << 20) // 2
        peaks[mib] = (imported, exported)
    # a copy of the data in memory would add 224 MiB; streaming adds next to nothing
    assert peaks[256][0] < peaks[32][0] + 48, peaks
    assert peaks[256][1] < peaks[32][1] + 48, peaks


def test_ctrl_c_during_export_leaves_no_file(tmp_path, repo_dir):
    _peak_rss_mib(["import", "-", "--volume", "vbt-io-int", "-r", str(repo_dir)],
                  _gzipped_tar(128 << 20))
    out = tmp_path / "out"
    out.mkdir()
    proc = start("export", "vbt-io-int", "-r", str(repo_dir), "-o", str(out / "v.tar.zst"),
                 "--level", "19")   # slow enough to be caught half way
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert one_line_error(stderr) == "volbackup: error: interrupted"
    assert os.listdir(out) == []


def test_import_keeps_xattrs_and_nanosecond_mtimes(names, mountpoint, repo_dir, tmp_path, cli):
    """PAX records of the input (GNU tar --xattrs) survive the re-written headers."""
    source = tmp_path / "src"
    source.mkdir()
    note = source / "note.txt"
    note.write_text("with an xattr\n")
    os.setxattr(note, "user.note", b"kept through import")
    os.utime(note, ns=(1_650_000_000_123_456_789, 1_650_000_000_123_456_789))
    archive = tmp_path / "x.tar.zst"
    subprocess.run(f"tar --xattrs --xattrs-include='*' -C '{source}' -c . | zstd -q > '{archive}'",
                   shell=True, check=True)
    volume = names("xattr")
    assert cli("import", str(archive), "-r", str(repo_dir), "--volume", volume).code == 0
    target = names("xattr-restored")
    assert cli("restore", volume, "-r", str(repo_dir), "--as", target).code == 0
    copy = Path(mountpoint(target), "note.txt")
    assert os.getxattr(copy, "user.note") == b"kept through import"
    assert os.stat(copy).st_mtime_ns == 1_650_000_000_123_456_789

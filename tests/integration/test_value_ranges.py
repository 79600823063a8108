"""Values at the edges (issue 23, items 1 to 3).

1. What a real file system holds (times before 1970 and far ahead, uids and gids in the
   millions and up to 2^32 - 2, every mode bit, long names and link targets) goes through
   backup, catalogue, `ls --long`, `ls --json`, `diff`, `verify` and restore, on both
   paths and both layouts, and comes back as it was (compared with os.lstat on the host).
2. What a tar header, a catalogue line or a manifest can hold but no volume can is shown
   (a year past 9999, an id past 2^32) or refused with a one-line error (a mode of 70000,
   a sha256 that is not hex, a NaN time, 10^12 catalogue pieces, zstd level 99): never an
   "unexpected" error.
3. A `.catalog.zst` that expands to a gigabyte (a zstd bomb) is refused as damage (exit 6)
   by every reader, with memory flat (peak RSS of the command, not of this process).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zstandard

from tests.integration.conftest import make_layout
from tests.integration.corpus import differences, tree
from tests.integration.helpers import PATHS, one_line_error

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# name -> mtime in seconds; ext4 (the engine's volumes here) holds 1901-12-13 to 2446-05-10
MTIMES = {"minus-one": -1, "year-1940": -946_771_200, "oldest-ext4": -(1 << 31),
          "after-2038": (1 << 31) + 5, "year-2446": 15_032_385_535}
OWNERS = {"big-ids": (3_000_000, 3_000_001), "max-ids": (4_294_967_294, 4_294_967_294)}
MODES = {"all-bits": 0o7777, "setuid-only": 0o4000, "setgid-x": 0o2711}
ENGINE_LATEST = 9_223_372_036                        # 2262-04-11: the engine sets none later
LONG = "n" * 255                                     # the longest name a component has
DEEP = "/".join([LONG] * 10)                         # a path of 2,559 bytes
TARGET = "t/" * 2000 + "end"                         # a symlink target of 4,003 bytes
LONG_LINE = re.compile(r"\S+ +\d+/\d+ +\d+ \S+ \S+ (.*)")  # `ls -l`: the path (and target)


def write_values(root: str) -> None:
    """Every edge value a volume can hold, written as root straight into its mountpoint."""
    def path(rel: str) -> str:
        return os.path.join(root, rel)

    for name in list(MTIMES) + list(OWNERS) + list(MODES):
        Path(path(name)).write_bytes(name.encode() + b"\n")
    for name, (uid, gid) in OWNERS.items():
        os.chown(path(name), uid, gid)
    for name, mode in MODES.items():
        os.chmod(path(name), mode)
    os.mkdir(path("sticky-dir"))
    os.chmod(path("sticky-dir"), 0o1777)
    os.mkdir(path("setgid-dir"))
    os.chown(path("setgid-dir"), 3_000_000, 4_294_967_294)
    os.chmod(path("setgid-dir"), 0o3775)
    os.makedirs(path(DEEP))
    Path(path(f"{DEEP}/{LONG}")).write_bytes(b"at the bottom of a long path\n")
    os.link(path(f"{DEEP}/{LONG}"), path("hardlink-to-deep"))
    os.symlink(TARGET, path("long-target"))
    os.lchown(path("long-target"), 3_000_000, 3_000_001)
    for name, t in MTIMES.items():   # last: making entries changes their directory's mtime
        os.utime(path(name), ns=(t * 10**9, t * 10**9))
    os.utime(path("long-target"), ns=(-5 * 10**9, -5 * 10**9), follow_symlinks=False)
    os.utime(root, ns=(-(10**9) * 86400, -(10**9) * 86400))
    for name, t in MTIMES.items():   # the file system took them as they are
        assert os.lstat(path(name)).st_mtime_ns == t * 10**9, name


def shown_time(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


def ok(cli, *args) -> str:
    result = cli(*args)
    assert result.code == 0, result.stderr
    return result.stdout


def backup(cli, volume: str, repo: str, *options: str) -> str:
    out = ok(cli, "backup", volume, "-r", repo, "--json", *options)
    return json.loads(out)["volumes"][0]["snapshot"]


@pytest.mark.parametrize("via", list(PATHS))
@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_every_value_a_volume_holds_round_trips(layout, via, cli, repo_dir, make_volume,
                                                mountpoint, names, client):
    repo = str(repo_dir)
    make_layout(repo, layout)
    volume = make_volume("edges").name
    write_values(mountpoint(volume))
    expected = tree(mountpoint(volume))
    snapshot = backup(cli, volume, repo, PATHS[via])

    lines = {LONG_LINE.fullmatch(line)[1]: line for line in
             ok(cli, "ls", snapshot, "--long", "-r", repo).splitlines()}
    for name, t in MTIMES.items():
        assert shown_time(t) in lines[f"/{name}"], lines[f"/{name}"]
    assert lines["/big-ids"].split()[1] == "3000000/3000001"
    assert lines["/max-ids"].split()[1] == "4294967294/4294967294"
    assert lines["/all-bits"].startswith("-rwsrwsrwt ")
    assert lines["/setuid-only"].startswith("---S------ ")
    assert lines["/sticky-dir"].startswith("drwxrwxrwt ")
    assert lines[f"/long-target -> {TARGET}"].startswith("lrwxrwxrwx 3000000/3000001 ")
    assert shown_time(-86400) in lines["/"]

    listed = {e["path"]: e for e in map(json.loads, ok(
        cli, "ls", snapshot, "--json", "-r", repo).splitlines()[1:])}
    assert {name: listed[name]["mtime"] for name in MTIMES} == MTIMES
    assert listed["long-target"]["link"] == TARGET and listed["long-target"]["mtime"] == -5
    assert (listed["max-ids"]["uid"], listed["max-ids"]["gid"]) == OWNERS["max-ids"]
    assert listed["all-bits"]["mode"] == 0o7777 and listed["setgid-dir"]["mode"] == 0o3775
    names_of_inode = {"hardlink-to-deep", f"{DEEP}/{LONG}"}
    [link] = [listed[n] for n in names_of_inode if listed[n]["type"] == "hardlink"]
    assert {link["path"], link["link"]} == names_of_inode

    assert "ok" in ok(cli, "verify", snapshot, "-r", repo)
    dumped = subprocess.run([sys.executable, "-m", "volbackup", "dump", snapshot,
                             f"/{DEEP}/{LONG}", "-r", repo], capture_output=True, timeout=120)
    assert (dumped.returncode, dumped.stdout) == (0, b"at the bottom of a long path\n")
    same = ok(cli, "diff", snapshot, snapshot, "-r", repo, "--json").splitlines()
    assert json.loads(same[-1])["summary"]["modified"] == 0 and len(same) == 2

    os.chown(os.path.join(mountpoint(volume), "big-ids"), 4_294_967_294, 0)
    os.chmod(os.path.join(mountpoint(volume), "all-bits"), 0o1777)
    later = backup(cli, volume, repo, PATHS[via])
    changes = [json.loads(line) for line in ok(
        cli, "diff", snapshot, later, "-r", repo, "--json").splitlines()[1:-1]]
    assert sorted((c["path"], c["what"]) for c in changes) == [
        ("all-bits", ["mode"]), ("big-ids", ["owner"])]

    copy = names("copy")
    restored = cli("restore", snapshot, "--as", copy, "-r", repo, PATHS[via])
    assert restored.code == 0, restored.stderr
    if via == "engine":  # moby's extractor dates what it cannot set 1970-01-01: said, not hidden
        assert "restore with --direct to keep them" in restored.stderr
        expected = {rel: d if stat.S_ISLNK(d[0]) or 0 <= d[6] < ENGINE_LATEST  # (not links')
                    else d[:6] + (0,) + d[7:] for rel, d in expected.items()}
    else:
        assert restored.stderr == ""
    found = differences(expected, tree(mountpoint(copy)))
    assert found == [], "\n".join(line[:300] for line in found)


# -- 2. out of range: shown if a tar can hold it, refused as damage if no writer makes it


FAR = 299_792_458_000                   # 11470-01-17 02:46:40 UTC: btrfs holds it, datetime not
HUGE_ID, HUGE_GID = 1 << 40, (1 << 33) + 7


def far_tar(uid: int) -> bytes:
    """A tar whose file has a time in the year 11470 and a 41-bit uid (PAX headers)."""
    root = tarfile.TarInfo("./")
    root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, 0
    info = tarfile.TarInfo("./far")
    info.size, info.mtime, info.uid, info.gid = 4, FAR, uid, HUGE_GID
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(root)
        tar.addfile(info, io.BytesIO(b"far\n"))
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_an_imported_year_11470_and_a_41_bit_uid_are_shown(layout, cli, repo_dir, tmp_path,
                                                           names):
    repo = str(repo_dir)
    make_layout(repo, layout)
    volume = names("far")
    snapshots = []
    for uid in (HUGE_ID, HUGE_ID + 1):
        (tmp_path / "far.tar").write_bytes(far_tar(uid))
        ok(cli, "import", str(tmp_path / "far.tar"), "--volume", volume, "-r", repo)
        snapshots.append(json.loads(ok(cli, "list", volume, "-r", repo, "--json"))
                         ["snapshots"][-1]["snapshot"])
    long = ok(cli, "ls", snapshots[0], "/far", "-l", "-r", repo)
    assert long.split()[1:5] == [f"{HUGE_ID}/{HUGE_GID}", "4", "11470-01-17", "02:46:40"]
    [entry] = map(json.loads, ok(cli, "ls", snapshots[0], "/far", "--json",
                                 "-r", repo).splitlines()[1:])
    assert (entry["mtime"], entry["uid"], entry["gid"]) == (FAR, HUGE_ID, HUGE_GID)
    diff = ok(cli, "diff", *snapshots, "-r", repo)
    assert "M    /far (owner)" in diff.splitlines()
    assert "ok" in ok(cli, "verify", snapshots[0], "-r", repo)


@pytest.mark.parametrize("value", ["nan", "1e400", "-1e300"])
def test_an_import_with_a_time_no_file_system_holds_is_refused(value, cli, repo_dir, tmp_path):
    """tarfile reads a PAX `mtime=nan` as it is, and could not write it again."""
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    info = tarfile.TarInfo("./f")
    info.size, info.pax_headers = 1, {"mtime": value}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(root)
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "bad.tar").write_bytes(buf.getvalue())
    result = cli("import", str(tmp_path / "bad.tar"), "--volume", "bad", "-r", str(repo_dir))
    assert result.code == 16, result.stderr
    assert "tar member './f' has mtime " in one_line_error(result.stderr)
    assert not list(repo_dir.glob("snapshots/*/*"))


def _catalogue(repo: Path, snapshot: str) -> tuple[Path, Path]:
    volume, stamp = snapshot.split("@")
    folder = repo / "snapshots" / volume
    return folder / f"{stamp}.catalog.zst", folder / f"{stamp}.json"


def rewrite_catalogue(repo: Path, snapshot: str, change) -> None:
    """Give an archive-layout snapshot a catalogue whose lines `change(line dict)` altered,
    and a manifest whose digests match it: only the values are wrong, as a writer of the
    repository could make them."""
    blob, manifest_file = _catalogue(repo, snapshot)
    lines = zstandard.ZstdDecompressor().stream_reader(blob.read_bytes()).read().splitlines()
    plain = b""
    for line in lines:
        entry = json.loads(line)
        change(entry)
        plain += json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(plain)
    blob.write_bytes(stored)
    manifest = json.loads(manifest_file.read_text())
    manifest["catalog"].update(bytes=len(plain), sha256=hashlib.sha256(stored).hexdigest(),
                               plain_sha256=hashlib.sha256(plain).hexdigest())
    manifest_file.write_text(json.dumps(manifest))


@pytest.fixture
def two_snapshots(cli, repo_dir, make_volume, mountpoint):
    """An archive-layout repository with two snapshots of a small volume."""
    volume = make_volume("vals").name
    Path(mountpoint(volume), "file").write_bytes(b"data\n")
    first = backup(cli, volume, str(repo_dir))
    return first, backup(cli, volume, str(repo_dir))


def _set(key, value):
    def change(entry: dict) -> None:
        if entry["path"] == "file":
            entry[key] = value
    return change


@pytest.mark.parametrize("key, value", [
    ("mode", 70000), ("sha256", "zz" * 32), ("uid", 1 << 64), ("gid", -1),
    ("mtime", float("nan")), ("mtime", 1e300), ("mtime", float("inf")), ("path", "\ud800")],
    ids=["mode-70000", "sha256-not-hex", "uid-2^64", "gid-negative", "mtime-nan",
         "mtime-1e300", "mtime-inf", "path-lone-surrogate"])
def test_a_catalogue_value_no_writer_makes_is_damage(key, value, two_snapshots, cli, repo_dir):
    first, second = two_snapshots
    rewrite_catalogue(repo_dir, second, _set(key, value))
    for args in (["ls", second, "-l"], ["ls", second, "--json"], ["diff", first, second],
                 ["diff", second, first, "--json"]):
        result = cli(*args, "-r", str(repo_dir))
        assert result.code == 6, (args, result.stderr)
        assert f"catalogue line has an invalid {key}" in one_line_error(result.stderr)


@pytest.mark.parametrize("layout", ["chunked"])
@pytest.mark.parametrize("counts", [{"chunks": 10**12}, {"chunks": 10**12, "bytes": 10**13}],
                         ids=["chunks-only", "chunks-and-bytes"])
def test_a_catalogue_of_a_trillion_pieces_is_refused_with_memory_flat(
        layout, counts, cli, repo_dir, make_volume, mountpoint):
    make_layout(str(repo_dir), layout)
    volume = make_volume("tera").name
    Path(mountpoint(volume), "file").write_bytes(b"data\n")
    snapshot = backup(cli, volume, str(repo_dir))
    stamp = snapshot.split("@")[1]
    manifest_file = repo_dir / "snapshots" / volume / f"{stamp}.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["catalog"].update(counts)
    manifest_file.write_text(json.dumps(manifest))
    for args in (["ls", snapshot], ["verify", snapshot]):
        code, stderr, peak = run_measured([*args, "-r", str(repo_dir)])
        line = one_line_error(stderr)
        if "bytes" in counts:   # as a manifest may say: the list is read and does not match
            assert code == 6 and "catalogue list" in line and "holds 1 chunks" in line, line
        else:                   # more pieces than bytes: no writer makes that manifest
            assert code == 5 and "invalid catalog field" in line, line
        assert peak < MEMORY_BOUND_MIB, (args, peak)


def test_a_manifest_level_no_zstd_has_is_refused_by_copy(two_snapshots, cli, repo_dir,
                                                          tmp_path):
    first, _ = two_snapshots
    manifest_file = _catalogue(repo_dir, first)[1]
    manifest = json.loads(manifest_file.read_text())
    manifest["level"] = 99
    manifest_file.write_text(json.dumps(manifest))
    target = tmp_path / "chunked-target"
    target.mkdir()
    make_layout(str(target), "chunked")
    result = cli("copy", first, "-r", str(repo_dir), "--to", str(target))
    assert result.code == 5, result.stderr
    assert "invalid level" in one_line_error(result.stderr)
    assert not list(target.glob("snapshots/*/*"))


# -- 3. a catalogue that expands to a gigabyte


MEMORY_BOUND_MIB = 300      # a generous bound: these commands run in about 60 MiB
BOMB_BYTES = 1 << 30

_MEASURE = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.PIPE, text=True); "
            "sys.stderr.write(r.stderr); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run_measured(args: list[str]) -> tuple[int, str, float]:
    """(exit code, stderr, peak RSS in MiB) of `volbackup ARGS`, measured by a parent of
    its own (this process's children are others' too)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "volbackup",
                           *args], capture_output=True, text=True, timeout=600)
    code, rss = proc.stdout.split()
    return int(code), proc.stderr, int(rss) / 1024


def write_bomb(path: Path, size: int = BOMB_BYTES) -> None:
    """`size` zero bytes as one zstd frame, compressed as they are made (a few hundred KB)."""
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(
            f, size=size) as out:
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(zeros)


@pytest.fixture
def bombed(two_snapshots, repo_dir):
    """The newer snapshot's `.catalog.zst` replaced by a bomb (its manifest untouched)."""
    _, snapshot = two_snapshots
    blob = _catalogue(repo_dir, snapshot)[0]
    write_bomb(blob)
    assert blob.stat().st_size < 1 << 20
    return snapshot


@pytest.mark.parametrize("command", [["ls", "{s}"], ["ls", "{s}", "-l"], ["dump", "{s}", "/file"],
                                     ["verify", "{s}"], ["diff", "{s}", "{s}"],
                                     ["restore", "{s}", "--include", "/file", "--as", "{v}"]],
                         ids=lambda c: "-".join(x for x in c if "{" not in x))
def test_a_catalogue_bomb_is_damage_and_memory_stays_flat(command, bombed, repo_dir, names,
                                                           client):
    target = names("never")
    args = [part.format(s=bombed, v=target) for part in command]
    code, stderr, peak = run_measured([*args, "-r", str(repo_dir)])
    assert code == 6, stderr
    line = one_line_error(stderr)
    assert "catalogue" in line and ("longer than the manifest" in line
                                    or "does not match" in line), line
    assert peak < MEMORY_BOUND_MIB, peak
    assert not any(v.name == target for v in client.volumes.list(filters={"name": target}))


def test_a_catalogue_bomb_with_its_manifest_forged_too(bombed, repo_dir):
    """A writer of a plain repository can make the manifest say a terabyte: the catalogue is
    then read a piece at a time, and its first line of over 1 MiB ends it."""
    manifest_file = _catalogue(repo_dir, bombed)[1]
    manifest = json.loads(manifest_file.read_text())
    manifest["catalog"]["bytes"] = 1 << 40
    manifest_file.write_text(json.dumps(manifest))
    code, stderr, peak = run_measured(["ls", bombed, "-r", str(repo_dir)])
    assert code == 6 and "catalogue has a line of over" in one_line_error(stderr), stderr
    assert peak < MEMORY_BOUND_MIB, peak

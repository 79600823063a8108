"""Progress on a terminal (bytes, rate, and a percentage and ETA where the total is known);
nothing extra when stderr is not one (cron), and nothing with -q/--quiet."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from tests.integration.helpers import fill

# tqdm with a total: "  0%|          | 0.00/8.00M [00:00<?, ?B/s]"; without: "0.00B [00:00, ?B/s]"
WITH_TOTAL = re.compile(rb"\d+%\|.*\| *[\d.]+[KMG]?/[\d.]+[KMG]? \[[\d:]+<[\d:?]+, ")
RATE = re.compile(rb"B/s\]")


def on_terminal(*args: str) -> tuple[int, bytes, bytes]:
    """Run the CLI with stderr on a pty (stdout a pipe): (exit code, stdout, what the terminal
    showed)."""
    primary, secondary = pty.openpty()
    # A fresh pty is 0x0 and tqdm draws nothing at width 0; a real terminal has a size.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.run([sys.executable, "-m", "volbackup", *args], stdout=subprocess.PIPE,
                              stderr=secondary, timeout=300)
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO once the terminal's other side is closed
                break
            if not data:
                break
            shown += data
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    return proc.returncode, proc.stdout, shown


@pytest.fixture
def snapshot(make_volume, mountpoint, repo_dir, cli):
    """A volume of 8 MiB and one snapshot of it: (volume name, snapshot id)."""
    volume = make_volume("progress")
    fill(mountpoint(volume.name), {"data.bin": os.urandom(8 << 20)})
    made = cli("backup", volume.name, "-r", str(repo_dir), "--json")
    assert made.code == 0, made.stderr
    return volume.name, json.loads(made.stdout)["volumes"][0]["snapshot"]


def test_backup_shows_bytes_and_rate_only_on_a_terminal(snapshot, repo_dir, cli):
    volume, _ = snapshot
    code, _, shown = on_terminal("backup", volume, "-r", str(repo_dir))
    assert code == 0
    assert volume.encode() in shown and RATE.search(shown), shown[-300:]
    quiet = cli("backup", volume, "-r", str(repo_dir))
    assert quiet.code == 0 and quiet.stderr == ""


def test_restore_verify_export_import_show_a_total_and_eta(snapshot, repo_dir, names, cli,
                                                          tmp_path):
    volume, snap = snapshot
    exported = tmp_path / "out.tar.zst"
    runs = {
        "verify": ("verify", snap, "-r", str(repo_dir)),
        "restore": ("restore", snap, "--as", names("restored"), "-r", str(repo_dir)),
        "export": ("export", snap, "-o", str(exported), "-r", str(repo_dir)),
    }
    for what, args in runs.items():
        code, _, shown = on_terminal(*args)
        assert code == 0, (what, shown[-500:])
        assert WITH_TOTAL.search(shown) and b"8.00M" in shown, (what, shown[-500:])
    # import reads a stream of unknown size: bytes and rate, no percentage
    code, _, shown = on_terminal("import", str(exported), "--volume", names("imported"),
                                 "-r", str(repo_dir))
    assert code == 0 and RATE.search(shown) and not WITH_TOTAL.search(shown), shown[-500:]


def test_not_a_terminal_means_no_progress(snapshot, repo_dir, names, cli, tmp_path):
    _, snap = snapshot
    for args in (("verify", snap), ("restore", snap, "--as", names("quiet")),
                 ("export", snap, "-o", str(tmp_path / "x.tar.zst")),
                 ("prune", "--keep-last", "1", "-q")):  # -q: also no "1 kept" line
        result = cli(*args, "-r", str(repo_dir))
        assert result.code == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_the_terminal(snapshot, repo_dir, where):
    volume, snap = snapshot
    for args in (("backup", volume), ("verify", snap)):
        full = (("-q", *args) if where == "before" else (*args, "--quiet")) + ("-r", str(repo_dir))
        code, stdout, shown = on_terminal(*full)
        assert code == 0 and shown == b"", shown[-300:]
        assert stdout  # the result still prints


@pytest.mark.parametrize("layout", ["archive", "chunked", "packed"])
def test_prune_shows_the_bytes_it_removes(make_volume, mountpoint, repo_dir, cli, layout):
    if layout != "archive":
        assert cli("init", "-r", str(repo_dir), "--layout", layout).code == 0
    volume = make_volume("prune")
    for _ in range(2):  # two different contents: the first snapshot's chunks become garbage
        fill(mountpoint(volume.name), {"data.bin": os.urandom(4 << 20)})
        assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    code, stdout, shown = on_terminal("prune", "-r", str(repo_dir), "--keep-last", "1",
                                      "--leftover-age", "0")
    assert code == 0, shown[-500:]
    label = {"archive": b"removing snapshots", "chunked": b"removing chunks",
             "packed": b"removing packs"}[layout]
    assert label in shown and WITH_TOTAL.search(shown), shown[-500:]
    assert b"removed" in stdout

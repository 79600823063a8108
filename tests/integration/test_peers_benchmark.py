"""benchmarks/peers.py runs volbackup, restic and borg end to end at toy size and cleans up.

No speed is asserted. What holds on any machine: every restore equals the volume byte for
byte, an unchanged re-backup stores next to nothing, a change stores something, and nothing
the run made is left. A peer that is not installed is skipped here, saying so (CI installs
restic; borg builds from source, so it is measured where someone installed it by hand).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "peers.py"
VOLBACKUP_ROWS = ("volbackup-archive", "volbackup-chunked", "volbackup-encrypted",
                  "volbackup-packed", "volbackup-packed-encrypted")
PEER_ROWS = {"restic": ("restic",), "borg": ("borg-none", "borg-encrypted")}
FIGURES = ("first_seconds", "first_cpu_seconds", "first_rss_mib", "repo_bytes", "objects",
           "unchanged_seconds", "unchanged_new_bytes", "unchanged_new_pct", "changed_new_bytes",
           "changed_new_pct", "restore_seconds", "restore_cpu_seconds", "restore_rss_mib",
           "restore_identical")


@pytest.fixture(scope="module")
def quick_run(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def check_rows(result: dict, names: tuple[str, ...], deduplicates: bool = True) -> None:
    for name in names:
        row = result["contenders"][name]
        m = row["median"]
        assert set(FIGURES) <= set(m), name
        assert len(row["runs"]) == 1
        assert m["restore_identical"] is True, (name, row["runs"][0]["restore"]["differing"])
        # the volume's files, every one of them restored
        restore = row["runs"][0]["restore"]
        assert restore["files"] == restore["expected_files"] > result["volume"]["files"] // 2
        assert m["repo_bytes"] > 0 and m["objects"] > 0, name
        assert m["first_seconds"] > 0 and m["first_cpu_seconds"] > 0 and m["first_rss_mib"] > 0
        if deduplicates:
            assert m["unchanged_new_pct"] < 3, (name, m["unchanged_new_bytes"])
        assert m["changed_new_bytes"] > 0, name
        assert m["objects_after_change"] > m["objects"], name


def test_volbackup_rows(quick_run):
    result, stdout = quick_run
    check_rows(result, VOLBACKUP_ROWS[:1], deduplicates=False)
    check_rows(result, VOLBACKUP_ROWS[1:])
    assert result["volume"]["mib"] == 16 and result["change"]["changed_pct"] > 1
    # the archive layout stores the whole volume again each time; the chunked ones the change
    archive, *deduplicating = (result["contenders"][n]["median"] for n in VOLBACKUP_ROWS)
    assert archive["unchanged_new_pct"] > 90 and archive["changed_new_pct"] > 90
    assert all(row["changed_new_pct"] < 70 for row in deduplicating)
    for name in VOLBACKUP_ROWS:
        assert name in stdout
        run = result["contenders"][name]["runs"][0]
        assert {run[step]["via"] for step in ("first", "unchanged", "changed", "restore")} == {"direct"}
    assert result["volbackup_version"].startswith("volbackup")


@pytest.mark.parametrize("peer", sorted(PEER_ROWS))
def test_peer_rows(quick_run, peer):
    result, stdout = quick_run
    found = result["peers"][peer]
    if not found["present"]:
        assert not set(PEER_ROWS[peer]) & set(result["contenders"])
        assert "skipped (absent): " in stdout and peer in stdout.splitlines()[-1]
        pytest.skip(f"{peer} absent ({found['reason']}): its rows were not measured")
    assert found["version"].startswith(peer)
    assert found["version"] in stdout
    check_rows(result, PEER_ROWS[peer])
    assert set(result["against_peers"]) == set(VOLBACKUP_ROWS)


def test_nothing_left(quick_run, client):
    prefix = quick_run[0]["prefix"]
    assert prefix.startswith("vbbench-")
    assert not [v.name for v in client.volumes.list() if v.name.startswith(prefix)]
    assert not list(Path("/var/tmp").glob(f"{prefix}*"))


@pytest.mark.parametrize("args, said", [
    (["--restic", "/nonexistent/restic"], "--restic: /nonexistent/restic is not executable"),
    (["--only", "volbackup-chunked,kopia"], "--only: unknown kopia"),
    (["--runs", "0"], "--runs and --size must be >= 1"),
])
def test_bad_options_refused(args, said):
    """Refused with argparse's exit code 2 and a message naming the option, before any volume."""
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert "vbbench-" not in done.stderr   # no run started

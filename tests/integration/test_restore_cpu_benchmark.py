"""benchmarks/restore_cpu.py runs end to end at toy size and cleans up.

No CPU figure is asserted beyond being measured: what holds on any machine is that every
stage of every layout ran (the packed ones' blob stage too), the whole restore went the
direct way, and nothing the run made is left (volumes, its work directory, the extract
directory it was given a parent for).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "restore_cpu.py"
LAYOUTS = ("archive", "packed", "packed-encrypted")
FIGURES = ("own_user", "own_sys", "tar_user", "tar_sys", "own", "tar", "wall")


@pytest.fixture(scope="module")
def quick_run(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("restore-cpu") / "restore_cpu.json"
    into = tmp_path_factory.mktemp("extract-into")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--layouts", ",".join(LAYOUTS),
                           "--extract-into", str(into), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout, into


def test_every_stage_of_every_layout_is_measured(quick_run):
    result, stdout, _ = quick_run
    assert result["volume"]["mib"] == 16 and set(result["layouts"]) == set(LAYOUTS)
    for layout in LAYOUTS:
        row = result["layouts"][layout]
        (run,) = row["runs"]
        stages = ("checked", "piped", "extract") if layout == "archive" else \
            ("blobs", "checked", "piped", "extract")
        assert [s for s in ("blobs", "checked", "piped", "extract") if s in run] == list(stages)
        for stage in stages:
            assert set(FIGURES) <= set(run[stage]), (layout, stage)
            assert run[stage]["own"] > 0, (layout, stage)
        assert run["extract"]["tar"] > 0    # GNU tar ran, as a child
        assert run["checked"]["tar"] == 0   # nothing but this process
        assert run["bytes"] > 16 << 20
        assert run["restore"]["via"] == "direct" and run["restore"]["cpu_seconds"] > 0
        assert f"{layout:18}restore" in stdout


def test_nothing_left(quick_run, client):
    result, _, into = quick_run
    prefix = result["prefix"]
    assert prefix.startswith("vbbench-")
    assert not [v.name for v in client.volumes.list() if v.name.startswith(prefix)]
    assert not list(Path("/var/tmp").glob(f"{prefix}*"))
    assert not list(into.iterdir())


@pytest.mark.parametrize("args, said", [
    (["--layouts", "packed,zip"], "--layouts: unknown zip"),
    (["--runs", "0"], "--runs and --size must be >= 1"),
    (["--extract-into", "/nonexistent/dir"], "--extract-into: /nonexistent/dir is not a directory"),
])
def test_bad_options_refused(args, said):
    """Refused with argparse's exit code 2 and a message naming the option, before any volume."""
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert "vbbench-" not in done.stderr

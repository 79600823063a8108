"""Memory stays flat whatever the volume size: checked with the benchmark script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "memory.py"


@pytest.mark.parametrize("layout", ["archive", "chunked"])
def test_peak_rss_does_not_grow_with_the_volume(client, layout):
    out = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "64,512", "--layout", layout,
                          "--json"],
                         capture_output=True, text=True, check=True, timeout=900)
    small, large = json.loads(out.stdout)
    # A copy of the data in memory would add 448 MiB; streaming adds next to nothing.
    assert large["backup_rss_mib"] < small["backup_rss_mib"] + 48, (small, large)
    assert large["restore_rss_mib"] < small["restore_rss_mib"] + 48, (small, large)

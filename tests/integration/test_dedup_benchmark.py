"""benchmarks/dedup.py runs every section end to end at toy sizes and cleans up.

No speed is asserted. What dedup stores is not a timing: an unchanged volume and an
identical copy must store next to nothing, whatever the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "dedup.py"


def test_quick_run_reports_every_section(client, tmp_path):
    out = tmp_path / "dedup.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for title in ("SPEED", "DEDUP", "CHUNK SIZE", "DAILY", "PEAK RSS", "PRUNE"):
        assert title in done.stdout, title

    speed = result["speed"]
    for key in ("archive_first", "chunked_first", "chunked_second", "archive_restore",
                "chunked_restore"):
        assert speed[key]["median_seconds"] > 0 and speed[key]["peak_rss_mib"] > 0, key
    assert speed["chunked_first"]["median_new_bytes"] > 0
    assert speed["ratios"]["second_new_pct"] < 1
    rows = result["dedup"]["rows"]
    assert rows["identical_copy"]["new_pct"] < 1
    assert rows["two_hosts_at_once"]["new_pct"] < 1
    assert rows["changed"]["new_bytes"] > 0
    assert set(result["sizes"]["by_size"]) == {"512K", "1M", "2M", "4M"}
    assert all(r["objects"] > 0 for r in result["sizes"]["by_size"].values())
    assert len(result["daily"]["rows"]) == 3 and result["daily"]["repo_vs_full"] > 1
    assert [r["mib"] for r in result["rss"]] == [16, 32]
    prune = result["prune"]
    assert prune["stored"] == 500 and prune["referenced"] == 250 and prune["removed"] == 250

    prefix = result["prefix"]
    assert not [v.name for v in client.volumes.list() if v.name.startswith(prefix)]
    assert not list(Path("/var/tmp").glob(f"{prefix}*"))

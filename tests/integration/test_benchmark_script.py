"""benchmarks/run.py runs end to end on a tiny volume and reports every contender.

No speed is asserted: the benchmark reports numbers, it does not judge them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "run.py"
CONTENDERS = {"backup:volbackup", "backup:recipe", "backup:limit",
              "restore:volbackup", "restore:limit"}


def test_quick_run_reports_every_contender(client, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())

    assert set(result["contenders"]) == CONTENDERS
    for key, c in result["contenders"].items():
        assert c["median_mib_s"] > 0 and c["min_mib_s"] > 0 and c["max_mib_s"] > 0, key
        assert len([r for r in c["runs"] if not r["warmup"]]) == 1, key
        assert all(r["seconds"] > 0 for r in c["runs"]), key
        assert c["label"] in done.stdout, key
    for key in ("backup:volbackup", "restore:volbackup"):
        assert result["contenders"][key]["peak_rss_mib"] > 0, key
    for key in ("backup:volbackup", "backup:recipe", "backup:limit"):
        assert result["contenders"][key]["archive_mib"] > 0, key
    assert all(v > 0 for v in result["ratios"].values()), result["ratios"]
    assert result["volume"]["mib"] == 64 and result["volume"]["small_files"] > 100
    double = result["double"]
    assert double["volume"]["mib"] == 128
    for op in ("backup", "restore"):
        assert double[op]["peak_rss_mib"] > 0 and double[op]["mib_s"] > 0, op

    # everything the run made is gone
    prefix = result["prefix"]
    assert not [v.name for v in client.volumes.list() if v.name.startswith(prefix)]
    assert not [c.name for c in client.containers.list(all=True) if c.name.startswith(prefix)]

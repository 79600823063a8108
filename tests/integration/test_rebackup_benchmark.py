"""benchmarks/rebackup.py runs end to end on a small volume and cleans up.

No time is measured. What an unchanged re-backup adds is bytes, not a timing: a tree
snapshot (packed repository) adds its manifest alone, whatever the number of files, while
the chunked layout stores its chunk list and catalogue again.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "rebackup.py"


def test_an_unchanged_re_backup_adds_the_manifest_alone_to_a_packed_repository(client, tmp_path):
    out, prefix = tmp_path / "rebackup.json", f"vbtest-rebackup-{secrets.token_hex(3)}-"
    done = subprocess.run([sys.executable, str(SCRIPT), "--files", "1500", "--only",
                           "volbackup-chunked,volbackup-packed", "--prefix", prefix,
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["volume"]["files"] == 1500 and result["volume"]["directories"] == 2
    chunked, packed = (result["contenders"][n] for n in ("volbackup-chunked", "volbackup-packed"))
    assert packed["first_bytes"] > 0 and chunked["first_bytes"] > 0
    # the manifest, one object under snapshots/; nothing in packs/ or index/
    assert packed["unchanged_new_files"] == 1 and set(packed["unchanged_growth"]) == {"snapshots"}
    assert 0 < packed["unchanged_new_bytes"] < 4096
    # the chunked layout stores its two lists again: a few bytes a file
    assert chunked["unchanged_new_files"] == 3 and chunked["unchanged_new_bytes"] > 1500
    assert "volbackup-packed" in done.stdout

    assert not [v.name for v in client.volumes.list() if v.name.startswith(prefix)]
    assert not list(Path("/var/tmp").glob(f"{prefix}*"))

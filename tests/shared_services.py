"""Servers that the workers of a parallel run (pytest-xdist) share: started once, by the first
worker that needs one, and stopped by the controller when every worker has ended.

The controller makes a directory for the run and hands its path to the workers in
$VOLBACKUP_TEST_SHARED_DIR (tests/conftest.py). A worker that needs a server takes a lock in
that directory, reads where the server is from `NAME.json`, or starts it and writes that
record, which also says how to stop it. Outside a parallel run there is no such directory and
each test process starts its own, as before.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

SHARED_DIR_ENV = "VOLBACKUP_TEST_SHARED_DIR"


def shared_dir() -> str | None:
    return os.environ.get(SHARED_DIR_ENV)


def shared_service(name: str, start: Callable[[], dict]) -> dict:
    """The record of the run's server `name`, starting it with `start()` if no worker has.
    `start` returns what the workers need (JSON) and how to stop it: "rgw_dir" (a
    tests/ceph_rgw.sh directory), or "pid" (and "dir", removed after it)."""
    directory = Path(shared_dir())
    with open(directory / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = directory / f"{name}.json"
        if record.exists():
            return json.loads(record.read_text())
        started = start()
        record.write_text(json.dumps(started))
        return started


def stop_shared_services(directory: str) -> None:
    """The controller, once every worker has ended: stop every server a worker started."""
    for record in sorted(Path(directory).glob("*.json")):
        started = json.loads(record.read_text())
        if started.get("rgw_dir"):
            from tests.rgw_s3 import SCRIPT

            subprocess.run(["bash", str(SCRIPT), "stop", started["rgw_dir"]], timeout=120,
                           check=False)
        if started.get("pid"):   # a server a worker started (Azurite): by its pid, then its dir
            _stop_pid(int(started["pid"]))
            if started.get("dir"):
                shutil.rmtree(started["dir"], ignore_errors=True)


def _stop_pid(pid: int) -> None:
    """SIGTERM, then SIGKILL after 20 s, the server process `pid` (a worker started it)."""
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

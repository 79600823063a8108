"""Shared fixtures. Integration fixtures talk to a real Docker engine.

Without an engine the integration tests are skipped, unless VOLBACKUP_REQUIRE_ENGINE=1
(set by .ci/run), which turns a missing engine into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

REQUIRE_ENGINE = os.environ.get("VOLBACKUP_REQUIRE_ENGINE") == "1"


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> CliRun:
    """Run `python -m volbackup ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "volbackup", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


@contextmanager
def umask(mask: int):
    """Run the block under another umask (what volbackup creates must not depend on it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expire(signum, frame):
        raise AssertionError(f"still blocked after {seconds}s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def repo_dir(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    return path

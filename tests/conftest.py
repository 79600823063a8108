"""Shared fixtures. Integration fixtures talk to a real Docker engine.

Without an engine the integration tests are skipped, unless VOLBACKUP_REQUIRE_ENGINE=1
(set by .ci/run), which turns a missing engine into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def repo_dir(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    return path

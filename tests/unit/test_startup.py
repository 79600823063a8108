"""What a run pays before it reads a byte: docker-py's ssh support is loaded only for
ssh:// engines (70 ms and 19 MiB, about a fifth of a backup's start-up time and peak memory)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import volbackup.cli
assert "paramiko" not in sys.modules, "paramiko was imported at start-up"
from volbackup.docker import client
client.enable_ssh()
assert "paramiko" in sys.modules
import docker.api.client
assert docker.api.client.SSHHTTPAdapter.__name__ == "SSHHTTPAdapter"
"""


def test_ssh_support_is_loaded_only_when_asked_for():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_ssh_engine_url_loads_ssh_support():
    """Engine.connect to ssh:// gets past docker-py's 'Install paramiko' check (it fails
    later, reaching no such host, with our one-line error)."""
    script = ("from volbackup.docker.engine import Engine\n"
              "from volbackup.errors import EngineError\n"
              "try:\n"
              "    Engine.connect('ssh://nobody@127.0.0.1:1')\n"
              "except EngineError as e:\n"
              "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # Scheme and host only: a URL's user info is never shown (volbackup.urls).
    assert "cannot reach the Docker engine at ssh://127.0.0.1:1 " in done.stdout
    assert "nobody" not in done.stdout
    assert "paramiko" not in done.stdout

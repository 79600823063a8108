"""What a run pays before it reads a byte: docker-py's ssh support is loaded only for
ssh:// engines (70 ms and 19 MiB, about a fifth of a backup's start-up time and peak memory),
and a command's modules only when that command runs (`--version` took 0.43 s, `list` 0.40 s
when every command was imported at start; 0.08 s and 0.21 s since)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import volbackup.cli
volbackup.cli.all_commands()
assert "docker" in sys.modules, "no command module was imported"
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


IMPORTED_BY = """
import sys
from volbackup.cli import main
code = main(sys.argv[1:])
print("modules:", " ".join(sorted(sys.modules)))
sys.exit(code)
"""


def imported_by(*args: str) -> set[str]:
    """The modules loaded by the time `volbackup ARGS` ends (in a fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", IMPORTED_BY, *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.rsplit("modules: ", 1)[1].split())


def test_version_imports_no_command():
    loaded = {m for m in imported_by("--version")
              if m.startswith(("volbackup.cli.", "volbackup.ops", "volbackup.repo", "docker",
                               "tqdm"))}
    # what the group itself needs: rendering, and -q's flag
    assert loaded == {"volbackup.cli.render", "volbackup.cli.progress", "volbackup.ops",
                      "volbackup.ops.outcome"}


def test_a_repository_command_does_not_load_the_engine_client(tmp_path):
    modules = imported_by("list", "-r", str(tmp_path))
    assert "volbackup.cli.snapshots" in modules and "volbackup.repo.repository" in modules
    assert "docker" not in modules and "volbackup.cli.backup" not in modules


def test_an_engine_command_loads_its_module_only():
    modules = imported_by("backup", "--help")
    assert "volbackup.cli.backup" in modules and "docker" in modules
    assert "volbackup.cli.migrate" not in modules and "volbackup.cli.browse" not in modules


def test_an_unknown_command_is_a_usage_error(capsys):
    from volbackup.cli import main

    assert main(["backpu"]) == 2
    assert "No such command 'backpu'" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    from volbackup.cli import COMMAND_MODULES, main

    assert main(["--help"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.split("Commands:")[1]
              .splitlines() if line.strip()}
    assert listed == set(COMMAND_MODULES)


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

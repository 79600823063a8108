"""A real OpenSSH sshd for the SFTP backend: one per test session (per xdist worker), on its
own port on 127.0.0.1, with its own host key, client key, known_hosts and ssh_config in a
temporary directory, logging in as the user running the tests; stopped at the end.

Tests reach it as `sftp://vbtest-sftp/<dir>` with VOLBACKUP_SSH_CONFIG pointing at that
ssh_config (HostName, Port, User, IdentityFile, UserKnownHostsFile: the lookups a user's
~/.ssh/config gets), never touching ~/.ssh. Without sshd the tests are skipped, unless
VOLBACKUP_REQUIRE_ENGINE=1 or CI is set: there a missing sshd fails them.

`SshServer.stop()` and `start()` kill the server (the listener and every session process
it forked, by pid) and bring it back on the same port, for tests of a server that goes
away in the middle of a backup.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVERS, free_port

SSHD = "/usr/sbin/sshd"
ALIAS = "vbtest-sftp"


class SshServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.process: subprocess.Popen | None = None
        for key in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vbtest-{key}",
                            "-f", str(root / key)], check=True)
        (root / "authorized_keys").write_text((root / "user.pub").read_text())
        host_pub = (root / "host.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root}/host\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
            f"UsePAM no\nPidFile {root}/pid\nSubsystem sftp internal-sftp\n")
        self.config = root / "ssh_config"
        self.config.write_text(
            f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {root}/user\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {root}/known_hosts\n")
        self.data = root / "data"  # repositories live below it
        self.data.mkdir()
        self.env = {"VOLBACKUP_SSH_CONFIG": str(self.config)}

    def url(self, path: str) -> str:
        """The URL of `path` below the data directory."""
        return f"sftp://{ALIAS}{self.data}/{path}"

    def start(self) -> None:
        with suppress(OSError):  # sshd's privilege separation directory (root only)
            os.makedirs("/run/sshd", exist_ok=True)
        self.process = subprocess.Popen([SSHD, "-D", "-f", str(self.root / "sshd_config"),
                                         "-E", str(self.root / "log")])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"sshd did not start (log: {self.root / 'log'})")

    def stop(self) -> None:
        """Kill the listener and the session processes it forked (by pid: they are its
        descendants), so that every open connection drops as if the server went away."""
        if self.process is None:
            return
        pids = _descendants(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found




@pytest.fixture(scope="session")
def sftp_server():
    if not (os.path.exists(SSHD) and shutil.which("ssh-keygen")):
        if REQUIRE_SERVERS:
            pytest.fail("sshd and ssh-keygen are needed for the SFTP tests "
                        "(apt-get install openssh-server; .ci/run installs it)")
        pytest.skip("the SFTP tests need OpenSSH's sshd (apt-get install openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="vbtest-sftp-", dir="/tmp"))
    server = SshServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sftp_env(sftp_server, monkeypatch):
    """This process's VOLBACKUP_SSH_CONFIG points at the test server's ssh_config."""
    for name, value in sftp_server.env.items():
        monkeypatch.setenv(name, value)
    return sftp_server.env


@pytest.fixture
def sftp_repo(sftp_server, sftp_env):
    """The URL of a fresh, empty directory on the test server (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="repo-", dir=sftp_server.data))
    try:
        yield sftp_server.url(path.name)
    finally:
        shutil.rmtree(path, ignore_errors=True)

"""An engine reached over SSH: a throwaway sshd on 127.0.0.1 whose only command for our
key is `docker system dial-stdio` against the second engine (what `ssh://` URLs use)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests.conftest import REQUIRE_ENGINE

SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def ssh_engine(second_engine):
    if not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("docker")):
        if REQUIRE_ENGINE:
            pytest.fail("sshd, ssh and the docker CLI are needed (apt-get install openssh-server)")
        pytest.skip("migrate over ssh:// needs sshd, ssh and the docker CLI here "
                    "(apt-get install openssh-server docker.io; .ci/run installs them)")
    root = tempfile.mkdtemp(prefix="vbssh-", dir="/tmp")
    port = _free_port()
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{root}/{key}"],
                       check=True)
    dial = f"DOCKER_HOST={second_engine['url']} docker system dial-stdio"
    with open(f"{root}/authorized_keys", "w") as f:
        f.write(f'command="{dial}" ' + open(f"{root}/user.pub").read())
    with open(f"{root}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host\n"
                f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
                f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {root}/pid\n")
    with open(f"{root}/ssh_config", "w") as f:
        f.write(f"Host 127.0.0.1\n  IdentityFile {root}/user\n  StrictHostKeyChecking no\n"
                f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    os.makedirs(f"{root}/bin")
    with open(f"{root}/bin/ssh", "w") as f:  # our config, without touching ~/.ssh
        f.write(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {root}/ssh_config "$@"\n')
    os.chmod(f"{root}/bin/ssh", 0o755)
    os.makedirs("/run/sshd", exist_ok=True)
    daemon = subprocess.Popen([SSHD, "-D", "-f", f"{root}/sshd_config", "-E", f"{root}/log"])
    try:
        _wait_for_port(port, daemon)
        yield {"url": f"ssh://root@127.0.0.1:{port}", "client": second_engine["client"],
               "env": {"PATH": f"{root}/bin:{os.environ['PATH']}"}}
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, daemon: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("sshd did not start")

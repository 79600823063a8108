"""A rootful Podman service beside the Docker engine, for the tests that run against Podman.

`podman system service` serves the Docker Engine API on a socket of its own; it gets its
own --root, --runroot and --tmpdir under a temporary directory, so it shares nothing with
a Podman the machine may already have, and it is stopped and removed when the tests that
asked for it are done. A missing podman fails under VOLBACKUP_REQUIRE_ENGINE=1 (CI) and
skips elsewhere.

Podman asks the runtime for RLIMIT_NOFILE 1048576 by default, and lowers its own
RLIMIT_NPROC at start (to the kernel's pid_max here, 32768) but asks more for containers.
Where the service may not raise its limits (a sandbox, a CI container: no
CAP_SYS_RESOURCE), every `podman run` fails with "error setting rlimits for ready process:
error setting rlimit type 7 (or 6): operation not permitted". The service is given a
containers.conf whose default_ulimits are the limits it has itself, which it can always
grant: read from /proc/PID/limits of a first start, then started again with them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from tests.conftest import REQUIRE_ENGINE
from tests.integration.second_engine import stop_process, wait_for_engine


def podman_command(root: str) -> list[str]:
    """`podman` with this service's own storage and state (for `podman ...` in tests)."""
    return ["podman", "--root", f"{root}/root", "--runroot", f"{root}/run",
            "--tmpdir", f"{root}/tmp", "--cgroup-manager", "cgroupfs", "--events-backend",
            "file"]


_LIMITS = {"nofile": "Max open files", "nproc": "Max processes"}


def limits_conf(pid: int | None = None) -> str:
    """containers.conf text giving containers the nofile and nproc limits process `pid`
    has (this one, without a pid); see the top."""
    lines = open(f"/proc/{pid or 'self'}/limits").read().splitlines()
    limits = []
    for name, title in _LIMITS.items():
        soft, hard = next(line[len(title):].split()[:2] for line in lines
                          if line.startswith(title))
        if hard != "unlimited":
            limits.append(f'"{name}={hard if soft == "unlimited" else soft}:{hard}"')
    return f"[containers]\ndefault_ulimits = [{', '.join(limits)}]\n"


@pytest.fixture(scope="module")
def podman_engine():
    """{"url": unix socket URL, "client": a DockerClient of it, "root": its directory,
    "command": the `podman` command line of this service's storage}."""
    if not shutil.which("podman"):
        if REQUIRE_ENGINE:
            pytest.fail("podman is needed for the Podman tests (apt-get install podman)")
        pytest.skip("no podman to start a Podman service")
    root = tempfile.mkdtemp(prefix="vbpm-", dir="/tmp")  # short: socket paths are limited
    url = f"unix://{root}/podman.sock"
    conf = f"{root}/containers.conf"
    env = {**os.environ, "CONTAINERS_CONF": conf}
    env.pop("DOCKER_HOST", None)
    command = podman_command(root)
    log = open(f"{root}/podman.log", "wb")
    proc = None
    try:
        wanted = limits_conf()
        for _ in range(2):  # again if the service's own limits are not this process's
            with open(conf, "w") as f:
                f.write(wanted)
            proc = subprocess.Popen([*command, "system", "service", "--time=0", url],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            client = wait_for_engine(url, proc, f"{root}/podman.log", "the Podman service")
            wanted = limits_conf(proc.pid)
            if open(conf).read() == wanted:
                break
            client.close()
            stop_process(proc)
        yield {"url": url, "client": client, "root": root, "command": command}
        client.close()
    finally:
        if proc is not None:
            stop_process(proc)
        log.close()
        # Containers left by a failed test, the conmon of each exec session (hooks: it
        # lingers 300 s for its exit code), then the storage's own mounts.
        subprocess.run([*command, "rm", "-af"], capture_output=True, env=env, timeout=60)
        _stop_processes_of(root)
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: str) -> None:
    """Unmount what is mounted under `root`, deepest first (the overlay driver mounts its
    own directory over itself; `podman container cleanup` may have mounted it again)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p.startswith(f"{root}/")), key=len,
                        reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _stop_processes_of(root: str, patience: float = 15) -> None:
    """SIGTERM the processes this service started and left (their command lines name its
    own directory, which no other process's does), until none is left: a conmon ending
    runs `podman container cleanup`, which mounts the storage again."""
    mark = f"{root}/".encode()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if mark in f.read():
                        found = True
                        os.kill(int(entry), signal.SIGTERM)
            except (OSError, ProcessLookupError):
                pass
        if not found:
            return
        time.sleep(0.2)

"""run_is_over: a pid is judged only on the same host AND in the same pid namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from volbackup.processes import pid_namespace, run_is_over


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


HERE = socket.gethostname()


@pytest.mark.parametrize("host, namespace, pid, over", [
    (HERE, "ours", "dead", True),            # this host, this namespace, gone
    (HERE, "ours", "alive", False),
    (HERE, "other", "dead", False),          # a container with the host's name: not ours to judge
    (HERE, "", "dead", False),               # a lock written without a namespace: age only
    (HERE, None, "dead", True),              # a helper of an earlier version: host and pid, as before
    (HERE, None, "alive", False),
    ("elsewhere", "ours", "dead", False),
    (HERE, "ours", 0, False),
])
def test_only_a_pid_of_this_host_and_pid_namespace_is_judged(dead_pid, host, namespace, pid, over):
    namespace = {"ours": pid_namespace(), "other": "pid:[1]"}.get(namespace, namespace)
    pid = {"dead": dead_pid, "alive": os.getpid()}.get(pid, pid)
    assert run_is_over(host, namespace, pid) is over


def test_pid_namespace_is_the_kernels_name_for_it():
    assert pid_namespace() == os.readlink("/proc/self/ns/pid")

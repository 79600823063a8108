"""A second Docker engine beside the first, for migration tests.

It gets its own socket, data root, exec root and pid file, and is stopped and removed
when the tests that asked for it are done.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import docker
import pytest

from tests.conftest import REQUIRE_ENGINE


@pytest.fixture(scope="module")
def second_engine():
    if not shutil.which("dockerd"):
        if REQUIRE_ENGINE:
            pytest.fail("dockerd is needed to start a second engine")
        pytest.skip("no dockerd to start a second engine")
    root = tempfile.mkdtemp(prefix="vbd2-", dir="/tmp")  # short: socket paths are limited
    url = f"unix://{root}/docker.sock"
    log = open(f"{root}/dockerd.log", "wb")
    proc = subprocess.Popen(
        ["dockerd", "--host", url, "--data-root", f"{root}/data", "--exec-root", f"{root}/exec",
         "--pidfile", f"{root}/docker.pid", "--iptables=false", "--ip6tables=false",
         "--bridge=none"], stdout=log, stderr=subprocess.STDOUT)
    try:
        client = wait_for_engine(url, proc, f"{root}/dockerd.log", "the second dockerd")
        yield {"url": url, "client": client}
    finally:
        stop_process(proc)
        log.close()
        subprocess.run(["umount", "-R", f"{root}/data"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_engine(url: str, proc: subprocess.Popen, log_path: str,
                    what: str) -> docker.DockerClient:
    """A client of the engine `proc` serves at `url` once it answers (up to 60 s); the
    test fails with the tail of its log if it exits or does not answer."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            client = docker.DockerClient(base_url=url)
            client.ping()
            return client
        except docker.errors.DockerException:
            time.sleep(0.2)
    tail = open(log_path, errors="replace").read()[-2000:]
    pytest.fail(f"{what} did not come up:\n{tail}")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

"""Shared fixtures. Integration fixtures talk to a real Docker engine.

Without an engine the integration tests are skipped, unless VOLBACKUP_REQUIRE_ENGINE=1
(set by .ci/run), which turns a missing engine into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import pytest

REQUIRE_ENGINE = os.environ.get("VOLBACKUP_REQUIRE_ENGINE") == "1"
# A server a test needs (RGW, sshd, Apache, Azurite) that is missing fails the test here
# instead of skipping it.
REQUIRE_SERVERS = REQUIRE_ENGINE or bool(os.environ.get("CI"))
_SHARED_DIR = pytest.StashKey[str]()
_CACHE_DIR = pytest.StashKey[str]()
_CACHE_BEFORE = pytest.StashKey["str | None"]()
CACHE_ENV = "VOLBACKUP_CACHE_DIR"   # volbackup.repo.parentrecord.CACHE_ENV


def pytest_configure(config):
    """The controller of a parallel run (pytest-xdist) makes the workers' shared directory
    before it starts them; they inherit its path in the environment (tests/shared_services).
    The session's cache directory (the parent records backups into encrypted repositories
    keep) is made the same way: never the user's ~/.cache, removed at the end."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):    # a worker inherits the controller's
        cache = tempfile.mkdtemp(prefix="vbtest-cache-")
        config.stash[_CACHE_DIR] = cache
        config.stash[_CACHE_BEFORE] = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = cache   # never the user's own, even if they set one
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", 0):
        return
    from tests.shared_services import SHARED_DIR_ENV

    shared = tempfile.mkdtemp(prefix="vbtest-shared-")
    os.environ[SHARED_DIR_ENV] = shared
    config.stash[_SHARED_DIR] = shared


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """For pytest-xdist's `--dist loadgroup`: the integration tests of a module that use a
    module- or class-scoped fixture of ours (a volume filled once, a second engine) go to
    one worker, so that it is made once rather than once per worker; each parameter of such
    a fixture makes a group of its own. Every other test goes to whichever worker is free
    (the unit tests' shared fixtures cost too little to tie their tests to one worker)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if (info is None or item.get_closest_marker("xdist_group")
                or not item.nodeid.startswith("tests/integration/")):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        shared = [name for name in info.names_closure
                  if (defs := info.name2fixturedefs.get(name))
                  and defs[-1].scope in ("module", "class")]
        if shared:
            param_ids = sorted(f"{name}={params[name]!r}" for name in shared if name in params)
            item.add_marker(pytest.mark.xdist_group(
                ":".join([item.module.__name__, *param_ids])))


def pytest_unconfigure(config):
    """After every worker ended: stop what they started once for all, remove the directory."""
    cache = config.stash.get(_CACHE_DIR, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
        before = config.stash.get(_CACHE_BEFORE, None)
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before
    shared = config.stash.get(_SHARED_DIR, None)
    if shared is None:
        return
    from tests.shared_services import SHARED_DIR_ENV, stop_shared_services

    try:
        stop_shared_services(shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        os.environ.pop(SHARED_DIR_ENV, None)


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pump(source: socket.socket, sink: socket.socket,
         gate: Callable[[bytes], None] | None = None) -> None:
    """Copy what `source` sends to `sink` (each piece through `gate` first, which may hold
    it) until either side ends, then shut both down: one direction of a test's relay."""
    try:
        while data := source.recv(1 << 16):
            if gate is not None:
                gate(data)
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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

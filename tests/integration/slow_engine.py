"""A proxy in front of the engine's unix socket that holds back chosen requests.

Tests point volbackup at it (DOCKER_HOST) to catch a run at an exact moment: while the
engine has not answered a helper create, or the start of a stopped container. The
request waits in the proxy until the test releases it, so a signal sent meanwhile lands
while volbackup waits for that very answer.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

from tests.conftest import pump


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise RuntimeError(f"the slow engine proxy needs a unix socket engine, not {host}")
    return host.removeprefix("unix://")


class SlowEngine:
    """`with SlowEngine(path, rb"pattern") as proxy`: DOCKER_HOST=proxy.url reaches the
    engine; the first `times` requests matching the pattern wait for `proxy.release()`
    (`proxy.held` is set when one arrives)."""

    def __init__(self, path: Path, pattern: bytes, times: int = 1):
        self.path, self.pattern, self.left = str(path), re.compile(pattern), times
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(self.path)
        self._server.listen(16)
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> "SlowEngine":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._release.set()
        self._server.close()
        os.unlink(self.path)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(engine_socket())
            self._spawn(pump, client, upstream, self.gate)     # requests, to the engine
            self._spawn(pump, upstream, client)

    def _should_hold(self, data: bytes) -> bool:
        with self._lock:
            if self.left > 0 and self.pattern.search(data):
                self.left -= 1
                return True
        return False

    def gate(self, data: bytes) -> None:
        """Called with each piece of a request before it goes on to the engine: holds the
        matching ones until released. Subclasses hold requests by other rules."""
        if self._should_hold(data):
            self.held.set()
            self._release.wait(60)

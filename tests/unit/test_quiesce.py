"""quiet(): stopped containers are always started again, whatever error an engine call raises.

The engine is a fake of our own Engine interface (stop, start, pause, unpause, run_in).
"""

from __future__ import annotations

import errno

import pytest

from volbackup.docker.containers import ContainerInfo
from volbackup.errors import EngineError
from volbackup.ops.quiesce import quiet


class FakeEngine:
    def __init__(self, broken: str):
        self.broken, self.calls = broken, []

    def stop(self, container, timeout):
        self.calls.append(("stop", container.name))

    def start(self, container):
        self.calls.append(("start", container.name))
        if container.name == self.broken:  # not one of volbackup's errors
            raise OSError(errno.EIO, "Input/output error")


def running(name: str) -> ContainerInfo:
    return ContainerInfo(name, name, "running", {}, ("v",))


def test_every_stopped_container_is_started_even_if_one_start_raises_anything():
    engine = FakeEngine(broken="web")
    with pytest.raises(EngineError) as caught:
        with quiet(engine, [running("db"), running("web")], "stop"):
            pass
    assert ("start", "db") in engine.calls, "db is started although web's start raised"
    assert str(caught.value) == "could not start container web again: [Errno 5] Input/output error"

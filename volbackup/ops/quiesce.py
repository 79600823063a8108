"""Quiet the containers that use the volumes being read, and always put them back.

Before a group of volumes is read: run each running container's `volbackup.pre` hook,
then stop (or pause) the containers asked for (`--stop`, `--pause`, or the label
`volbackup.stop=true`), dependents first (Compose `depends_on`). Afterwards, whatever
happened: start (or unpause) exactly those containers again, in the opposite order, then
run their `volbackup.post` hooks. A container that was stopped or paused before is left
as it was.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

from volbackup.engine import ContainerInfo, Engine
from volbackup.errors import EngineError, VolbackupError

PRE_LABEL, POST_LABEL, STOP_LABEL = "volbackup.pre", "volbackup.post", "volbackup.stop"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
DEPENDS_LABEL = "com.docker.compose.depends_on"
OUTPUT_LIMIT = 64 * 1024


@dataclass
class HookRun:
    container: str
    hook: str          # "pre" or "post"
    command: str
    exit_code: int
    output: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Quiet:
    """What `quiet()` did; `pre_failed` names containers whose pre-hook failed."""

    hooks: list[HookRun]
    pre_failed: dict[str, HookRun]
    stopped: list[str]
    paused: list[str]


@contextmanager
def quiet(engine: Engine, containers: list[ContainerInfo], mode: str | None,
          stop_timeout: int = 10) -> Iterator[Quiet]:
    """Hooks, then stop/pause; on the way out (also on errors and signals) undo it all."""
    done = Quiet([], {}, [], [])
    running = [c for c in containers if c.state == "running"]
    for container in running:
        run = _hook(engine, container, "pre")
        if run is not None:
            done.hooks.append(run)
            if run.exit_code != 0:
                done.pre_failed[container.name] = run
    to_stop = [c for c in running
               if mode == "stop" or c.labels.get(STOP_LABEL, "").lower() == "true"]
    to_pause = [c for c in running if mode == "pause" and c not in to_stop]
    stopped: list[ContainerInfo] = []
    paused: list[ContainerInfo] = []
    try:
        for container in stop_order(to_stop):
            engine.stop(container, stop_timeout)
            stopped.append(container)
            done.stopped.append(container.name)
        for container in to_pause:
            engine.pause(container)
            paused.append(container)
            done.paused.append(container.name)
        yield done
    finally:
        with _signals_deferred():
            problems = _put_back(engine, stopped, paused)
            for container in running:
                if container.name not in problems:  # running again
                    run = _hook(engine, container, "post")
                    if run is not None:
                        done.hooks.append(run)
        if problems:
            raise EngineError("; ".join(problems.values()))


def _put_back(engine: Engine, stopped: list[ContainerInfo],
              paused: list[ContainerInfo]) -> dict[str, str]:
    """Start the stopped (dependencies first) and unpause the paused; name what failed."""
    problems = {}
    for container in reversed(stopped):
        try:
            engine.start(container)
        except VolbackupError as e:
            problems[container.name] = f"could not start container {container.name} again: {e}"
    for container in paused:
        try:
            engine.unpause(container)
        except VolbackupError as e:
            problems[container.name] = f"could not unpause container {container.name}: {e}"
    return problems


def _hook(engine: Engine, container: ContainerInfo, which: str) -> HookRun | None:
    command = container.labels.get(PRE_LABEL if which == "pre" else POST_LABEL, "").strip()
    if not command:
        return None
    try:
        code, output = engine.run_in(container, command)
    except VolbackupError as e:
        code, output = -1, str(e).encode()
    text = output[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    return HookRun(container.name, which, command, code, text)


def stop_order(containers: list[ContainerInfo]) -> list[ContainerInfo]:
    """Dependents before what they depend on (Compose `depends_on` within a project);
    otherwise the given order. Starting again goes the other way round."""
    by_service = {(c.labels.get(PROJECT_LABEL), c.labels.get(SERVICE_LABEL)): c
                  for c in containers if c.labels.get(SERVICE_LABEL)}
    needs: dict[str, set[str]] = {c.id: set() for c in containers}  # id -> ids it depends on
    for c in containers:
        for item in c.labels.get(DEPENDS_LABEL, "").split(","):
            service = item.split(":", 1)[0].strip()
            dep = by_service.get((c.labels.get(PROJECT_LABEL), service))
            if service and dep is not None and dep.id != c.id:
                needs[c.id].add(dep.id)
    order = []
    remaining = list(containers)
    while remaining:
        # stop a container once nothing left to stop depends on it
        for c in remaining:
            if not any(c.id in needs[o.id] for o in remaining if o is not c):
                break
        else:
            c = remaining[0]  # a dependency cycle: fall back to the given order
        order.append(c)
        remaining.remove(c)
    return order


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while containers are put back; deliver them afterwards."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (ValueError, OSError):  # not the main thread: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

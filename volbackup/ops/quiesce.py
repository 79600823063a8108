"""Quiet the containers that use the volumes being read, and always put them back.

Before a group of volumes is read: run each running container's `volbackup.pre` hook,
then stop (or pause) the containers asked for (`--stop`, `--pause`, or the label
`volbackup.stop=true`), dependents first (Compose `depends_on`). Afterwards, whatever
happened: start (or unpause) exactly those containers again, in the opposite order, then
run their `volbackup.post` hooks. A container that was stopped or paused before is left
as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from volbackup.docker.containers import ContainerInfo
from volbackup.docker.engine import Engine
from volbackup.errors import EngineError, Unexpected, VolbackupError, as_error
from volbackup.ops.outcome import Outcome
from volbackup.ops.parallel import in_parallel
from volbackup.ops.select import Source
from volbackup.signals import deferred

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
class QuietOutcome(Outcome):
    """An outcome that also tells what was done to the containers using the volume."""

    hooks: list[dict] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)


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
    to_stop = [c for c in running
               if mode == "stop" or c.labels.get(STOP_LABEL, "").lower() == "true"]
    to_pause = [c for c in running if mode == "pause" and c not in to_stop]
    hooked: list[ContainerInfo] = []   # pre-hook run (or begun): these get their post-hook
    stopped: list[ContainerInfo] = []
    paused: list[ContainerInfo] = []
    try:
        for container in running:
            hooked.append(container)
            run = _hook(engine, container, "pre")
            if run is not None:
                done.hooks.append(run)
                if run.exit_code != 0:
                    done.pre_failed[container.name] = run
        for container in stop_order(to_stop):
            with deferred():  # never lose track of a container the engine did stop
                stopped.append(container)
                engine.stop(container, stop_timeout)
            done.stopped.append(container.name)
        for container in to_pause:
            with deferred():
                paused.append(container)
                engine.pause(container)
            done.paused.append(container.name)
        yield done
    finally:
        # Held as a whole: a second or third Ctrl-C is recorded, not obeyed, until every
        # container is back and every post-hook ran (volbackup.signals).
        with deferred():
            problems = _put_back(engine, stopped, paused)
            for container in hooked:
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
        except Exception as e:  # whatever it was, the others are still put back
            problems[container.name] = f"could not start container {container.name} again: {e}"
    for container in paused:
        try:
            engine.unpause(container)
        except Exception as e:
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


def _after_done(volume: str, error: VolbackupError) -> VolbackupError:
    """`error` (its class and exit code) for a volume that was read before it happened."""
    cls = VolbackupError if isinstance(error, Unexpected) else type(error)
    return cls(f"{volume} was done, but {error}")


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


def users_of(engine: Engine, source: Source) -> list[ContainerInfo]:
    """The containers whose state matters while `source` is read."""
    if source.kind == "volume":
        return engine.containers_of(source.volume)
    return [engine.container(source.container)]  # a bind mount: its own container


def groups(sources: list[Source], users: dict[str, list[ContainerInfo]]):
    """Sources that share a container go together, with the union of their containers."""
    groups: list[tuple[dict[str, ContainerInfo], list[Source]]] = []
    for source in sources:
        mine = {c.id: c for c in users[source.volume]}
        joined = [g for g in groups if set(g[0]) & set(mine)]
        for g in joined:
            groups.remove(g)
            mine.update(g[0])
        members = [s for g in joined for s in g[1]] + [source]
        groups.append((mine, members))
    return [(list(containers.values()), members) for containers, members in groups]


def each_quietly(engine: Engine, sources: list[Source], mode: str | None, stop_timeout: int,
                 work: Callable[[Source], QuietOutcome],
                 failed: Callable[[Source, VolbackupError], QuietOutcome],
                 jobs: int = 1) -> list[QuietOutcome]:
    """`work(source)` for every source, each group of sources sharing containers inside
    one `quiet()`. A source whose container's pre-hook failed is skipped (`failed`).
    Up to `jobs` groups at a time (volbackup.ops.parallel); one group's sources in turn."""
    users = {s.volume: users_of(engine, s) for s in sources}

    def one_group(grouped: tuple[list[ContainerInfo], list[Source]]) -> list[QuietOutcome]:
        containers, group = grouped
        done: list[QuietOutcome] = []
        state: Quiet | None = None
        try:
            with quiet(engine, containers, mode, stop_timeout) as state:
                for source in group:
                    hook = next((state.pre_failed[c.name] for c in users[source.volume]
                                 if c.name in state.pre_failed), None)
                    done.append(work(source) if hook is None else failed(source, VolbackupError(
                        f"skipped: the pre-hook of container {hook.container} failed with "
                        f"exit code {hook.exit_code}")))
        except Exception as e:  # a container could not be stopped or put back, or a bug
            error = as_error(e)
            for outcome in done:
                if not outcome.failed:
                    outcome.failure(_after_done(outcome.volume, error))
            done.extend(failed(s, error) for s in group[len(done):])
        for source, outcome in zip(group, done):
            names = {c.name for c in users[source.volume]}
            if state is not None:
                outcome.hooks = [h.as_dict() for h in state.hooks if h.container in names]
                outcome.stopped = [n for n in state.stopped if n in names]
                outcome.paused = [n for n in state.paused if n in names]
        return done

    def every_outcome(grouped: tuple[list[ContainerInfo], list[Source]]) -> list[QuietOutcome]:
        """Never raises (but on Ctrl-C): a worker of --jobs that raised would lose the
        outcomes of every other group."""
        try:
            return one_group(grouped)
        except Exception as e:
            return [failed(s, as_error(e)) for s in grouped[1]]

    return [outcome for done in in_parallel(groups(sources, users), every_outcome, jobs)
            for outcome in done]

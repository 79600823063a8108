"""What to back up (or migrate): named volumes, selections of the host's volumes, or a
container's mounts, each turned into a Source that says how a helper reaches it."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from volbackup.docker.engine import Engine
from volbackup.docker.helpers import DATA_PATH
from volbackup.docker.volumes import bind_volume_name
from volbackup.errors import NotFound, VolbackupError

PROJECT_LABEL = "com.docker.compose.project"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"   # set by engines 23.0 and later
_ANONYMOUS_NAME = re.compile(r"[0-9a-f]{64}")        # what older engines name them


@dataclass
class Source:
    """One volume to back up and how a helper reaches it."""

    volume: str                     # the name its snapshot restores as
    path: str                       # directory inside the helper
    helper: dict                    # keyword arguments for Engine.helper
    driver: str = "local"
    driver_options: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    kind: str = "volume"
    container: str | None = None
    mount_path: str | None = None
    bind_path: str | None = None
    host_path: str | None = None    # its directory on the engine's host, if plain (docker/direct.py)
    file_name: str | None = None    # a bind of one regular file: its name in the snapshot,
                                    # the only entry beside the root (host_path is the file)


@dataclass
class Missing:
    """A named volume that could not be used, and why."""

    volume: str
    error: VolbackupError


@dataclass
class Skipped:
    """A mount that holds no data to back up (a socket, a FIFO, a device), and why."""

    volume: str
    reason: str


@dataclass
class Selection:
    """Volumes named on the command line plus those matched by --all, --label, --project,
    minus --exclude. Anonymous volumes are matched only with `include_anonymous`."""

    names: list[str] = field(default_factory=list)
    all: bool = False
    labels: list[str] = field(default_factory=list)   # KEY or KEY=VALUE, all must match
    project: str | None = None
    exclude: list[str] = field(default_factory=list)
    include_anonymous: bool = False

    @property
    def matches_host(self) -> bool:
        return self.all or bool(self.labels) or self.project is not None

    def resolve(self, engine: Engine) -> list[str]:
        chosen = list(dict.fromkeys(self.names))
        if self.matches_host:
            for volume in sorted(engine.volumes(), key=lambda v: v.name):
                if volume.name not in chosen and self._matches(volume.name, volume.labels):
                    chosen.append(volume.name)
        return [name for name in chosen if name not in set(self.exclude)]

    def _matches(self, name: str, labels: dict[str, str]) -> bool:
        anonymous = ANONYMOUS_LABEL in labels or bool(_ANONYMOUS_NAME.fullmatch(name))
        if anonymous and not self.include_anonymous:
            return False
        if self.project is not None and labels.get(PROJECT_LABEL) != self.project:
            return False
        for wanted in self.labels:
            key, sep, value = wanted.partition("=")
            if key not in labels or (sep and labels[key] != value):
                return False
        return True


def volume_sources(engine: Engine, names: list[str]) -> list[Source | Missing]:
    """Sources for named volumes; a volume that cannot be inspected becomes a Missing."""
    plan: list[Source | Missing] = []
    for name in names:
        try:
            info = engine.volume(name)
        except VolbackupError as e:
            plan.append(Missing(name, e))
            continue
        plan.append(Source(name, DATA_PATH, {"volume": name}, info.driver, info.options,
                           info.labels, host_path=plain_directory(info)))
    return plan


def container_sources(engine: Engine, container: str) -> list[Source | Skipped]:
    """The container's volumes and binds, read through one `volumes_from` helper.

    A mount that contains another mount of the container is read from a helper of its
    own, so its snapshot does not swallow the nested volume's files. So is every mount
    of a container that has a tmpfs mount: the engine (20.10) refuses `volumes_from`
    on such a container. A bind of one regular file (a config file) is read from a
    helper of its own too, where it is mounted at /data/NAME: its snapshot holds the
    root and that one file. A bind of a socket, FIFO or device holds no data: Skipped.
    """
    name, mounts = engine.container_mounts(container)
    has_tmpfs = any(m.kind == "tmpfs" for m in mounts)
    mounts = [m for m in mounts if m.kind in ("volume", "bind")]
    sources: list[Source | Skipped] = []
    for mount in mounts:
        nested = any(other.destination.startswith(mount.destination.rstrip("/") + "/")
                     for other in mounts if other is not mount)
        own_helper = nested or has_tmpfs
        path = DATA_PATH if own_helper else mount.destination
        if mount.kind == "volume":
            info = engine.volume(mount.name)
            helper = {"volume": mount.name} if own_helper else {"volumes_from": name}
            sources.append(Source(mount.name, path, helper, info.driver, info.options,
                                  info.labels, "volume", name, mount.destination,
                                  host_path=plain_directory(info)))
            continue
        volume = bind_volume_name(name, mount.destination)
        kind = engine.path_kind(name, mount.destination)
        if kind == "file":
            file_name = posixpath.basename(mount.source.rstrip("/")) or "file"
            sources.append(Source(volume, DATA_PATH,
                                  {"bind": mount.source, "bind_at": f"{DATA_PATH}/{file_name}"},
                                  kind="bind", container=name, mount_path=mount.destination,
                                  bind_path=mount.source, host_path=mount.source,
                                  file_name=file_name))
        elif kind == "directory":
            helper = {"bind": mount.source} if own_helper else {"volumes_from": name}
            sources.append(Source(volume, path, helper, kind="bind", container=name,
                                  mount_path=mount.destination, bind_path=mount.source,
                                  host_path=mount.source))
        else:
            sources.append(Skipped(volume, f"{mount.destination} is a bind mount of a {kind} "
                                           f"({mount.source}), which holds no data"))
    return sources


def plain_directory(info) -> str | None:
    """A `local` volume without options is a plain directory: its mountpoint."""
    return info.mountpoint if info.driver == "local" and not info.options else None


def plan(engine: Engine, container: str | None, selection: Selection,
         doing: str = "back up") -> list[Source | Missing | Skipped]:
    """Sources for a container's mounts, or for the selected volumes."""
    if container:
        sources = container_sources(engine, container)
        if not sources:
            raise NotFound(f"container {container} has no volumes or bind mounts to {doing}")
        return list(sources)
    names = selection.resolve(engine)
    if not names:
        raise NotFound("no volume matches the selection")
    return volume_sources(engine, names)

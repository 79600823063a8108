"""Containers as backups of their volumes see them: find, stop, start, pause, run a hook,
list the mounts, stat a path inside."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

import docker

from volbackup.docker.client import engine_errors
from volbackup.docker.helpers import HELPER_LABEL
from volbackup.errors import EngineError, NotFound


@dataclass(frozen=True)
class ContainerInfo:
    """A container as backups of its volumes need to know it."""

    id: str
    name: str
    state: str                 # "running", "paused", "exited", "created", ...
    labels: dict[str, str]
    volumes: tuple[str, ...]   # names of the volumes it mounts


@dataclass(frozen=True)
class MountInfo:
    """One volume or bind mount of a container, as `--volumes-from` shares it."""

    kind: str               # "volume", "bind" or "tmpfs"
    name: str | None        # volume name (None for binds)
    source: str             # host path of the data
    destination: str        # path inside the container
    read_only: bool


class ContainerCalls:
    """Part of Engine (volbackup/docker/engine.py): needs its `api`."""

    api: docker.APIClient

    def containers_using(self, volume: str) -> list[str]:
        """Names of every container (running or not, helpers excluded) that mounts `volume`."""
        return sorted(c.name for c in self.containers_of(volume))

    def containers_of(self, volume: str) -> list[ContainerInfo]:
        """Every container (running or not, helpers excluded) that mounts `volume`."""
        with engine_errors(f"listing containers that use volume {volume}"):
            found = self.api.containers(all=True, filters={"volume": volume})
        return [_container_info(c) for c in found
                if HELPER_LABEL not in (c.get("Labels") or {})]

    def container(self, name: str) -> ContainerInfo:
        with engine_errors(f"inspecting container {name}", f"no such container: {name}"):
            found = self.api.containers(all=True, filters={"id": name}) or \
                self.api.containers(all=True, filters={"name": f"^/?{re.escape(name)}$"})
        if not found:
            raise NotFound(f"no such container: {name}")
        return _container_info(found[0])

    def stop(self, container: ContainerInfo, timeout: int) -> None:
        with engine_errors(f"stopping container {container.name}"):
            self.api.stop(container.id, timeout=timeout)

    def start(self, container: ContainerInfo) -> None:
        with engine_errors(f"starting container {container.name}"):
            self.api.start(container.id)

    def pause(self, container: ContainerInfo) -> None:
        with engine_errors(f"pausing container {container.name}"):
            self.api.pause(container.id)

    def unpause(self, container: ContainerInfo) -> None:
        with engine_errors(f"unpausing container {container.name}"):
            self.api.unpause(container.id)

    def run_in(self, container: ContainerInfo, command: str) -> tuple[int, bytes]:
        """Run `sh -c COMMAND` in a running container: (exit code, output)."""
        with engine_errors(f"running a hook in container {container.name}"):
            created = self.api.exec_create(container.id, ["sh", "-c", command])
            output = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        return (code if code is not None else -1), output

    def container_mounts(self, container: str) -> tuple[str, list[MountInfo]]:
        """The container's name and its mounts: volume, bind and tmpfs (which holds no data
        to back up, but stops `volumes_from` from working on engine 20.10)."""
        with engine_errors(f"inspecting container {container}",
                            f"no such container: {container}"):
            attrs = self.api.inspect_container(container)
        mounts = [MountInfo(m["Type"], m.get("Name"), m.get("Source", ""), m["Destination"],
                            not m.get("RW", True))
                  for m in attrs.get("Mounts", []) if m.get("Type") in ("volume", "bind", "tmpfs")]
        return attrs["Name"].lstrip("/"), sorted(mounts, key=lambda m: m.destination)

    def path_kind(self, container: str, path: str) -> str:
        """What `path` is inside `container` (the engine's stat, HEAD /archive; the
        container may be running or not, and is not touched): "directory", "file",
        "symlink", "socket", "fifo", "device" or "other"."""
        with engine_errors(f"checking {path} in container {container}",
                            f"no such container: {container}"):
            response = self.api.head(self.api._url("/containers/{0}/archive", container),
                                     params={"path": path})
            self.api._raise_for_status(response)
        try:
            mode = int(json.loads(base64.b64decode(
                response.headers["X-Docker-Container-Path-Stat"]))["mode"])
        except (KeyError, ValueError, TypeError):
            raise EngineError(f"checking {path} in container {container}: "
                              "the engine's answer has no usable file mode") from None
        return _go_file_kind(mode)


def _container_info(listed: dict) -> ContainerInfo:
    """From one entry of the container list (no inspect: that blocks during archive reads)."""
    volumes = tuple(m["Name"] for m in listed.get("Mounts") or [] if m.get("Type") == "volume")
    state = listed.get("State") or ""
    if state == "running" and "(Paused)" in (listed.get("Status") or ""):
        state = "paused"
    return ContainerInfo(listed["Id"], listed["Names"][0].lstrip("/"), state,
                         dict(listed.get("Labels") or {}), volumes)

# Go's os.FileMode type bits, as the engine reports them in a path stat.
_GO_KINDS = ((1 << 31, "directory"), (1 << 27, "symlink"), (1 << 24, "socket"),
             (1 << 25, "fifo"), (1 << 26, "device"), (1 << 21, "device"), (1 << 19, "other"))


def _go_file_kind(mode: int) -> str:
    for bit, kind in _GO_KINDS:
        if mode & bit:
            return kind
    return "file"

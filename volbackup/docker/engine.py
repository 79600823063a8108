"""Everything that talks to the Docker engine. No other module imports docker.

Data moves through the engine's archive endpoints (GET/PUT /containers/{id}/archive)
on a *helper*: a container that is created from volbackup's own image (imported from
an empty tar, so no registry is needed) and never started. Helpers carry labels so a
helper left behind by a killed run is recognised and removed by the next run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import stat
import struct
import sys
import tarfile
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator

from volbackup.errors import EngineError, NotFound, StreamBroken, TargetBusy
from volbackup.processes import pid_namespace, run_is_over
from volbackup.signals import deferred
from volbackup.urls import safe_url, scrub

# docker-py imports paramiko (70 ms and 19 MiB, about a fifth of a backup's start-up time
# and peak memory) only to offer ssh:// engines. Keep it out until one is asked for:
# _enable_ssh() then loads docker-py's ssh adapter, which imports paramiko.
_PARAMIKO_HELD_BACK = "paramiko" not in sys.modules
if _PARAMIKO_HELD_BACK:
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # "import paramiko" fails
try:
    import docker
    import docker.api.client
    import docker.errors
    import docker.transport
    import requests
    import urllib3.exceptions
    from docker.types import Mount
finally:
    if _PARAMIKO_HELD_BACK:
        del sys.modules["paramiko"]

HELPER_IMAGE = "volbackup-helper:1"
HELPER_LABEL = "io.volbackup.helper"   # on helper containers only
IMAGE_LABEL = "io.volbackup.image"     # on the helper image (and so on containers made from it)
PID_LABEL = "io.volbackup.pid"
HOST_LABEL = "io.volbackup.host"
PIDNS_LABEL = "io.volbackup.pidns"    # the pid namespace PID_LABEL means something in
CREATED_LABEL = "io.volbackup.created"
CLAIM_PREFIX = "volbackup-claim-"      # + the target volume's name (Engine.claim)
STALE_AFTER_SECONDS = 24 * 3600
DATA_PATH = "/data"
EXPORT_CHUNK = 1 << 20
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str
    options: dict[str, str]
    labels: dict[str, str]
    mountpoint: str


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


def _short(err: Exception) -> str:
    """The engine's own explanation, on one line, with URLs cut to scheme and host."""
    text = getattr(err, "explanation", None) or str(err)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return scrub(" ".join(str(text).split()))


@contextmanager
def _engine_errors(doing: str, not_found: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions into ours, with one-line messages."""
    try:
        yield
    except docker.errors.NotFound as e:
        raise NotFound(not_found or f"{doing}: {_short(e)}") from None
    except docker.errors.APIError as e:
        raise EngineError(f"{doing}: the engine said {_short(e)}") from None
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise EngineError(f"{doing}: {_short(e)}") from None


class Engine:
    def __init__(self, client: docker.DockerClient, where: str):
        self.client = client
        self.api = client.api
        self.where = where

    @classmethod
    def connect(cls, base_url: str | None = None, context: str | None = None) -> "Engine":
        """The engine at `base_url`, or of a Docker context, or from the environment."""
        tls = None
        if context:
            try:
                found = docker.ContextAPI.get_context(context)
            except docker.errors.DockerException as e:
                raise EngineError(f"reading Docker context {context}: {_short(e)}") from None
            if found is None:
                raise NotFound(f"no such Docker context: {context}")
            base_url, tls = found.Host, found.TLSConfig
        where = safe_url(base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        if where.startswith("ssh://"):
            _enable_ssh()
        try:
            if base_url:
                client = docker.DockerClient(base_url=base_url, tls=tls or False,
                                             use_ssh_client=base_url.startswith("ssh://"))
            else:
                client = docker.from_env()
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as e:
            reason = _short(e)
            reason = reason if len(reason) < 160 else reason[:157] + "..."
            raise EngineError(f"cannot reach the Docker engine at {where} ({reason})") from None
        return cls(client, where)

    @property
    def is_remote(self) -> bool:
        """True when the engine is reached over a network (tcp, ssh), not a local socket."""
        return not self.where.startswith(("unix://", "npipe://", "/"))

    @cached_property
    def shares_host_paths(self) -> bool:
        """True when this host's paths are the engine's, as the engine's containers see
        them: a local engine without user-namespace remapping (which shifts the ids of
        files on the host; only the engine's own archive endpoints translate them)."""
        if self.is_remote:
            return False
        with _engine_errors("reading the engine's security options"):
            options = self.api.info().get("SecurityOptions") or []
        return not any("userns" in option for option in options)

    @cached_property
    def _socket_owner_pid(self) -> int | None:
        """The pid of the process that serves the engine's unix socket, as this process
        sees it (SO_PEERCRED); None when that process is not in our pid namespace (the
        socket was mounted into our container), is not the engine (a forwarder such as
        `ssh -L` or socat may lead to another host's engine), or the engine is not on a
        unix socket."""
        if self.is_remote or not self.where.startswith(("unix://", "/")):
            return None
        try:
            with socket.socket(socket.AF_UNIX) as peer:
                peer.settimeout(5)
                peer.connect(self.where.removeprefix("unix://"))
                credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                              struct.calcsize("3i"))
        except (OSError, AttributeError):  # AttributeError: no SO_PEERCRED (not Linux)
            return None
        pid = struct.unpack("3i", credentials)[0] or None
        return pid if pid is not None and _is_engine_process(pid) else None

    def local_directory(self, path: str | None) -> str | None:
        """`path` if the directory the engine knows by that name is the very directory
        this process finds there (same device and inode seen through the engine's root),
        so it can be read and written here; None otherwise (remote engine, user-namespace
        remapping, volbackup in a container of its own, no such directory)."""
        pid = self._socket_owner_pid
        if not path or not os.path.isabs(path) or pid is None or not self.shares_host_paths:
            return None
        try:
            here, there = os.stat(path), os.stat(f"/proc/{pid}/root{path}")
        except OSError:
            return None
        same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        return path if same and stat.S_ISDIR(here.st_mode) else None

    def prepare_helpers(self) -> None:
        """What every run that uses helpers does first: clear leftovers, have the image."""
        self.remove_stale_helpers()
        self.ensure_helper_image()

    # -- volumes
    def volume(self, name: str) -> VolumeInfo:
        with _engine_errors(f"inspecting volume {name}", f"no such volume: {name}"):
            attrs = self.api.inspect_volume(name)
        return VolumeInfo(attrs["Name"], attrs.get("Driver") or "local",
                          dict(attrs.get("Options") or {}), dict(attrs.get("Labels") or {}),
                          attrs.get("Mountpoint") or "")

    def create_volume(self, name: str, driver: str, options: dict, labels: dict) -> VolumeInfo:
        with _engine_errors(f"creating volume {name}"):
            self.api.create_volume(name, driver=driver, driver_opts=options or None,
                                   labels=labels or None)
        return self.volume(name)

    def remove_volume(self, name: str) -> None:
        with _engine_errors(f"removing volume {name}"):
            self.api.remove_volume(name)

    def volumes(self) -> list[VolumeInfo]:
        """Every volume of the engine."""
        with _engine_errors("listing volumes"):
            found = self.api.volumes().get("Volumes") or []
        return sorted((VolumeInfo(v["Name"], v.get("Driver") or "local",
                                  dict(v.get("Options") or {}), dict(v.get("Labels") or {}),
                                  v.get("Mountpoint") or "") for v in found),
                      key=lambda v: v.name)

    def containers_using(self, volume: str) -> list[str]:
        """Names of every container (running or not, helpers excluded) that mounts `volume`."""
        return sorted(c.name for c in self.containers_of(volume))

    def containers_of(self, volume: str) -> list[ContainerInfo]:
        """Every container (running or not, helpers excluded) that mounts `volume`."""
        with _engine_errors(f"listing containers that use volume {volume}"):
            found = self.api.containers(all=True, filters={"volume": volume})
        return [_container_info(c) for c in found
                if HELPER_LABEL not in (c.get("Labels") or {})]

    def container(self, name: str) -> ContainerInfo:
        with _engine_errors(f"inspecting container {name}", f"no such container: {name}"):
            found = self.api.containers(all=True, filters={"id": name}) or \
                self.api.containers(all=True, filters={"name": f"^/{re.escape(name)}$"})
        if not found:
            raise NotFound(f"no such container: {name}")
        return _container_info(found[0])

    def stop(self, container: ContainerInfo, timeout: int) -> None:
        with _engine_errors(f"stopping container {container.name}"):
            self.api.stop(container.id, timeout=timeout)

    def start(self, container: ContainerInfo) -> None:
        with _engine_errors(f"starting container {container.name}"):
            self.api.start(container.id)

    def pause(self, container: ContainerInfo) -> None:
        with _engine_errors(f"pausing container {container.name}"):
            self.api.pause(container.id)

    def unpause(self, container: ContainerInfo) -> None:
        with _engine_errors(f"unpausing container {container.name}"):
            self.api.unpause(container.id)

    def run_in(self, container: ContainerInfo, command: str) -> tuple[int, bytes]:
        """Run `sh -c COMMAND` in a running container: (exit code, output)."""
        with _engine_errors(f"running a hook in container {container.name}"):
            created = self.api.exec_create(container.id, ["sh", "-c", command])
            output = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        return (code if code is not None else -1), output

    # -- containers
    def container_mounts(self, container: str) -> tuple[str, list[MountInfo]]:
        """The container's name and its mounts: volume, bind and tmpfs (which holds no data
        to back up, but stops `volumes_from` from working on engine 20.10)."""
        with _engine_errors(f"inspecting container {container}",
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
        with _engine_errors(f"checking {path} in container {container}",
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

    # -- helpers
    def ensure_helper_image(self) -> None:
        """Import volbackup's helper image from an empty tar unless it is already there."""
        with _engine_errors("preparing the helper image"):
            try:
                config = self.api.inspect_image(HELPER_IMAGE).get("Config") or {}
                labels = config.get("Labels") or {}
                if labels.get(IMAGE_LABEL) == "helper":
                    return
            except docker.errors.ImageNotFound:
                pass
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w").close()
            repository, tag = HELPER_IMAGE.split(":")
            self.api.import_image_from_data(empty.getvalue(), repository=repository, tag=tag,
                                            changes=[f"LABEL {IMAGE_LABEL}=helper"])

    def remove_stale_helpers(self) -> list[str]:
        """Remove helpers whose run is over: its process is gone, or it is a day old."""
        removed = []
        with _engine_errors("looking for leftover helpers"):
            helpers = self.api.containers(all=True, filters={"label": HELPER_LABEL})
        for helper in helpers:
            if _helper_is_stale(helper.get("Labels") or {}, helper.get("Created", 0)):
                try:
                    self.api.remove_container(helper["Id"], force=True, v=False)
                    removed.append(helper["Names"][0].lstrip("/"))
                except docker.errors.APIError:
                    pass  # another run removed it first
        return removed

    @contextmanager
    def helper(self, *, volume: str | None = None, bind: str | None = None,
               bind_at: str = DATA_PATH, volumes_from: str | None = None,
               read_only: bool = True) -> Iterator["Helper"]:
        """A created, never started helper attached to the data; removed on the way out.

        `volume` or `bind` is mounted at /data (a bind at `bind_at`: a single file is
        mounted at /data/NAME, so /data/. reads as a directory holding it); `volumes_from`
        shares a container's mounts at their own paths.
        """
        mounts = []
        if volume:
            mounts.append(Mount(DATA_PATH, volume, type="volume", read_only=read_only,
                                no_copy=True))
        if bind:
            mounts.append(Mount(bind_at, bind, type="bind", read_only=read_only))
        name = f"volbackup-helper-{uuid.uuid4().hex[:12]}"
        labels = _run_labels("helper")
        host_config = self.api.create_host_config(
            mounts=mounts or None, volumes_from=[volumes_from] if volumes_from else None,
            network_mode="none")
        created = None
        try:
            with _engine_errors("creating a helper container"), deferred():
                created = self.api.create_container(
                    HELPER_IMAGE, command=["volbackup-helper"], name=name, labels=labels,
                    host_config=host_config, network_disabled=True)
            yield Helper(self, created["Id"])
        finally:
            if created is not None:
                self._remove_own_container(created["Id"])

    def _remove_own_container(self, container_id: str) -> None:
        """Remove a helper or claim this run created; a failure is left to the next run's
        sweep (remove_stale_helpers), which finds it by its labels."""
        with deferred():
            try:
                self.api.remove_container(container_id, force=True, v=False)
            except (docker.errors.DockerException, requests.RequestException):
                pass

    @contextmanager
    def claim(self, volume: str) -> Iterator[None]:
        """Hold the target `volume` for this run while it is cleared, created and filled.

        The claim is a created, never started container named `volbackup-claim-VOLUME`,
        from the helper image, with no mounts and the helper labels (so the stale-helper
        sweep removes the claim of a killed run). Container names are unique on an engine
        and creating one is not idempotent (409 on a duplicate), unlike `volume create`:
        of two runs after the same name exactly one gets the claim; the other gets
        TargetBusy before it has looked at, created or removed anything.
        """
        name = CLAIM_PREFIX + volume
        labels = _run_labels("claim")
        created = None
        try:
            with deferred():
                with _engine_errors(f"claiming volume {volume}"):
                    try:
                        created = self.api.create_container(
                            HELPER_IMAGE, command=["volbackup-claim"], name=name,
                            labels=labels, network_disabled=True,
                            host_config=self.api.create_host_config(network_mode="none"))
                    except docker.errors.APIError as e:
                        if e.status_code != 409:
                            raise
            if created is None:
                raise TargetBusy(self._claimed_by(name, volume))
            yield
        finally:
            if created is not None:
                self._remove_own_container(created["Id"])

    def _claimed_by(self, name: str, volume: str) -> str:
        """Who holds the claim `name`, for the loser's one-line message. The engine
        reserves a name before the container shows in its list: look again briefly."""
        for _ in range(20):
            with _engine_errors(f"inspecting the claim on volume {volume}"):
                found = self.api.containers(all=True,
                                            filters={"name": f"^/{re.escape(name)}$"})
            if found:
                break
            time.sleep(0.1)
        labels = (found[0].get("Labels") or {}) if found else {}
        if not found:
            holder = "another volbackup run (which has just ended)"
        elif labels.get(HELPER_LABEL) == "claim":
            created = labels.get(CREATED_LABEL, "")
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                  time.gmtime(int(created) if created.isdigit() else 0))
            holder = (f"another volbackup run (pid {labels.get(PID_LABEL, '?')} on host "
                      f"{labels.get(HOST_LABEL, '?')}, since {since})")
        else:
            holder = f"container {name}, which is not a volbackup claim"
        return (f"volume {volume} is being restored or migrated into by {holder}; nothing "
                f"was changed. Try again when it is done (if that run is dead, `docker rm "
                f"{name}` frees the name)")


def _enable_ssh() -> None:
    """Load docker-py's ssh:// adapter (and paramiko), held back at import (see the top)."""
    if hasattr(docker.api.client, "SSHHTTPAdapter"):
        return
    try:
        from docker.transport.sshconn import SSHHTTPAdapter
    except ImportError as e:
        raise EngineError(f"ssh:// engines need paramiko ({e}): pip install 'docker[ssh]'") from None
    docker.transport.SSHHTTPAdapter = SSHHTTPAdapter
    docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter


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


# What may serve the engine's socket: the engine itself, or the init system that holds the
# socket for it (systemd's docker.socket). Anything else (socat, `ssh -L`, a proxy) may
# forward to another engine, whose same-named directories are not these.
_ENGINE_PROCESSES = frozenset({"dockerd", "systemd", "init"})


def _is_engine_process(pid: int) -> bool:
    """Whether `pid`, the socket's peer, is the engine (or init holding its socket)."""
    if pid == 1:
        return True
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe).removesuffix(" (deleted)") in _ENGINE_PROCESSES


def _run_labels(kind: str) -> dict:
    """The labels of a helper or claim: what it is, and which run made it (for the stale
    check, _helper_is_stale)."""
    return {HELPER_LABEL: kind, PID_LABEL: str(os.getpid()), HOST_LABEL: socket.gethostname(),
            PIDNS_LABEL: pid_namespace(), CREATED_LABEL: str(int(time.time()))}


def _helper_is_stale(labels: dict, created: int) -> bool:
    """A day old, or its run is over (volbackup.processes.run_is_over): a helper of
    another host or pid namespace is judged by its age only. Helpers without the pid
    namespace label (earlier versions) are judged by host and pid, as before."""
    if time.time() - created > STALE_AFTER_SECONDS:
        return True
    host, namespace = labels.get(HOST_LABEL, ""), labels.get(PIDNS_LABEL)
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:  # no pid volbackup wrote: over, if it is ours to judge
        return host == socket.gethostname() and namespace in (None, pid_namespace())
    return run_is_over(host, namespace, pid)


class Helper:
    def __init__(self, engine: Engine, container_id: str):
        self.engine = engine
        self.id = container_id

    @contextmanager
    def export(self, path: str, gzip_wire: bool = False) -> Iterator[Iterator[bytes]]:
        """The tar stream of `path` (`/data/.` gives members named `./...`).

        With `gzip_wire`, the engine compresses what it sends (worth it over a slow
        network, a loss on a local socket). The response is closed on the way out: the
        engine will not remove a helper while one of its archive streams is open.
        """
        api = self.engine.api
        with _engine_errors(f"reading {path}"):
            response = api._get(api._url("/containers/{0}/archive", self.id),
                                params={"path": path}, stream=True,
                                headers={"Accept-Encoding": "gzip" if gzip_wire else "identity"})
        try:
            with _engine_errors(f"reading {path}"):
                api._raise_for_status(response)
            yield _read_response(response, path)
        finally:
            response.close()

    def import_(self, path: str, chunks: Iterable[bytes] | bytes, gzip_wire: bool = False) -> None:
        """Extract a tar stream at `path` inside the helper (gzip-compressed on the wire
        if asked: the engine accepts gzip-compressed tar)."""
        if gzip_wire:
            chunks = _gzip(chunks if not isinstance(chunks, bytes) else [chunks])
        with _engine_errors(f"writing into {path}"):
            self.engine.api.put_archive(self.id, path, chunks)

    def is_empty(self, path: str = DATA_PATH) -> bool:
        """True when the directory holds nothing but itself (reads two headers at most)."""
        with self.export(path.rstrip("/") + "/.") as chunks:
            reader = _ChunkReader(chunks)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                first = tar.next()
                second = tar.next() if first is not None else None
        return second is None


def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip container, fastest level
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def _read_response(response, path: str) -> Iterator[bytes]:
    raw = response.raw
    try:
        while True:
            chunk = raw.read(EXPORT_CHUNK, decode_content=True)
            if not chunk:
                return
            yield chunk
    except _STREAM_ERRORS as e:
        raise StreamBroken(f"the engine's stream of {path} broke off ({_short(e)})") from None


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            self._buffer = next(self._chunks, b"")
            if not self._buffer:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def bind_volume_name(container: str, destination: str) -> str:
    """The volume name a bind mount's snapshot restores as: `<container>-<path>`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", destination.strip("/")).strip("-.") or "root"
    return f"{container}-{slug}"

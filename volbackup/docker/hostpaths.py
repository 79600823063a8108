"""The proof that a path is the engine's own: when this host's directories are the ones
the engine means, the direct path (volbackup/docker/direct.py) may read and fill them."""

from __future__ import annotations

import os
import socket
import stat
import struct
from functools import cached_property

import docker

from volbackup.docker.client import engine_errors


class HostPaths:
    """Part of Engine (volbackup/docker/engine.py): needs its `api`, `where` and `is_remote`."""

    api: docker.APIClient
    where: str
    is_remote: bool

    @cached_property
    def shares_host_paths(self) -> bool:
        """True when this host's paths are the engine's, as the engine's containers see
        them: a local engine without user-namespace remapping, and not rootless unless
        this process shares its user namespace (both shift the ids of files on the host;
        only the engine's own archive endpoints translate them)."""
        if self.is_remote:
            return False
        with engine_errors("reading the engine's security options"):
            info = self.api.info()
        options = [str(option) for option in info.get("SecurityOptions") or []]
        if any("userns" in option for option in options):
            return False
        # A rootless engine runs in a user namespace of its own. Its ids are ours only
        # when we are in that namespace too (`podman unshare volbackup ...`), which the
        # socket's peer proves when it is the engine itself, not the user's systemd
        # holding the socket for it (that one is in the host's namespace).
        rootless = info.get("Rootless") is True or any("rootless" in o for o in options)
        pid = self._socket_owner_pid
        return not rootless or (pid is not None and _is_engine_itself(pid))

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
        return pid if pid is not None and _is_engine_process(pid) and _same_user_namespace(pid) \
            else None

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


# What may serve the engine's socket: the engine itself (dockerd, or `podman system
# service`), or the init system that holds the socket for it (systemd's docker.socket,
# podman.socket). Anything else (socat, `ssh -L`, a proxy) may forward to another engine,
# whose same-named directories are not these.
_ENGINES = frozenset({"dockerd", "podman"})
_ENGINE_PROCESSES = _ENGINES | {"systemd", "init"}


def _same_user_namespace(pid: int) -> bool:
    """Whether `pid` sees file owners as this process does: a rootless engine (rootless
    Podman, rootless dockerd) runs in a user namespace of its own, where its root is an
    unprivileged user here, so the ids GNU tar reads on this host are not the ones its
    containers see."""
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def _is_engine_process(pid: int) -> bool:
    """Whether `pid`, the socket's peer, is the engine (or init holding its socket)."""
    return pid == 1 or _executable(pid) in _ENGINE_PROCESSES


def _is_engine_itself(pid: int) -> bool:
    return pid != 1 and _executable(pid) in _ENGINES


def _executable(pid: int) -> str | None:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return os.path.basename(exe).removesuffix(" (deleted)")

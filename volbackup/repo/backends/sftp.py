"""A repository on a server reached over SSH: `sftp://[USER@]HOST[:PORT]/PATH`.

The only module that imports paramiko. HOST is looked up in the user's SSH configuration
(~/.ssh/config, or the file VOLBACKUP_SSH_CONFIG names) for HostName, User, Port,
IdentityFile, IdentitiesOnly, UserKnownHostsFile, StrictHostKeyChecking and ProxyCommand,
as ssh(1) would; keys come from the SSH agent and the identity files (no passwords: a backup
runs unattended). The server's host key must be in known_hosts (the user's, or the system's
/etc/ssh/ssh_known_hosts): an unknown key is refused unless VOLBACKUP_SFTP_ACCEPT_NEW_HOST_KEY=1
(or `StrictHostKeyChecking accept-new` for that host), which accepts it and records it in the
user's known_hosts; a changed key is always refused. PATH is absolute (`sftp://nas/srv/b` is
/srv/b); `sftp://nas/~/b` is `b` in the login directory.

A write goes to a temp file `.NAME.tmp-PID-PLACE-xxxx` in the blob's directory (created
0600, as the directory backend's), is synced (fsync@openssh.com, where the server has it) and
renamed over the key (posix-rename@openssh.com, atomic); an interrupted write leaves only
the temp file, which the listing never shows and `cleanup` removes (the TempFiles
capability). Reads are pipelined (paramiko's readv) in windows of at most READ_WINDOW bytes,
so memory stays bounded.

Threads: the store writes chunks on several threads and fetches ahead on several more. An
SFTP channel answers one request at a time in paramiko, so each verb or stream borrows a
channel of its own from a pool; channels share one SSH connection (a new one is opened when
it has CHANNELS_PER_CONNECTION, below sshd's default MaxSessions of 10). docs/performance.md
has the measurement against one channel behind a lock.

A connection that drops, times out or cannot be made is a `TransientError` (the next try
connects again), so `RetryBackend` (VOLBACKUP_SFTP_ATTEMPTS tries, default 8) retries the
verb; a stream handed out is not retried. paramiko's own log goes nowhere, so nothing it says
(key names, server banners) is printed.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import logging
import os
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, \
    SFTP_FLAG_WRITE

from volbackup.errors import RepositoryDenied, RepositoryError
from volbackup.repo.backends.base import (
    Backend,
    BadEntry,
    BlobInfo,
    BlobNotFound,
    ForeignEntries,
    FreeSpace,
    MakesItsPlace,
    TempFile,
    TempFiles,
    TransientError,
    beyond_end,
    check_key,
    check_range,
    check_temp_key,
    is_temp_name,
    temp_name,
    temp_owner,
)
from volbackup.repo.backends.retry import RetryBackend, attempts_from

logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

ACCEPT_ENV = "VOLBACKUP_SFTP_ACCEPT_NEW_HOST_KEY"
CONFIG_ENV = "VOLBACKUP_SSH_CONFIG"
ATTEMPTS_ENV = "VOLBACKUP_SFTP_ATTEMPTS"
CHANNELS_PER_CONNECTION = 8
DELETERS = 8
CONNECT_TIMEOUT = 15
IO_TIMEOUT = 120  # seconds without an answer on a channel (S3's read timeout too)
READ_WINDOW = 4 << 20
# The SSH receive window of a channel: how much the server may send before it waits for us.
# It holds no more than we asked for (READ_WINDOW at a time), so it costs no memory; paramiko's
# 2 MiB made reads wait for window adjustments (docs/performance.md).
WINDOW = 16 << 20
WRITE_BUFFER = 256 << 10
FILE_MODE, DIR_MODE = 0o600, 0o700
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
_IGNORED_TOP = {"lost+found"}
_CONNECTION_ERRORS = (EOFError, ConnectionError, TimeoutError, socket.timeout, socket.gaierror,
                      paramiko.SSHException)


@dataclass(frozen=True)
class Target:
    """Where and how to connect: the URL's parts over the SSH configuration's."""

    alias: str            # HOST as written in the URL (for messages and ssh_config)
    hostname: str
    port: int
    user: str
    path: str             # the repository's directory on the server
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts: tuple[str, ...] = ()  # the user's files; the first one is written to
    accept_new: bool = False
    proxy_command: str | None = None
    url_user: str | None = field(default=None, compare=False)
    url_port: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        user = f"{self.url_user}@" if self.url_user else ""
        port = f":{self.url_port}" if self.url_port else ""
        host = f"[{self.alias}]" if ":" in self.alias else self.alias
        return f"sftp://{user}{host}{port}{self.path}"


def parse_url(url: str) -> tuple[str | None, str, int | None, str]:
    """`sftp://[USER@]HOST[:PORT]/PATH` -> (user, host, port, path). A password is refused
    without being repeated (it would end up in shell history and process lists)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RepositoryError("an sftp:// repository URL has a bad host or port: "
                              "sftp://[USER@]HOST[:PORT]/PATH") from None
    if parts.password is not None:
        raise RepositoryError("an sftp:// repository URL takes no password; use an SSH key "
                              "(the agent, or IdentityFile in ~/.ssh/config)")
    if parts.query or parts.fragment:
        raise RepositoryError("an sftp:// repository URL has no query or fragment: "
                              "sftp://[USER@]HOST[:PORT]/PATH")
    host = parts.hostname
    path = unquote(parts.path)
    if not host or not path.strip("/"):
        raise RepositoryError("an sftp:// repository URL needs a host and a path: "
                              "sftp://[USER@]HOST[:PORT]/PATH")
    if path.startswith("/~/"):
        path = path[3:]  # relative to the login directory
    names = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in names):
        raise RepositoryError("an sftp:// repository path has no . or .. parts")
    path = ("/" if path.startswith("/") else "") + "/".join(names)
    return (unquote(parts.username) if parts.username else None), host, port, path


def _ssh_config() -> paramiko.SSHConfig:
    path = os.environ.get(CONFIG_ENV) or os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        if os.environ.get(CONFIG_ENV):
            raise RepositoryError(f"{CONFIG_ENV} names {path}, which does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, ValueError, paramiko.ConfigParseError) as e:
        raise RepositoryError(f"cannot read the SSH configuration {path}: {e}") from None


def resolve(url: str) -> Target:
    """The URL, with what the SSH configuration says of its host filled in (the URL wins)."""
    user, host, port, path = parse_url(url)
    found = _ssh_config().lookup(host)
    try:
        config_port = int(found.get("port", 22))
    except ValueError:
        raise RepositoryError(f"the SSH configuration has a bad Port for {host}") from None
    files = found.get("userknownhostsfile", "~/.ssh/known_hosts").split()
    identities = found.get("identityfile") or [f"~/.ssh/{name}" for name in DEFAULT_IDENTITIES]
    strict = found.get("stricthostkeychecking", "ask").lower()
    return Target(
        alias=host, hostname=found.get("hostname", host), port=port or config_port,
        user=user or found.get("user") or getpass.getuser(), path=path,
        identity_files=tuple(os.path.expanduser(f) for f in identities),
        identities_only=found.get("identitiesonly", "no").lower() == "yes",
        known_hosts=tuple(os.path.expanduser(f) for f in files if f != "none"),
        accept_new=os.environ.get(ACCEPT_ENV) == "1" or strict == "accept-new",
        proxy_command=found.get("proxycommand") if found.get("proxycommand", "none") != "none"
        else None,
        url_user=user, url_port=port)


def fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class _Connections:
    """SFTP channels for the threads of one backend: each borrows one for a verb or a
    stream and gives it back; channels share SSH connections, CHANNELS_PER_CONNECTION each."""

    def __init__(self, backend: "SFTPBackend"):
        self.backend = backend
        self.lock = threading.Lock()
        self.connecting = threading.Lock()  # one handshake at a time (sshd's MaxStartups)
        self.idle: list[paramiko.SFTPClient] = []
        self.transports: dict[paramiko.Transport, int] = {}  # open channels on each

    @contextmanager
    def channel(self) -> Iterator[paramiko.SFTPClient]:
        sftp = self._take()
        try:
            yield sftp
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, _CONNECTION_ERRORS) and \
                    _usable(sftp):
                self._give(sftp)  # streams are closed by now: the channel is clean
            else:
                self._drop(sftp)  # an interrupt may have cut a request in half
            raise
        else:
            self._give(sftp)

    def _take(self) -> paramiko.SFTPClient:
        while True:
            found = self._reserve()
            if isinstance(found, paramiko.SFTPClient):
                return found
            if found is not None:
                transport = found
                break
            with self.connecting:
                if self._has_room():
                    continue  # another thread connected meanwhile
                transport = self.backend._connect()
                with self.lock:
                    self.transports[transport] = 1
                break
        try:
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW)
            # a server that stops answering (a partition without a reset) is a timeout,
            # which is transient, not a hang: paramiko's channels wait forever by default
            sftp.get_channel().settimeout(IO_TIMEOUT)
            return sftp
        except BaseException:
            with self.lock:
                self.transports[transport] -= 1
            raise

    def _reserve(self) -> paramiko.SFTPClient | paramiko.Transport | None:
        """An idle channel, or a connection with room for one more (counted), or None."""
        with self.lock:
            while self.idle:
                sftp = self.idle.pop()
                if _usable(sftp):
                    return sftp
                self._forget(sftp)
            for transport, count in self.transports.items():
                if transport.is_active() and count < CHANNELS_PER_CONNECTION:
                    self.transports[transport] += 1
                    return transport
            return None

    def _has_room(self) -> bool:
        with self.lock:
            return bool(self.idle) or any(t.is_active() and n < CHANNELS_PER_CONNECTION
                                          for t, n in self.transports.items())

    def _give(self, sftp: paramiko.SFTPClient) -> None:
        with self.lock:
            self.idle.append(sftp)

    def _drop(self, sftp: paramiko.SFTPClient) -> None:
        with suppress(Exception):
            sftp.close()
        with self.lock:
            self._forget(sftp)

    def _forget(self, sftp: paramiko.SFTPClient) -> None:
        transport = sftp.get_channel().get_transport()
        if transport in self.transports:
            self.transports[transport] -= 1
            if not transport.is_active() or self.transports[transport] <= 0 and \
                    not any(s.get_channel().get_transport() is transport for s in self.idle):
                del self.transports[transport]
                with suppress(Exception):
                    transport.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
            transports, self.transports = list(self.transports), {}
        for sftp in idle:
            with suppress(Exception):
                sftp.close()
        for transport in transports:
            with suppress(Exception):
                transport.close()


def _usable(sftp: paramiko.SFTPClient) -> bool:
    channel = sftp.get_channel()
    return channel is not None and not channel.closed and channel.get_transport().is_active()


class SFTPBackend(Backend, TempFiles, FreeSpace, MakesItsPlace, ForeignEntries):
    def __init__(self, url: str):
        self.target = resolve(url)
        self.root = self.target.path
        self.connections = _Connections(self)
        self._fsync = True    # fsync@openssh.com, until the server says it has none
        self._statvfs = True  # statvfs@openssh.com, likewise

    def describe(self) -> str:
        return self.target.describe()

    def close(self) -> None:
        self.connections.close()

    def __del__(self):
        with suppress(Exception):
            self.connections.close()

    # -- connecting
    def _connect(self) -> paramiko.Transport:
        t = self.target
        where = self.describe()
        try:
            if t.proxy_command:
                sock = paramiko.ProxyCommand(t.proxy_command)
            else:
                sock = socket.create_connection((t.hostname, t.port), timeout=CONNECT_TIMEOUT)
        except (OSError, paramiko.SSHException) as e:
            raise TransientError(f"cannot reach the SSH server of {where} "
                                 f"({_reason(e)}; gave up after retries)") from None
        transport = paramiko.Transport(sock)
        try:
            options = transport.get_security_options()
            # AES-GCM first: one pass over each packet instead of CTR's and the MAC's
            # (paramiko lists it last; measured in docs/performance.md)
            options.ciphers = tuple(c for c in options.ciphers if "gcm" in c) + \
                tuple(c for c in options.ciphers if "gcm" not in c)
            known = self._known_hosts()
            name = t.hostname if t.port == 22 else f"[{t.hostname}]:{t.port}"
            expected = known.lookup(name) or {}
            if expected:  # negotiate a key type we know for it, as ssh(1) does
                options.key_types = [k for k in expected.keys() if k in options.key_types] + \
                    [k for k in options.key_types if k not in expected.keys()]
            transport.start_client(timeout=CONNECT_TIMEOUT)
            transport.set_keepalive(30)
            self._check_host_key(transport.get_remote_server_key(), name, expected)
            self._authenticate(transport)
        except RepositoryError:
            transport.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as e:
            transport.close()
            raise TransientError(f"the SSH connection to {where} failed ({_reason(e)}; "
                                 f"gave up after retries)") from None
        except BaseException:
            transport.close()
            raise
        return transport

    def _known_hosts(self) -> paramiko.HostKeys:
        known = paramiko.HostKeys()
        for path in (*self.target.known_hosts, "/etc/ssh/ssh_known_hosts"):
            if os.path.exists(path):
                try:
                    known.load(path)
                except (OSError, paramiko.SSHException, ValueError) as e:
                    raise RepositoryError(f"cannot read known hosts file {path}: "
                                          f"{_reason(e)}") from None
        return known

    def _check_host_key(self, key: paramiko.PKey, name: str, expected: dict) -> None:
        where = self.describe()
        if key.get_name() in expected:
            if expected[key.get_name()] == key:
                return
            raise RepositoryDenied(
                f"the host key of {name} for {where} is not the one in known_hosts "
                f"(it is {fingerprint(key)}): refusing to connect; if the server's key "
                f"really changed, remove the old one with `ssh-keygen -R '{name}'`")
        if not self.target.accept_new:
            raise RepositoryDenied(
                f"the host key of {name} for {where} is unknown ({fingerprint(key)}): "
                f"refusing to connect; check it and add it to known_hosts (ssh to the host "
                f"once), or set {ACCEPT_ENV}=1 to accept and record it")
        if not self.target.known_hosts:
            return  # UserKnownHostsFile none: accepted for this run only
        path = self.target.known_hosts[0]
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        except OSError as e:
            raise RepositoryError(f"cannot record the host key of {name} in {path}: "
                                  f"{e.strerror}") from None

    def _keys(self) -> Iterator[paramiko.PKey]:
        """The agent's keys (only those of the identity files with IdentitiesOnly), then
        the identity files' own keys that need no passphrase."""
        files, wanted = [], set()
        for path in self.target.identity_files:
            if os.path.exists(path + ".pub"):  # a key with a passphrase: the agent may hold it
                with suppress(Exception):
                    wanted.add(paramiko.PublicBlob.from_file(path + ".pub").key_blob)
            if not os.path.exists(path):
                continue
            try:
                files.append(paramiko.PKey.from_path(path))
            except (paramiko.PasswordRequiredException, paramiko.SSHException, OSError,
                    ValueError, TypeError):
                # needs a passphrase (nothing prompts; an OpenSSH-format key says so with
                # cryptography's TypeError), or is no key
                continue
        wanted |= {k.asbytes() for k in files}
        try:
            agent = paramiko.Agent()  # no agent (SSH_AUTH_SOCK unset): no keys
        except (paramiko.SSHException, OSError):
            agent = None  # a stale SSH_AUTH_SOCK: go on with the files
        try:
            for key in agent.get_keys() if agent else ():
                if not self.target.identities_only or key.asbytes() in wanted:
                    yield key
        finally:
            if agent:
                agent.close()
        yield from files

    def _authenticate(self, transport: paramiko.Transport) -> None:
        tried = 0
        for key in self._keys():
            tried += 1
            try:
                transport.auth_publickey(self.target.user, key)
            except paramiko.AuthenticationException:
                continue
            if transport.is_authenticated():
                return
        files = ", ".join(self.target.identity_files) or "no identity file"
        if not tried:
            raise RepositoryDenied(
                f"{self.describe()}: no SSH key to log in with (no agent key, and none of "
                f"{files} could be read without a passphrase: add it to the agent)")
        raise RepositoryDenied(
            f"{self.describe()}: the server accepted none of the {tried} SSH key(s) for user "
            f"{self.target.user} (from the agent and {files})")

    # -- errors
    def _error(self, e: BaseException, doing: str, sftp: paramiko.SFTPClient | None = None,
               key: str | None = None) -> RepositoryError:
        where = self.describe()
        if isinstance(e, RepositoryError):
            return e
        broken = isinstance(e, _CONNECTION_ERRORS) or (sftp is not None and not _usable(sftp))
        if broken:
            return TransientError(f"the SSH connection to {where} broke while {doing} "
                                  f"({_reason(e)}; gave up after retries)")
        code = getattr(e, "errno", None)
        if code == errno.ENOENT and key is not None:
            return BlobNotFound(f"{key} is missing from repository {where}")
        if code == errno.EACCES:
            return RepositoryDenied(f"permission denied while {doing} in repository {where}")
        hint = " (a full disk or quota on the server?)" if "writ" in doing else ""
        return RepositoryError(f"the SFTP server refused {doing} in repository {where}: "
                               f"{_reason(e)}{hint}")

    @contextmanager
    def _calls(self, doing: str, key: str | None = None) -> Iterator[paramiko.SFTPClient]:
        """A channel of our own, and paramiko's exceptions as RepositoryErrors."""
        with self.connections.channel() as sftp:
            try:
                yield sftp
            except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as e:
                raise self._error(e, doing, sftp, key) from None

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.root}/{key}"

    # -- the Backend verbs
    def check(self, writable: bool) -> None:
        with self._calls("opening the repository") as sftp:
            try:
                st = sftp.stat(self.root)
            except OSError as e:
                if getattr(e, "errno", None) == errno.ENOENT and _usable(sftp):
                    raise RepositoryError(
                        f"repository {self.describe()} does not exist (`volbackup init` makes "
                        f"one; other commands need an existing directory)") from None
                raise
            if not stat.S_ISDIR(st.st_mode or 0):
                raise RepositoryError(f"repository {self.describe()} is not a directory")
            if writable:
                probe = f"{self.root}/{temp_name('volbackup-probe')}"
                try:
                    _open_new(sftp, probe).close()
                    sftp.remove(probe)
                except OSError as e:
                    if not _usable(sftp):
                        raise
                    raise RepositoryError(f"repository {self.describe()} is not writable "
                                          f"({_reason(e)})") from None

    def probe_write(self) -> None:
        self.check(writable=True)

    def create_missing(self) -> bool:
        """The directory itself (DIR_MODE), where its parent exists; never its parents."""
        with self._calls("creating the directory") as sftp:
            try:
                sftp.stat(self.root)
                return False
            except OSError as e:
                if getattr(e, "errno", None) != errno.ENOENT or not _usable(sftp):
                    raise
            try:
                sftp.mkdir(self.root, DIR_MODE)
            except OSError:
                if not _usable(sftp):
                    raise
                return False  # no parent (check() says so), or made meanwhile
            return True

    def remove_if_empty(self) -> None:
        with suppress(RepositoryError), self._calls("removing the directory") as sftp:
            with suppress(OSError):
                sftp.rmdir(self.root)

    def _make_dirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        """`directory` (DIR_MODE) and its missing parents below the root, deepest first:
        one request when only the last is missing. Never the root (a missing repository
        is an error, not something a write makes)."""
        if directory == self.root:
            raise RepositoryError(f"repository {self.describe()} does not exist (or was "
                                  f"removed while writing)")
        try:
            sftp.mkdir(directory, DIR_MODE)
            return
        except OSError as e:
            if not _usable(sftp):
                raise
            missing_parent = getattr(e, "errno", None) == errno.ENOENT
        if missing_parent:
            self._make_dirs(sftp, directory.rpartition("/")[0])
            with suppress(OSError):
                sftp.mkdir(directory, DIR_MODE)
        try:
            st = sftp.lstat(directory)  # made meanwhile by another writer, or in the way
        except OSError:
            if not _usable(sftp):
                raise
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode or 0):
            rel = directory[len(self.root) + 1:]
            raise BlobNotFound(f"{rel} is not a directory in repository {self.describe()} "
                               f"(cannot write below it)")

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        directory, _, name = path.rpartition("/")
        temp = f"{directory}/{temp_name(name)}"
        with self._calls(f"writing {key}", key) as sftp:
            try:
                handle = _open_new(sftp, temp)
            except OSError as e:
                if getattr(e, "errno", None) != errno.ENOENT or not _usable(sftp):
                    raise
                self._make_dirs(sftp, directory)
                handle = _open_new(sftp, temp)
            try:
                handle.set_pipelined(True)
                writer = _Writer(handle, self, key, sftp)
                yield writer  # type: ignore[misc]
                handle.flush()
                self._sync(sftp, handle)
                handle.close()  # waits for every pipelined write's answer
                self._rename(sftp, temp, path)
            except BaseException:
                if _usable(sftp):
                    with suppress(Exception):
                        handle.close()
                    with suppress(Exception):
                        sftp.remove(temp)
                # If the connection is gone (also if it went while the close above flushed),
                # the temp file stays for `cleanup`. Marked closed whatever happened, or
                # paramiko's __del__ would flush the buffer into the dead socket and print
                # "Exception ignored in ..." with a traceback to stderr.
                handle._closed = True
                raise

    def _sync(self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
        """fsync@openssh.com: the bytes on the server's disk before the rename."""
        if not self._fsync:
            return
        try:
            sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
        except OSError as e:
            if not _usable(sftp) or getattr(e, "errno", None) is not None:
                raise
            self._fsync = False  # "Operation unsupported": not an OpenSSH server

    def _rename(self, sftp: paramiko.SFTPClient, temp: str, path: str) -> None:
        """posix-rename@openssh.com replaces the key atomically; a server without it
        gets a plain rename, after removing an old blob (not atomic: docs/storage.md)."""
        try:
            sftp.posix_rename(temp, path)
            return
        except OSError as e:
            if not _usable(sftp) or getattr(e, "errno", None) is not None:
                raise
            if "unsupported" not in str(e).lower():
                raise
        with suppress(OSError):
            sftp.remove(path)
        sftp.rename(temp, path)

    def _regular(self, sftp: paramiko.SFTPClient, key: str) -> paramiko.SFTPAttributes:
        """lstat of a key that must be a regular file (a symlink is never followed)."""
        st = sftp.lstat(self._path(key))
        mode = st.st_mode or 0
        if stat.S_ISDIR(mode):
            raise BlobNotFound(f"{key} is missing from repository {self.describe()}")
        if not stat.S_ISREG(mode):
            raise BadEntry(f"{key} in repository {self.describe()} is {_kind(mode)}, not a "
                           f"regular file (volbackup neither follows nor reads it)")
        return st

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with self._calls(f"reading {key}", key) as sftp:
            size = self._regular(sftp, key).st_size or 0
            with sftp.open(self._path(key), "rb") as handle:
                yield _Reader(handle, size, self, key, sftp)  # type: ignore[misc]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Pipelined reads of the range alone, after an lstat that checks the size (a range
        past the end allocates nothing)."""
        check_range(offset, length)
        path = self._path(key)
        with self._calls(f"reading bytes {offset}-{offset + length - 1} of {key}", key) as sftp:
            size = self._regular(sftp, key).st_size or 0
            if offset + length > size:
                raise beyond_end(key, self.describe(), offset, length, size)
            with sftp.open(path, "rb") as handle:
                data = _read_pipelined(handle, offset, length)
            if len(data) != length:  # cut short since the lstat
                raise beyond_end(key, self.describe(), offset, length, offset + len(data))
            return data

    def stat(self, key: str) -> BlobInfo:
        with self._calls(f"reading {key}", key) as sftp:
            return BlobInfo(key, self._regular(sftp, key).st_size or 0)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Regular files, and (with `error`) every entry that is not one or that cannot be
        listed, in key order (gathered, then sorted: '/' sorts after '-')."""
        start = prefix.rpartition("/")[0]
        found: list = []
        self._scan(start, found, temps=False)
        yield from sorted((i for i in found if i.key.startswith(prefix)), key=lambda i: i.key)

    def _scan(self, start: str, found: list, temps: bool) -> None:
        if start and any(not p or p.startswith(".") for p in start.split("/")):
            return
        with self._calls("listing") as sftp:
            try:
                st = sftp.lstat(f"{self.root}/{start}" if start else self.root)
            except OSError as e:
                if getattr(e, "errno", None) == errno.ENOENT and _usable(sftp):
                    return
                raise
            if start and not stat.S_ISDIR(st.st_mode or 0):
                return
            self._walk(sftp, start, found, temps)

    def _walk(self, sftp: paramiko.SFTPClient, rel: str, found: list, temps: bool) -> None:
        try:
            entries = sftp.listdir_attr(f"{self.root}/{rel}" if rel else self.root)
        except OSError as e:
            if not _usable(sftp):
                raise
            if getattr(e, "errno", None) == errno.ENOENT:
                return  # removed while listing
            if not temps:
                found.append(BlobInfo(f"{rel}/", 0, f"cannot list {rel or '.'}/ in repository "
                                                    f"{self.describe()}: {_reason(e)}"))
            return
        for entry in entries:
            name = entry.filename
            key = f"{rel}/{name}" if rel else name
            mode = entry.st_mode or 0
            modified = datetime.fromtimestamp(entry.st_mtime or 0, timezone.utc)
            if name.startswith("."):
                if temps and is_temp_name(name) and stat.S_ISREG(mode):
                    pid, where = temp_owner(name)
                    found.append(TempFile(key, pid, modified, entry.st_size or 0, where))
                continue
            if stat.S_ISDIR(mode):
                self._walk(sftp, key, found, temps)
            elif stat.S_ISREG(mode):
                if not temps:
                    found.append(BlobInfo(key, entry.st_size or 0, modified=modified))
            elif not temps:
                found.append(BlobInfo(key, 0, f"{key} in repository {self.describe()} is "
                                              f"{_kind(mode)}, not a regular file (volbackup "
                                              f"neither follows nor reads it)"))

    def delete(self, key: str) -> None:
        with self._calls(f"deleting {key}") as sftp:
            try:
                sftp.remove(self._path(key))
            except OSError as e:
                if getattr(e, "errno", None) != errno.ENOENT or not _usable(sftp):
                    raise

    def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """On DELETERS threads (a channel each): one round trip a key, but not one after
        the other (a prune removes thousands of chunks)."""
        def delete(key: str) -> tuple[str, str] | None:
            try:
                self.delete(key)
            except RepositoryError as e:
                return key, str(e)
            return None

        if len(keys) <= 1:
            return [f for f in map(delete, keys) if f]
        with ThreadPoolExecutor(DELETERS, thread_name_prefix="volbackup-sftp-delete") as pool:
            return [f for f in pool.map(delete, keys) if f]

    # -- capabilities
    def temp_files(self) -> list[TempFile]:
        found: list[TempFile] = []
        self._scan("", found, temps=True)
        return sorted(found, key=lambda t: t.key)

    def remove_temp(self, temp: TempFile) -> None:
        check_temp_key(temp.key)
        with self._calls(f"removing {temp.key}") as sftp:
            try:
                sftp.remove(f"{self.root}/{temp.key}")
            except OSError as e:
                if getattr(e, "errno", None) != errno.ENOENT or not _usable(sftp):
                    raise

    def free_space(self) -> int | None:
        """statvfs@openssh.com on the repository's directory; None without it."""
        if not self._statvfs:
            return None
        with self._calls("measuring free space") as sftp:
            try:
                _, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", self.root)
            except OSError as e:
                if not _usable(sftp) or getattr(e, "errno", None) is not None:
                    raise
                self._statvfs = False
                return None
            _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
            return bavail * frsize

    def foreign_entries(self) -> list[str]:
        with self._calls("listing the directory") as sftp:
            names = sorted(n for n in sftp.listdir(self.root) if not n.startswith("."))
        if "snapshots" in names or "locks" in names or "config" in names:
            return []
        return [n for n in names if n not in _IGNORED_TOP]


class _Writer:
    """The temp file's writer; paramiko's errors as RepositoryErrors naming the key."""

    def __init__(self, handle: paramiko.SFTPFile, backend: SFTPBackend, key: str,
                 sftp: paramiko.SFTPClient):
        self._handle, self._backend, self._key, self._sftp = handle, backend, key, sftp
        self.written = 0

    def write(self, data) -> int:
        try:
            self._handle.write(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._backend._error(e, f"writing {self._key}", self._sftp) from None
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        try:
            self._handle.flush()
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._backend._error(e, f"writing {self._key}", self._sftp) from None


class _Reader:
    """A blob's bytes, fetched READ_WINDOW at a time with pipelined requests (one request
    at a time is a round trip per 32 KiB)."""

    def __init__(self, handle: paramiko.SFTPFile, size: int, backend: SFTPBackend, key: str,
                 sftp: paramiko.SFTPClient):
        self._handle, self._size, self._backend, self._key, self._sftp = \
            handle, size, backend, key, sftp
        self._pos = 0
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        want = self._size - self._pos + len(self._buffer) if size is None or size < 0 else size
        pieces, have = [self._buffer], len(self._buffer)
        while have < want and self._pos < self._size:
            window = min(max(want - have, 1 << 20) if size is not None and size >= 0
                         else READ_WINDOW, READ_WINDOW, self._size - self._pos)
            try:
                data = _read_pipelined(self._handle, self._pos, window)
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise self._backend._error(e, f"reading {self._key}", self._sftp) from None
            if not data:
                break  # cut short since it was opened
            self._pos += len(data)
            pieces.append(data)
            have += len(data)
        joined = b"".join(pieces)
        self._buffer = joined[want:]
        return joined[:want]


def _read_pipelined(handle: paramiko.SFTPFile, offset: int, length: int) -> bytes:
    """`length` bytes from `offset` (fewer at the end of the file), all requests sent before
    the first answer is awaited. Asked for in pieces of one request each: paramiko's readv
    of one large range joins its pieces one by one (quadratic copying)."""
    step = paramiko.SFTPFile.MAX_REQUEST_SIZE
    pieces = [(pos, min(step, offset + length - pos)) for pos in range(offset, offset + length, step)]
    return b"".join(handle.readv(pieces))


def _open_new(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
    """Create `path` (O_EXCL) with FILE_MODE from the start: paramiko's open() sends no
    permissions, so the server's umask (often 0644) would apply until a chmod."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = FILE_MODE
    t, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL,
                           attrs)
    if t != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return paramiko.SFTPFile(sftp, msg.get_binary(), "wb", WRITE_BUFFER)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(e: BaseException) -> str:
    """A short, one-line reason; paramiko's messages hold no secrets, but may be long."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]


def attempts_from_env() -> int:
    return attempts_from(ATTEMPTS_ENV)


def open_url(url: str) -> Backend:
    """`sftp://...` inside a RetryBackend: a dropped connection is tried again."""
    return RetryBackend(SFTPBackend(url), attempts_from_env())

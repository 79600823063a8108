"""SFTP's own details, on a real OpenSSH sshd started for the session (tests/sftp_server.py;
the contract it shares with every backend is in test_contract.py): URLs and the SSH
configuration, host keys (unknown refused unless accepted, changed always refused), keys,
modes, temp files of interrupted writes, free space, and a server that goes away."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.backends.test_contract import Boom, keys
from tests.conftest import run_cli
from volbackup.errors import RepositoryDenied, RepositoryError, RepositoryUnreachable
from volbackup.processes import place
from volbackup.repo.backends import (
    BadEntry,
    BlobNotFound,
    FreeSpace,
    MakesItsPlace,
    RetryBackend,
    TempFiles,
    TransientError,
    UnfinishedUploads,
    open_backend,
)
from volbackup.repo.backends.sftp import ACCEPT_ENV, CONFIG_ENV, SFTPBackend, parse_url, resolve


@pytest.fixture
def backend(sftp_repo):
    backend = SFTPBackend(sftp_repo)
    yield backend
    backend.close()


def _on_server(sftp_server, url: str) -> Path:
    """The directory an sftp:// URL of the test server names (it runs on this machine)."""
    return Path(parse_url(url)[3])


# -- URLs and the SSH configuration

@pytest.mark.parametrize("url, expected", [
    ("sftp://nas/srv/backups", (None, "nas", None, "/srv/backups")),
    ("sftp://backup@nas:2222/srv/backups/", ("backup", "nas", 2222, "/srv/backups")),
    ("sftp://nas/~/backups", (None, "nas", None, "backups")),
    ("sftp://[::1]:22/b", (None, "::1", 22, "/b")),
    ("sftp://us%40er@nas/a%20b", ("us@er", "nas", None, "/a b")),
])
def test_urls(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("sftp://nas", "needs a host and a path"),
    ("sftp://nas/", "needs a host and a path"),
    ("sftp:///srv/b", "needs a host and a path"),
    ("sftp://backup:hunter2@nas/srv", "takes no password"),
    ("sftp://nas:99999/srv", "bad host or port"),
    ("sftp://nas/srv/../etc", "no . or .. parts"),
    ("sftp://nas/srv?x=hunter2", "no query or fragment"),
])
def test_bad_urls_are_refused_without_repeating_them(url, message):
    with pytest.raises(RepositoryError, match=message) as caught:
        open_backend(url)
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)


def test_the_ssh_configuration_fills_in_what_the_url_leaves_out(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text("Host nas\n  HostName 192.0.2.7\n  User backup\n  Port 2200\n"
                      f"  IdentityFile {tmp_path}/key\n  UserKnownHostsFile {tmp_path}/kh\n"
                      "  IdentitiesOnly yes\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.delenv(ACCEPT_ENV, raising=False)
    target = resolve("sftp://nas/srv/b")
    assert (target.hostname, target.user, target.port) == ("192.0.2.7", "backup", 2200)
    assert target.identity_files == (f"{tmp_path}/key",) and target.identities_only
    assert target.known_hosts == (f"{tmp_path}/kh",) and not target.accept_new
    assert target.describe() == "sftp://nas/srv/b"
    url_wins = resolve("sftp://root@nas:22/srv/b")
    assert (url_wins.user, url_wins.port) == ("root", 22)
    assert url_wins.describe() == "sftp://root@nas:22/srv/b"
    monkeypatch.setenv(ACCEPT_ENV, "1")
    assert resolve("sftp://nas/srv/b").accept_new


def test_a_missing_configuration_file_named_explicitly_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nothing"))
    with pytest.raises(RepositoryError, match="does not exist"):
        open_backend("sftp://nas/srv/b")


def test_capabilities(backend):
    assert backend.has(TempFiles) and backend.has(FreeSpace) and backend.has(MakesItsPlace)
    assert not backend.has(UnfinishedUploads)
    assert open_backend(backend.describe()).capabilities == backend.capabilities


# -- host keys and logging in

def _config_with(sftp_server, tmp_path, known_hosts: str, identity: str | None = None) -> str:
    (tmp_path / "known_hosts").write_text(known_hosts)
    text = sftp_server.config.read_text().replace(
        str(sftp_server.root / "known_hosts"), str(tmp_path / "known_hosts"))
    if identity:
        text = text.replace(f"IdentityFile {sftp_server.root}/user", f"IdentityFile {identity}")
    (tmp_path / "config").write_text(text)
    return str(tmp_path / "config")


def test_an_unknown_host_key_is_refused_unless_accepted(sftp_server, sftp_repo, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, _config_with(sftp_server, tmp_path, ""))
    monkeypatch.delenv(ACCEPT_ENV, raising=False)
    with pytest.raises(RepositoryDenied) as caught:
        SFTPBackend(sftp_repo).check(writable=False)
    message = str(caught.value)
    assert f"host key of [127.0.0.1]:{sftp_server.port}" in message and "is unknown" in message
    assert "ssh-ed25519 SHA256:" in message and ACCEPT_ENV in message and "\n" not in message
    assert caught.value.exit_code == 9
    assert (tmp_path / "known_hosts").read_text() == ""

    monkeypatch.setenv(ACCEPT_ENV, "1")
    accepted = SFTPBackend(sftp_repo)
    accepted.check(writable=True)
    accepted.close()
    recorded = (tmp_path / "known_hosts").read_text()
    host_key = (sftp_server.root / "host.pub").read_text().split()[1]
    assert recorded == f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 {host_key}\n"
    monkeypatch.delenv(ACCEPT_ENV)
    again = SFTPBackend(sftp_repo)  # known now: no acceptance needed
    again.check(writable=False)
    again.close()


def test_a_changed_host_key_is_refused_even_when_new_keys_are_accepted(
        sftp_server, sftp_repo, tmp_path, monkeypatch):
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {tmp_path}/other")
    other = (tmp_path / "other.pub").read_text().split()
    monkeypatch.setenv(CONFIG_ENV, _config_with(
        sftp_server, tmp_path, f"[127.0.0.1]:{sftp_server.port} {other[0]} {other[1]}\n"))
    monkeypatch.setenv(ACCEPT_ENV, "1")
    with pytest.raises(RepositoryDenied, match="is not the one in known_hosts .*ssh-keygen -R"):
        SFTPBackend(sftp_repo).check(writable=False)
    assert (tmp_path / "known_hosts").read_text().count("\n") == 1


def test_a_key_the_server_does_not_know_is_denied(sftp_server, sftp_repo, tmp_path, monkeypatch):
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {tmp_path}/stranger")
    monkeypatch.setenv(CONFIG_ENV, _config_with(
        sftp_server, tmp_path, (sftp_server.root / "known_hosts").read_text(),
        identity=f"{tmp_path}/stranger"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(RepositoryDenied, match="accepted none of the 1 SSH key") as caught:
        open_backend(sftp_repo).check(writable=False)
    assert "PRIVATE KEY" not in str(caught.value)


def test_a_key_with_a_passphrase_is_used_through_the_agent(sftp_server, sftp_repo, tmp_path,
                                                           monkeypatch):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "hunter2", "-f",
                    str(tmp_path / "locked")], check=True)
    authorized = sftp_server.root / "authorized_keys"
    before = authorized.read_text()
    authorized.write_text(before + (tmp_path / "locked.pub").read_text())
    monkeypatch.setenv(CONFIG_ENV, _config_with(
        sftp_server, tmp_path, (sftp_server.root / "known_hosts").read_text(),
        identity=f"{tmp_path}/locked"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    agent = None
    try:
        with pytest.raises(RepositoryDenied, match="no SSH key to log in with .*add it to the "
                                                   "agent") as caught:
            SFTPBackend(sftp_repo).check(writable=False)
        assert "hunter2" not in str(caught.value)
        sock = tmp_path / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho hunter2\n")
        askpass.chmod(0o700)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force"}
        subprocess.run(["ssh-add", "-q", str(tmp_path / "locked")], env=env, check=True,
                       stdin=subprocess.DEVNULL)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        backend = SFTPBackend(sftp_repo)  # IdentitiesOnly: the agent's key of that file
        backend.check(writable=True)
        backend.close()
    finally:
        authorized.write_text(before)
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)


def test_the_cli_says_one_line_and_paramiko_prints_nothing(sftp_server, sftp_repo, tmp_path):
    env = {CONFIG_ENV: _config_with(sftp_server, tmp_path, ""), ACCEPT_ENV: ""}
    result = run_cli("list", "-r", sftp_repo, env=env)
    assert result.code == 9, result.stderr
    assert result.stderr.count("\n") == 1 and "is unknown" in result.stderr
    assert "Traceback" not in result.stderr and "paramiko" not in result.stderr


# -- the store

def test_missing_repository_and_create_missing(sftp_server, sftp_env):
    url = sftp_server.url("not-yet")
    backend = SFTPBackend(url)
    try:
        with pytest.raises(RepositoryError, match="does not exist"):
            backend.check(writable=False)
        with pytest.raises(RepositoryError, match="does not exist"):
            backend.write_bytes("config", b"{}")  # a write never makes the repository
        assert backend.create_missing() is True
        assert backend.create_missing() is False
        assert stat.S_IMODE(os.stat(sftp_server.data / "not-yet").st_mode) == 0o700
        backend.check(writable=True)
        backend.remove_if_empty()
        assert not (sftp_server.data / "not-yet").exists()
        deeper = SFTPBackend(sftp_server.url("none/deeper"))
        assert deeper.create_missing() is False  # never its parents
        assert not (sftp_server.data / "none").exists()
        deeper.close()
    finally:
        backend.close()


def test_blobs_and_directories_are_private_whatever_the_umask(backend, sftp_server):
    backend.write_bytes("chunks/ab/cd", b"secret")
    root = _on_server(sftp_server, backend.describe())
    assert stat.S_IMODE(os.stat(root / "chunks/ab/cd").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root / "chunks/ab").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "chunks").st_mode) == 0o700


def test_special_entries_are_reported_not_followed(backend, sftp_server):
    root = _on_server(sftp_server, backend.describe())
    (root / "snapshots").mkdir()
    os.symlink("/etc/passwd", root / "snapshots" / "link.json")
    backend.write_bytes("snapshots/ok.json", b"{}")
    listed = {i.key: i.error for i in backend.list("snapshots/")}
    assert listed["snapshots/ok.json"] is None
    assert "a symlink, not a regular file" in listed["snapshots/link.json"]
    with pytest.raises(BadEntry, match="a symlink"):
        backend.read_bytes("snapshots/link.json")
    with pytest.raises(BadEntry):
        backend.read_range("snapshots/link.json", 0, 1)


def test_a_write_cut_off_leaves_a_temp_file_that_cleanup_finds(backend, sftp_server):
    root = _on_server(sftp_server, backend.describe())
    with pytest.raises((TransientError, RepositoryUnreachable)):
        with backend.open_write("snapshots/v/x.tar.zst") as writer:
            writer.write(b"x" * 300_000)
            writer.flush()
            for transport in list(backend.connections.transports):
                transport.close()  # the connection drops half-way
            writer.write(b"y" * 300_000)
            writer.flush()
    assert keys(backend) == []
    (temp,) = backend.temp_files()
    # what reached the server before the drop: never the bytes written after it
    assert temp.key.startswith("snapshots/v/.x.tar.zst.tmp-") and temp.size <= 300_000
    assert (temp.pid, temp.place) == (os.getpid(), place())
    backend.remove_temp(temp)
    backend.remove_temp(temp)  # gone already: not an error
    assert backend.temp_files() == [] and list(root.joinpath("snapshots/v").iterdir()) == []
    with pytest.raises(ValueError):
        backend.remove_temp(temp.__class__("snapshots/v/real", None, temp.modified, 0))


def test_a_failed_write_leaves_no_temp_file(backend):
    with pytest.raises(Boom):
        with backend.open_write("a/b") as writer:
            writer.write(b"z" * 100_000)
            raise Boom()
    assert backend.temp_files() == [] and keys(backend) == []


def test_free_space_is_the_servers(backend, sftp_server):
    fs = os.statvfs(sftp_server.data)
    free = backend.free_space()
    assert abs(free - fs.f_bavail * fs.f_frsize) < 256 << 20


def test_foreign_entries(backend, sftp_server):
    root = _on_server(sftp_server, backend.describe())
    assert backend.foreign_entries() == []
    (root / "holiday.jpg").write_bytes(b"x")
    assert backend.foreign_entries() == ["holiday.jpg"]
    backend.write_bytes("config", b"{}")
    assert backend.foreign_entries() == []


def test_many_threads_share_few_connections(backend):
    data = {f"chunks/{i % 7:02x}/{i:04x}": os.urandom(1000 + i) for i in range(200)}
    seen = set()
    lock = threading.Lock()

    def write_then_read(key):
        backend.write_bytes(key, data[key])
        with lock:
            seen.update(backend.connections.transports)
        return backend.read_bytes(key) == data[key] and \
            backend.read_range(key, 10, 100) == data[key][10:110]

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(write_then_read, data))
    assert 1 <= len(seen) <= 2  # 8 channels a connection
    assert sorted(keys(backend, "chunks/")) == sorted(data)


# -- a server that goes away

def test_a_dropped_server_is_transient_and_the_next_call_reconnects(backend, sftp_server):
    backend.write_bytes("a", b"1")
    sftp_server.stop()
    try:
        with pytest.raises(TransientError) as caught:
            backend.stat("a")
        assert "\n" not in str(caught.value) and caught.value.exit_code == 10
    finally:
        sftp_server.start()
    assert backend.stat("a").size == 1


def test_retry_backend_rides_out_a_restart(sftp_server, sftp_repo):
    inner = SFTPBackend(sftp_repo)
    restarts = []

    def sleep(seconds):
        restarts.append(seconds)
        sftp_server.start()

    retrying = RetryBackend(inner, attempts=3, backoff=lambda n: 0.0, sleep=sleep)
    retrying.write_bytes("k", b"before")
    sftp_server.stop()
    try:
        assert retrying.read_bytes("k") == b"before"
    finally:
        if sftp_server.process is None:
            sftp_server.start()
        inner.close()
    assert restarts == [0.0]


def test_missing_blobs_and_keys_below_blobs(backend):
    backend.write_bytes("a", b"1")
    for key in ("b", "a/b", "x/y/z"):
        with pytest.raises(BlobNotFound):
            backend.stat(key)


def test_a_server_that_stops_answering_is_a_timeout_not_a_hang(backend, sftp_server,
                                                               monkeypatch):
    import signal

    from tests.sftp_server import _descendants
    from volbackup.repo.backends import sftp

    monkeypatch.setattr(sftp, "IO_TIMEOUT", 1)
    backend.write_bytes("a", b"1")  # a channel made with the 1 s timeout, now idle
    sessions = _descendants(sftp_server.process.pid)
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)  # alive, connected, silent
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="broke while reading a"):
            backend.stat("a")
    finally:
        for pid in sessions:
            os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - started < 30
    assert backend.stat("a").size == 1  # a new channel (the silent one was dropped)


def test_a_server_that_does_not_speak_ssh_is_one_line_and_no_log(tmp_path):
    """paramiko's transport thread logs a traceback at ERROR for a bad banner: never shown."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def answer_http():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    (tmp_path / "config").write_text("")
    port = listener.getsockname()[1]
    try:
        result = run_cli("list", "-r", f"sftp://127.0.0.1:{port}/srv/x",
                         env={CONFIG_ENV: str(tmp_path / "config"),
                              "VOLBACKUP_SFTP_ATTEMPTS": "1"})
    finally:
        listener.close()
    assert result.code == 10
    assert result.stderr.count("\n") == 1 and "SSH connection" in result.stderr
    assert "Traceback" not in result.stderr and "paramiko" not in result.stderr

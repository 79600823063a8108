"""Real servers for the WebDAV, Azure Blob and Swift backends (repo/backends/opendal.py).

- WebDAV: Apache httpd with mod_dav from Debian (`apache2`), run in the foreground with a
  config file of our own in a temp dir, on a free port of 127.0.0.1; Basic auth.
- Azure: Azurite (npm `azurite`, `azurite-blob`), always with --disableTelemetry, its data in
  a temp dir, on a free port of 127.0.0.1; the well-known development account.
- Swift: Ceph RGW's Swift API, on the RGW of tests/rgw_s3.py, as the Swift subuser that
  tests/ceph_rgw.sh makes (VOLBACKUP_RGW_SWIFT_USER, VOLBACKUP_RGW_SWIFT_KEY).

Each test process starts its own Apache once (a session fixture) and stops it at the end;
Azurite, slow to start, is one for all the workers of a parallel run (tests/shared_services.py),
stopped by the controller. A missing program is a skip, unless VOLBACKUP_REQUIRE_ENGINE=1 or CI is set: there
it fails (CI must never skip a real store). `<service>_repo` gives a fresh, empty repository
URL and points this process's environment at the server for the duration of one test.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVERS, free_port, pump
from tests.shared_services import shared_dir, shared_service

APACHE = "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
SWIFT_DEFAULTS = ("vbtest:swift", "vbtest-rgw-swift-key")   # tests/ceph_rgw.sh's
WEBDAV_USER, WEBDAV_PASSWORD = "vbtest", f"dav-{secrets.token_hex(8)}"
OPENDAL_ENV = ("VOLBACKUP_WEBDAV_USER", "VOLBACKUP_WEBDAV_PASSWORD", "VOLBACKUP_WEBDAV_TOKEN",
               "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_SAS_TOKEN", "OS_STORAGE_URL", "OS_AUTH_TOKEN", "ST_AUTH",
               "ST_USER", "ST_KEY")


def missing(why: str):
    if REQUIRE_SERVERS:
        pytest.fail(f"{why}; required here (VOLBACKUP_REQUIRE_ENGINE=1 or CI)")
    pytest.skip(why)


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path,
                  timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    stop(proc)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} in {timeout:.0f}s: "
                f"{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server we started (by its pid), SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# -- WebDAV: Apache httpd + mod_dav

APACHE_CONF = """\
ServerRoot {dir}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {dir}/run/httpd.pid
DefaultRuntimeDir {dir}/run
ErrorLog {dir}/error.log
LogLevel warn
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authn_file_module {modules}/mod_authn_file.so
LoadModule auth_basic_module {modules}/mod_auth_basic.so
LoadModule dav_module {modules}/mod_dav.so
LoadModule dav_fs_module {modules}/mod_dav_fs.so
{user}
DocumentRoot {dir}/data
DavLockDB {dir}/lock/DavLock
LimitRequestBody 0
Timeout 120
<Directory {dir}/data>
  Dav On
  AuthType Basic
  AuthName "volbackup tests"
  AuthUserFile {dir}/htpasswd
  Require valid-user
</Directory>
"""


def start_apache(directory: Path | None = None, port: int | None = None) -> dict:
    """Apache on `port` (a free one) serving `directory`/data (a new temp dir); started
    again on the same ones, it serves what it held before it was stopped."""
    if not (os.access(APACHE, os.X_OK) and (APACHE_MODULES / "mod_dav_fs.so").exists()):
        missing("no Apache httpd with mod_dav (apt-get install apache2)")
    if directory is not None:
        return _run_apache(directory, port)
    directory = Path(tempfile.mkdtemp(prefix="vbtest-webdav-"))
    directory.chmod(0o755)   # Apache's children run as www-data when we are root
    for name in ("data", "lock", "run"):
        (directory / name).mkdir()
    digest = base64.b64encode(hashlib.sha1(WEBDAV_PASSWORD.encode()).digest()).decode()
    (directory / "htpasswd").write_text(f"{WEBDAV_USER}:{{SHA}}{digest}\n")
    user = ""
    if os.geteuid() == 0:
        user = "User www-data\nGroup www-data"
        for name in ("data", "lock"):
            shutil.chown(directory / name, "www-data", "www-data")
    conf = directory / "httpd.conf"
    conf.write_text(APACHE_CONF.format(dir=directory, port="{port}", modules=APACHE_MODULES,
                                       user=user))
    return _run_apache(directory, port or free_port())


def _run_apache(directory: Path, port: int) -> dict:
    conf = directory / f"httpd-{port}.conf"
    conf.write_text((directory / "httpd.conf").read_text().replace("{port}", str(port)))
    log = directory / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([APACHE, "-f", str(conf), "-DFOREGROUND"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    wait_for_port(port, proc, "Apache httpd", log)
    return {"proc": proc, "dir": directory, "port": port}


@pytest.fixture(scope="session")
def webdav_server():
    """Apache httpd serving WebDAV at http://127.0.0.1:PORT/ (Basic auth)."""
    server = start_apache()
    try:
        yield server
    finally:
        stop(server["proc"])
        shutil.rmtree(server["dir"], ignore_errors=True)


@pytest.fixture
def webdav_env(webdav_server) -> dict:
    return {"VOLBACKUP_WEBDAV_USER": WEBDAV_USER, "VOLBACKUP_WEBDAV_PASSWORD": WEBDAV_PASSWORD}


@pytest.fixture
def webdav_repo(webdav_server, webdav_env, monkeypatch) -> str:
    """A fresh directory on the WebDAV server, made here (as `init` would), removed after."""
    name = f"vbtest-{secrets.token_hex(4)}"
    data = webdav_server["dir"] / "data" / name
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "www-data", "www-data")
    _point_env(monkeypatch, webdav_env)
    try:
        yield f"webdav://127.0.0.1:{webdav_server['port']}/{name}"
    finally:
        shutil.rmtree(data, ignore_errors=True)


# -- Azure: Azurite

def start_azurite() -> dict:
    program = shutil.which("azurite-blob")
    if not program:
        missing("no Azurite (npm install -g azurite)")
    directory = Path(tempfile.mkdtemp(prefix="vbtest-azurite-"))
    port = free_port()
    log = directory / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--disableTelemetry",
             "--skipApiVersionCheck", "--silent", "--location", str(directory / "data")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
            start_new_session=True)
    wait_for_port(port, proc, "Azurite", log)
    return {"proc": proc, "dir": directory,
            "endpoint": f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"}


def azure_connection_string(endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};")


def _azurite_for_workers() -> dict:
    """One Azurite for every worker of a parallel run (node starts slowly); the controller
    stops it by its pid (tests/shared_services.py)."""
    server = start_azurite()
    return {"endpoint": server["endpoint"], "pid": server["proc"].pid, "dir": str(server["dir"])}


@pytest.fixture(scope="session")
def azurite():
    if shared_dir():
        yield shared_service("azurite", _azurite_for_workers)
        return
    server = start_azurite()
    try:
        yield server
    finally:
        stop(server["proc"])
        shutil.rmtree(server["dir"], ignore_errors=True)


def azure_request(endpoint: str, method: str, container: str) -> int:
    """A container request signed with the account key (SharedKey, path-style URLs)."""
    headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
    canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    signed = f"{method}\n" + "\n" * 11 + canonical + resource
    mac = hmac.new(base64.b64decode(AZURITE_KEY), signed.encode(), hashlib.sha256).digest()
    headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(mac).decode()}"
    request = urllib.request.Request(f"{endpoint}/{container}?restype=container",
                                     method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


@pytest.fixture
def azure_env(azurite) -> dict:
    return {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string(azurite["endpoint"])}


@pytest.fixture
def azure_container(azurite) -> str:
    """A fresh container on Azurite, deleted (with its blobs) after the test."""
    name = f"vbtest-{secrets.token_hex(4)}"
    assert azure_request(azurite["endpoint"], "PUT", name) == 201
    try:
        yield name
    finally:
        azure_request(azurite["endpoint"], "DELETE", name)


@pytest.fixture
def azure_repo(azure_container, azure_env, monkeypatch) -> str:
    _point_env(monkeypatch, azure_env)
    return f"azure://{azure_container}/repo"


# -- Swift: Ceph RGW's Swift API

@pytest.fixture(scope="session")
def swift_env(rgw_endpoint) -> dict:
    user = os.environ.get("VOLBACKUP_RGW_SWIFT_USER", SWIFT_DEFAULTS[0])
    key = os.environ.get("VOLBACKUP_RGW_SWIFT_KEY", SWIFT_DEFAULTS[1])
    return {"ST_AUTH": f"{rgw_endpoint}/auth/1.0", "ST_USER": user, "ST_KEY": key}


def swift_token(env: dict) -> tuple[str, str]:
    request = urllib.request.Request(env["ST_AUTH"], headers={
        "X-Auth-User": env["ST_USER"], "X-Auth-Key": env["ST_KEY"]})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.headers["X-Storage-Url"], answer.headers["X-Auth-Token"]
    except urllib.error.HTTPError as e:
        pytest.fail(f"RGW refused the Swift user {env['ST_USER']} (HTTP {e.code}): "
                    f"tests/ceph_rgw.sh makes it; for an RGW started otherwise, make it with "
                    f"radosgw-admin subuser create --uid vbtest --subuser {env['ST_USER']} "
                    f"--access full --key-type swift --secret ...")


def swift_call(storage: str, token: str, method: str, path: str) -> bytes:
    request = urllib.request.Request(f"{storage}/{path}", method=method,
                                     headers={"X-Auth-Token": token})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


@pytest.fixture
def swift_container(swift_env) -> str:
    """A fresh container on RGW's Swift API, emptied and deleted after the test."""
    storage, token = swift_token(swift_env)
    name = f"vbtest-{secrets.token_hex(4)}"
    swift_call(storage, token, "PUT", name)
    try:
        yield name
    finally:
        while True:
            names = json.loads(swift_call(storage, token, "GET", f"{name}?format=json") or b"[]")
            if not names:
                break
            for obj in names:
                try:
                    swift_call(storage, token, "DELETE",
                               f"{name}/{urllib.request.quote(obj['name'])}")
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
        swift_call(storage, token, "DELETE", name)


@pytest.fixture
def swift_repo(swift_container, swift_env, monkeypatch) -> str:
    _point_env(monkeypatch, swift_env)
    return f"swift://{swift_container}/repo"


def _point_env(monkeypatch, env: dict) -> None:
    for name in OPENDAL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VOLBACKUP_STORE_ATTEMPTS", "3")


@pytest.fixture(params=["webdav", "azure", "swift"])
def opendal_repo(request) -> str:
    """A fresh repository URL on each of the three servers in turn."""
    return request.getfixturevalue(f"{request.param}_repo")


class TcpRelay:
    """A TCP relay on a free port of 127.0.0.1 to a server: `cut()` makes the server go
    away (connections reset, the port refuses), `restore()` brings it back on the same port.
    A shared server (RGW, the run's Azurite) can so vanish for one test alone."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return   # cut
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        if self.listener is not None:
            # shutdown first: a close alone leaves the socket listening while the accept
            # thread is blocked in accept(), and new connections would still be relayed
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # shutdown wakes the relay's threads blocked in recv (a close alone would
                # wait for them, leaving the client's connection open and silent)
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()   # a reset, as from a server that died
            except OSError:
                pass

"""Integration fixtures: a real Docker engine, and resources that clean themselves up.

Every container and volume a test makes is named with the session's prefix
(`vbtest-<random>-`) and labelled `io.volbackup.test`; everything with that prefix is
removed after each test, also when it fails, so the suite can run twice in a row.
"""

from __future__ import annotations

import os
import re
import secrets
import time

import docker
import pytest

from tests.conftest import REQUIRE_ENGINE, run_cli
from tests.integration.images import ensure_busybox
# S3: moto's server on 127.0.0.1, shared with tests/backends
from tests.moto_s3 import S3_ENV, s3_bucket, s3_client, s3_endpoint  # noqa: F401 - fixtures
# WebDAV (Apache httpd), Azure (Azurite) and Swift (RGW) repositories, and opendal_repo: each
from tests.opendal_servers import (  # noqa: F401 - fixtures
    azure_container,
    azure_env,
    azure_repo,
    azurite,
    opendal_repo,
    swift_container,
    swift_env,
    swift_repo,
    webdav_env,
    webdav_repo,
    webdav_server,
)
# S3 on Ceph's RGW (real S3-compatible store), and any_s3_bucket: moto, then RGW
from tests.rgw_s3 import (  # noqa: F401 - fixtures
    any_s3_bucket,
    any_s3_client,
    rgw_bucket,
    rgw_client,
    rgw_endpoint,
    rgw_env,
)
# SFTP: a real OpenSSH sshd on 127.0.0.1 for the session, shared with tests/backends
from tests.sftp_server import sftp_env, sftp_repo, sftp_server  # noqa: F401 - fixtures
from volbackup.docker.engine import Engine
from volbackup.docker.helpers import HELPER_IMAGE, HELPER_LABEL, PID_LABEL

TEST_LABEL = "io.volbackup.test"
PREFIX = f"vbtest-{secrets.token_hex(3)}-"

pytestmark = pytest.mark.integration


FOREIGN_PREFIX = os.environ.get("VOLBACKUP_FOREIGN_PREFIX")  # set by .ci/run


def _foreign_state(c) -> dict:
    """Name -> state of the containers and volumes that another party made (see .ci/run)."""
    state = {f"container {name}": x["State"] for x in c.api.containers(all=True)
             if (name := x["Names"][0].lstrip("/")).startswith(FOREIGN_PREFIX)}
    state.update({f"volume {v.name}": "present" for v in c.volumes.list()
                  if v.name.startswith(FOREIGN_PREFIX)})
    return state


@pytest.fixture(scope="session", autouse=True)
def foreign_resources_untouched(request):
    """Where .ci/run left containers and a volume of its own on the engine, the suite must
    end with them exactly as they were: nothing counted, stopped or removed by volbackup."""
    if not FOREIGN_PREFIX:
        yield
        return
    c = request.getfixturevalue("client")
    before = _foreign_state(c)
    assert before, f"no containers or volumes named {FOREIGN_PREFIX}* on the engine"
    yield
    assert _foreign_state(c) == before


@pytest.fixture(scope="session")
def client():
    try:
        c = docker.from_env()
        c.ping()
    except Exception as e:  # any reason the engine is not there
        if REQUIRE_ENGINE:
            pytest.fail(f"a Docker engine is required (VOLBACKUP_REQUIRE_ENGINE=1) but "
                        f"unreachable: {e}")
        pytest.skip(f"no Docker engine: {e}")
    Engine(c, "test").ensure_helper_image()
    yield c
    _remove_prefixed(c)


def _remove_prefixed(c, prefix: str = PREFIX) -> None:
    """Remove containers, then volumes, whose names start with `prefix`.

    Low-level listing (no inspect per container), and a container already gone is fine:
    another test session may share the engine.
    """
    for container in c.api.containers(all=True, filters={"label": TEST_LABEL}):
        if container["Names"][0].lstrip("/").startswith(prefix):
            try:
                c.api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass
    for volume in c.volumes.list():
        if volume.name.startswith(prefix):
            try:
                volume.remove(force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture
def names(client):
    """Makes unique names; removes what they named (volumes, containers) after the test."""
    made = []

    def make(stem: str) -> str:
        name = f"{PREFIX}{stem}-{secrets.token_hex(2)}"
        made.append(name)
        return name

    yield make
    for name in made:
        _remove_prefixed(client, name)


@pytest.fixture
def make_volume(client, names):
    def make(stem: str = "vol", labels: dict | None = None, driver_opts: dict | None = None):
        return client.volumes.create(names(stem), labels=labels, driver_opts=driver_opts)

    return make


@pytest.fixture
def mountpoint(client):
    def get(volume_name: str) -> str:
        return client.api.inspect_volume(volume_name)["Mountpoint"]

    return get


@pytest.fixture
def make_container(client, names):
    """A created (never started) container from the helper image, with the test label."""

    def make(stem: str = "ctr", **host_config):
        created = client.api.create_container(
            HELPER_IMAGE, command=["test"], name=names(stem), labels={TEST_LABEL: "1"},
            host_config=client.api.create_host_config(**host_config))
        return client.containers.get(created["Id"])

    return make


@pytest.fixture
def run_container(client, names):
    """Starts a busybox container (sleeping) with `volume` at /data; removed after the test."""
    image = ensure_busybox(client)

    def run(stem: str, volume: str, command: str = "sleep 3600 & wait",
            labels: dict | None = None):
        return client.containers.run(
            image, ["sh", "-c", f"trap 'exit 0' TERM; {command}"], name=names(stem),
            detach=True, network_mode="none",
            labels={TEST_LABEL: "1", **(labels or {})},
            volumes={volume: {"bind": "/data", "mode": "rw"}})

    return run


_SESSION_PREFIX = re.compile(r"vbtest-[0-9a-f]{6}-")


def _of_another_session(container: dict) -> bool:
    """A helper that serves only volumes (or names only targets) of another test session:
    another worker of a parallel run, or another run of the suite on this engine. Its tests
    may leave it on purpose (a run killed with SIGKILL) and judge it themselves."""
    names = [container["Names"][0]] + [m.get("Name") or "" for m in container.get("Mounts") or []]
    sessions = {p for name in names for p in _SESSION_PREFIX.findall(name)}
    return bool(sessions) and PREFIX not in sessions


def _left_behind(container: dict) -> bool:
    """A helper of this test process, or of a process that has ended (not of a live run),
    unless it belongs to another test session.
    A claim a test made for a target of another test session is that session's to judge."""
    name, labels = container["Names"][0], container["Labels"]
    if TEST_LABEL in labels and PREFIX not in name:
        return False
    if _of_another_session(container):
        return False
    try:
        pid = int(labels.get(PID_LABEL, ""))
        if pid == os.getpid():
            return True
        os.kill(pid, 0)
        return False
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        return False


ORPHAN_GRACE = 10.0     # seconds another test gets to remove the helper of a run it killed


def _helpers_left(client) -> list[dict]:
    return [c for c in client.api.containers(all=True, filters={"label": HELPER_LABEL})
            if _left_behind(c)]


@pytest.fixture(autouse=True)
def no_helpers_left(client):
    """Every test must end with no helper container left behind."""
    yield
    left = _helpers_left(client)
    if any(c["Labels"].get(PID_LABEL) != str(os.getpid()) for c in left):
        # The helper of a run that ended may be another worker's test's, which killed that
        # run a moment ago and is removing what it left (test_packed_prune, the chunked
        # kill tests): give it the time to, then judge what is still there.
        deadline = time.monotonic() + ORPHAN_GRACE
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = _helpers_left(client)
    blamed = []
    for container in left:
        try:
            client.api.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            # another test worker found the same orphan first: its test takes the blame
            if err.status_code == 409 and "in progress" in str(err):
                continue
            raise
        blamed.append(container["Names"][0])
    assert not blamed, f"helpers left behind: {blamed}"


@pytest.fixture
def engine(client):
    return Engine(client, os.environ.get("DOCKER_HOST", "default"))



# -- repository layouts: suites about behaviour run on each


LAYOUTS = ("archive", "chunked", "packed")


@pytest.fixture(params=LAYOUTS)
def layout(request) -> str:
    """The repository layout of a test's `repo_dir`, where a module asks for both (a test
    about the archive file itself pins it: @pytest.mark.parametrize("layout", ["archive"]))."""
    return request.param


def make_layout(repo: str, layout: str) -> None:
    """Make the empty directory or bucket prefix `repo` a repository of `layout`."""
    if layout in ("chunked", "packed"):
        result = run_cli("init", "-r", repo, "--layout", layout)
        assert result.code == 0, result.stderr

"""The connection to the engine and the one translation of docker-py's errors into ours.

Loaded first by the package (volbackup/docker/__init__.py), so the SDK is imported without
paramiko whichever module of the package asks for it.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from typing import Iterator

from volbackup.errors import EngineError, NotFound
from volbackup.urls import safe_url, scrub

# docker-py imports paramiko (70 ms and 19 MiB, about a fifth of a backup's start-up time
# and peak memory) only to offer ssh:// engines. Keep it out until one is asked for:
# enable_ssh() then loads docker-py's ssh adapter, which imports paramiko.
_PARAMIKO_HELD_BACK = "paramiko" not in sys.modules
if _PARAMIKO_HELD_BACK:
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # "import paramiko" fails
try:
    import docker
    import docker.api.client
    import docker.errors
    import docker.transport
    import docker.types
    import requests
    import urllib3.exceptions
finally:
    if _PARAMIKO_HELD_BACK:
        del sys.modules["paramiko"]

STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def short(err: Exception) -> str:
    """The engine's own explanation, on one line, with URLs cut to scheme and host (and
    without the Go struct Podman's copier dumps into its archive errors)."""
    text = getattr(err, "explanation", None) or str(err)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = _COPIER_REQUEST.sub("", " ".join(str(text).split()))
    return scrub(text)


# "error during bulk transfer for copier.request{Request:"PUT", ... }: copier: put: ..."
_COPIER_REQUEST = re.compile(r" for copier\.request\{.*\}(?=: copier:)")


@contextmanager
def engine_errors(doing: str, not_found: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions into ours, with one-line messages."""
    try:
        yield
    except docker.errors.NotFound as e:
        raise NotFound(not_found or f"{doing}: {short(e)}") from None
    except docker.errors.APIError as e:
        raise EngineError(f"{doing}: the engine said {short(e)}") from None
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise EngineError(f"{doing}: {short(e)}") from None


def connect(base_url: str | None = None, context: str | None = None,
            timeout: float | None = None) -> tuple[docker.DockerClient, str]:
    """A pinged client of the engine at `base_url`, or of a Docker context, or from the
    environment, and where that is (scheme and host only, for messages)."""
    tls = None
    if context:
        try:
            found = docker.ContextAPI.get_context(context)
        except docker.errors.DockerException as e:
            raise EngineError(f"reading Docker context {context}: {short(e)}") from None
        if found is None:
            raise NotFound(f"no such Docker context: {context}")
        base_url, tls = found.Host, found.TLSConfig
    where = safe_url(base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    if where.startswith("ssh://"):
        enable_ssh()
    try:
        if base_url:
            client = _Client(base_url=base_url, tls=tls or False,
                             use_ssh_client=base_url.startswith("ssh://"),
                             **({"timeout": timeout} if timeout else {}))
        else:
            client = _Client.from_env(**({"timeout": timeout} if timeout else {}))
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as e:
        reason = short(e)
        reason = reason if len(reason) < 160 else reason[:157] + "..."
        raise EngineError(f"cannot reach the Docker engine at {where} ({reason})") from None
    return client, where


class _APIClient(docker.APIClient):
    """Keeps the engine's answer to GET /version (`version(api_version=False)`): docker-py
    asks for it to choose the API version, Engine.product asks again. Podman runs conmon
    and runc to answer, about a second each time."""

    _version_answer: dict | None = None

    def version(self, api_version: bool = True) -> dict:
        if api_version:
            return super().version(api_version)
        if self._version_answer is None:
            self._version_answer = super().version(api_version)
        return self._version_answer


class _Client(docker.DockerClient):
    """docker.DockerClient over _APIClient (its from_env builds this class too)."""

    def __init__(self, *args, **kwargs):
        self.api = _APIClient(*args, **kwargs)


def enable_ssh() -> None:
    """Load docker-py's ssh:// adapter (and paramiko), held back at import (see the top)."""
    if hasattr(docker.api.client, "SSHHTTPAdapter"):
        return
    try:
        from docker.transport.sshconn import SSHHTTPAdapter
    except ImportError as e:
        raise EngineError(f"ssh:// engines need paramiko ({e}): pip install 'docker[ssh]'") from None
    docker.transport.SSHHTTPAdapter = SSHHTTPAdapter
    docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter

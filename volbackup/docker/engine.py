"""The Engine facade: the one object ops code holds for everything that talks to the Docker
engine. Its calls live in the modules of this package, by what they touch (volumes.py,
containers.py, helpers.py, hostpaths.py); connecting and error translation in client.py.
"""

from __future__ import annotations

from functools import cached_property

import docker

from volbackup.docker import client as _client
from volbackup.docker.containers import ContainerCalls
from volbackup.docker.client import engine_errors
from volbackup.docker.facts import PODMAN, FactCalls, engine_product
from volbackup.docker.helpers import HelperCalls
from volbackup.docker.hostpaths import HostPaths
from volbackup.docker.volumes import VolumeCalls


class Engine(VolumeCalls, ContainerCalls, HelperCalls, HostPaths, FactCalls):
    """One engine, as `Engine.connect` reaches it. The base classes only group its calls."""

    def __init__(self, client: docker.DockerClient, where: str):
        self.client = client
        self.api = client.api
        self.where = where

    @classmethod
    def connect(cls, base_url: str | None = None, context: str | None = None,
                timeout: float | None = None) -> "Engine":
        """The engine at `base_url`, or of a Docker context, or from the environment;
        `timeout` (seconds) bounds each request (default: docker-py's 60)."""
        return cls(*_client.connect(base_url, context, timeout))

    @property
    def is_remote(self) -> bool:
        """True when the engine is reached over a network (tcp, ssh), not a local socket."""
        return not self.where.startswith(("unix://", "npipe://", "/"))

    @cached_property
    def product(self) -> str:
        """"Docker" or "Podman" (facts.engine_product), asked once."""
        with engine_errors("asking the engine for its version"):
            return engine_product(self.api.version(api_version=False))

    @property
    def is_podman(self) -> bool:
        """Podman's archive endpoints differ from dockerd's (docs/design.md, "Podman"): its
        reads give every entry the helper's owner, its writes apply the root entry."""
        return self.product == PODMAN

"""What `volbackup doctor` asks of the engine: version, isolation, data root, volume sizes."""

from __future__ import annotations

from dataclasses import dataclass

import docker

from volbackup.docker.client import engine_errors


@dataclass(frozen=True)
class EngineFacts:
    product: str            # "Docker" or "Podman" (engine_product)
    version: str
    api_version: str
    rootless: bool          # the daemon runs as an unprivileged user
    userns_remap: bool      # file ids inside volumes are shifted on the host
    data_root: str          # DockerRootDir: volumes live under DATA_ROOT/volumes (local driver)


PODMAN, DOCKER = "Podman", "Docker"


def engine_product(version: dict) -> str:
    """Which engine serves the API, from its answer to GET /version: Podman names itself
    in the components ("Podman Engine") and in some versions the platform; anything else
    is taken for dockerd."""
    names = [str((c or {}).get("Name") or "") for c in version.get("Components") or []]
    names.append(str((version.get("Platform") or {}).get("Name") or ""))
    return PODMAN if any(name.startswith("Podman") for name in names) else DOCKER


class FactCalls:
    """Part of Engine (volbackup/docker/engine.py): needs its `api`."""

    api: docker.APIClient

    def facts(self) -> EngineFacts:
        with engine_errors("asking the engine for its version and options"):
            info, version = self.api.info(), self.api.version(api_version=False)
        options = [str(o) for o in info.get("SecurityOptions") or []]
        return EngineFacts(engine_product(version), str(version.get("Version") or "?"),
                           str(version.get("ApiVersion") or "?"),
                           # Podman says so in its own field; dockerd in its security options
                           info.get("Rootless") is True or any("rootless" in o for o in options),
                           any("userns" in o for o in options),
                           str(info.get("DockerRootDir") or ""))

    def volume_sizes(self) -> dict[str, int | None]:
        """Bytes used by each volume, as `docker system df -v` reports them (None where the
        engine does not know: a driver other than local)."""
        with engine_errors("asking the engine for volume sizes"):
            found = self.api.df().get("Volumes") or []
        sizes = {}
        for volume in found:
            size = (volume.get("UsageData") or {}).get("Size")
            sizes[str(volume.get("Name"))] = size if isinstance(size, int) and size >= 0 else None
        return sizes

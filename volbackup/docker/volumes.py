"""Volumes: inspect, create, remove, list; and the volume name a bind mount restores as."""

from __future__ import annotations

import re
from dataclasses import dataclass

import docker

from volbackup.docker.client import engine_errors


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str
    options: dict[str, str]
    labels: dict[str, str]
    mountpoint: str


class VolumeCalls:
    """Part of Engine (volbackup/docker/engine.py): needs its `api`."""

    api: docker.APIClient

    def volume(self, name: str) -> VolumeInfo:
        with engine_errors(f"inspecting volume {name}", f"no such volume: {name}"):
            attrs = self.api.inspect_volume(name)
        return VolumeInfo(attrs["Name"], attrs.get("Driver") or "local",
                          dict(attrs.get("Options") or {}), dict(attrs.get("Labels") or {}),
                          attrs.get("Mountpoint") or "")

    def create_volume(self, name: str, driver: str, options: dict, labels: dict) -> VolumeInfo:
        with engine_errors(f"creating volume {name}"):
            self.api.create_volume(name, driver=driver, driver_opts=options or None,
                                   labels=labels or None)
        return self.volume(name)

    def remove_volume(self, name: str) -> None:
        with engine_errors(f"removing volume {name}"):
            self.api.remove_volume(name)

    def volumes(self) -> list[VolumeInfo]:
        """Every volume of the engine."""
        with engine_errors("listing volumes"):
            found = self.api.volumes().get("Volumes") or []
        return sorted((VolumeInfo(v["Name"], v.get("Driver") or "local",
                                  dict(v.get("Options") or {}), dict(v.get("Labels") or {}),
                                  v.get("Mountpoint") or "") for v in found),
                      key=lambda v: v.name)


def bind_volume_name(container: str, destination: str) -> str:
    """The volume name a bind mount's snapshot restores as: `<container>-<path>`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", destination.strip("/")).strip("-.") or "root"
    return f"{container}-{slug}"

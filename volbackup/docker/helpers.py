"""Helper containers, which move the data.

Data moves through the engine's archive endpoints (GET/PUT /containers/{id}/archive)
on a *helper*: a container that is created from volbackup's own image (imported from
an empty tar, so no registry is needed) and never started. Helpers carry labels so a
helper left behind by a killed run is recognised and removed by the next run. Claims on
target volumes are helpers too (of kind "claim"), swept the same way.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import time
import uuid
import zlib
from contextlib import contextmanager
from typing import Iterable, Iterator

import docker
import docker.errors
import requests
from docker.types import Mount

from volbackup.docker.client import STREAM_ERRORS, engine_errors, short
from volbackup.errors import OwnersLost, StreamBroken, TargetBusy
from volbackup.processes import pid_namespace, run_is_over
from volbackup.signals import deferred

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
# The mtimes the engine's extractor sets (moby pkg/archive boundTime): from 1970-01-01 to
# 2262-04-11 (nanoseconds in an int64); it dates anything outside them 1970-01-01.
EXTRACTOR_TIMES = (0, ((1 << 63) - 1) / 1e9)


class HelperCalls:
    """Part of Engine (volbackup/docker/engine.py): needs its `api` and `is_podman`."""

    api: docker.APIClient
    is_podman: bool

    @property
    def archive_keeps_owners(self) -> bool:
        """Whether GET /containers/{id}/archive gives each entry its own owner and the
        directory's root entry: dockerd does; Podman chowns every entry to the helper's
        user whatever the request says (libpod copyToArchive) and starts below the root."""
        return not self.is_podman

    @property
    def extractor_skips_root(self) -> bool:
        """Whether PUT /containers/{id}/archive at /data ignores the tar's `./` (and chowns
        hard links, clearing setuid bits): dockerd does, so the root and such links are
        given again at `/` (TarWalker.metadata_tar). Podman applies `./` and keeps the
        bits; and its `/` is the helper's own root file system, not the volume's."""
        return not self.is_podman

    def prepare_helpers(self) -> None:
        """What every run that uses helpers does first: clear leftovers, have the image."""
        self.remove_stale_helpers()
        self.ensure_helper_image()

    def ensure_helper_image(self) -> None:
        """Import volbackup's helper image from an empty tar unless it is already there."""
        with engine_errors("preparing the helper image"):
            try:
                config = self.api.inspect_image(HELPER_IMAGE).get("Config") or {}
                labels = config.get("Labels") or {}
                if labels.get(IMAGE_LABEL) == "helper":
                    return
            except docker.errors.ImageNotFound:
                pass
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w").close()
            # The tag inside `repo`, not in the `tag` parameter: Podman ignores that one
            # (and tags `:latest`, so every run would import the image again); both
            # engines read `repo=NAME:TAG`.
            self.api.import_image_from_data(empty.getvalue(), repository=HELPER_IMAGE,
                                            changes=[f"LABEL {IMAGE_LABEL}=helper"])

    def helpers_left(self) -> list[tuple[str, bool]]:
        """(name, stale) of every helper and claim on the engine: stale ones belong to a
        run that is over (the next run removes them); the others to a run still going."""
        with engine_errors("looking for leftover helpers"):
            helpers = self.api.containers(all=True, filters={"label": HELPER_LABEL})
        return [(helper["Names"][0].lstrip("/"),
                 _helper_is_stale(helper.get("Labels") or {}, helper.get("Created", 0)))
                for helper in helpers]

    def remove_stale_helpers(self) -> list[str]:
        """Remove helpers whose run is over: its process is gone, or it is a day old."""
        removed = []
        with engine_errors("looking for leftover helpers"):
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
            with engine_errors("creating a helper container"), deferred():
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
                with engine_errors(f"claiming volume {volume}"):
                    try:
                        created = self.api.create_container(
                            HELPER_IMAGE, command=["volbackup-claim"], name=name,
                            labels=labels, network_disabled=True,
                            host_config=self.api.create_host_config(network_mode="none"))
                    except docker.errors.APIError as e:
                        if not _name_taken(e):
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
            with engine_errors(f"inspecting the claim on volume {volume}"):
                found = self.api.containers(all=True,
                                            filters={"name": f"^/?{re.escape(name)}$"})
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


def _name_taken(error: docker.errors.APIError) -> bool:
    """A create refused because the name is taken: dockerd says 409 Conflict, Podman 500
    with "that name is already in use" (libpod's ErrCtrExists)."""
    return error.status_code == 409 or "name is already in use" in short(error)


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
    def __init__(self, engine: HelperCalls, container_id: str):
        self.engine = engine
        self.id = container_id

    @contextmanager
    def export(self, path: str, gzip_wire: bool = False,
               owners: bool = True) -> Iterator[Iterator[bytes]]:
        """The tar stream of `path` (`/data/.` gives members named `./...`).

        With `gzip_wire`, the engine compresses what it sends (worth it over a slow
        network, a loss on a local socket). The response is closed on the way out: the
        engine will not remove a helper while one of its archive streams is open.
        `owners=False`: the caller does not need the entries' owners (Podman's stream
        gives every entry the helper's; with `owners` it is refused, OwnersLost).
        """
        if owners and not self.engine.archive_keeps_owners:
            raise OwnersLost(
                f"reading {path}: Podman's archive endpoint gives every file the helper's "
                f"owner (root) and leaves out the volume root, so volbackup does not read "
                f"volumes through it; run volbackup as root on the Podman host (the direct "
                f"path reads the volume with GNU tar), or for rootless Podman as its user "
                f"inside `podman unshare`")
        api = self.engine.api
        with engine_errors(f"reading {path}"):
            response = api._get(api._url("/containers/{0}/archive", self.id),
                                params={"path": path}, stream=True,
                                headers={"Accept-Encoding": "gzip" if gzip_wire else "identity"})
        try:
            with engine_errors(f"reading {path}"):
                api._raise_for_status(response)
            yield _read_response(response, path)
        finally:
            response.close()

    def import_(self, path: str, chunks: Iterable[bytes] | bytes, gzip_wire: bool = False) -> None:
        """Extract a tar stream at `path` inside the helper (gzip-compressed on the wire
        if asked: the engine accepts gzip-compressed tar)."""
        if gzip_wire:
            chunks = _gzip(chunks if not isinstance(chunks, bytes) else [chunks])
        with engine_errors(f"writing into {path}"):
            self.engine.api.put_archive(self.id, path, chunks)

    def is_empty(self, path: str = DATA_PATH) -> bool:
        """True when the directory holds nothing but itself (reads two headers at most)."""
        with self.export(path.rstrip("/") + "/.", owners=False) as chunks:
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
    except STREAM_ERRORS as e:
        raise StreamBroken(f"the engine's stream of {path} broke off ({short(e)})") from None


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

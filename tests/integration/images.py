"""A runnable test image without a registry: Debian's busybox-static, imported.

Tests that need a container that RUNS (sleeps, writes into a volume, answers a hook)
use it. It is built once per engine and kept under its tag.
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import tarfile
import tempfile

BUSYBOX_IMAGE = "volbackup-test-busybox:1"
APPLETS = ("sh", "sleep", "echo", "cat", "dd", "head", "rm", "true", "false", "tar", "ls",
           "sync", "date", "printf", "seq")


def ensure_busybox(client) -> str:
    """The image tag; imports the image into `client`'s engine first if it is missing."""
    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except Exception:  # docker.errors.ImageNotFound
        pass
    with tempfile.TemporaryDirectory(prefix="vbtest-image-") as tmp:
        deb = _download(tmp)
        root = os.path.join(tmp, "root")
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            tar.add(os.path.join(root, "bin", "busybox"), "bin/busybox")
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
            tmpdir = tarfile.TarInfo("tmp")
            tmpdir.type, tmpdir.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(tmpdir)
        # NAME:TAG in `repository`: Podman ignores the `tag` parameter (it tags `:latest`)
        client.api.import_image_from_data(layer.getvalue(), repository=BUSYBOX_IMAGE,
                                          changes=['CMD ["/bin/sh"]'])
    return BUSYBOX_IMAGE


def _download(directory: str) -> str:
    for attempt in range(2):
        done = subprocess.run(["apt-get", "download", "busybox-static"], cwd=directory,
                              capture_output=True, text=True)
        found = glob.glob(os.path.join(directory, "busybox-static_*.deb"))
        if done.returncode == 0 and found:
            return found[0]
        if attempt == 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise RuntimeError(f"apt-get download busybox-static failed: {done.stderr.strip()}")

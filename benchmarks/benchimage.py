"""The runnable busybox image of the benchmark's "usual recipe", built without a registry.

Debian's `busybox-static` package is downloaded with apt, unpacked with `dpkg -x`, given
applet symlinks and imported with `docker import`. Built once, then reused by its tag.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile

IMAGE = "volbackup-bench-busybox:1"
APPLETS = ("sh", "tar", "true", "cat", "ls", "sleep")


class ImageError(RuntimeError):
    pass


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def ensure_image() -> str:
    """Return the image tag, building the image first if it is missing."""
    if _run(["docker", "image", "inspect", IMAGE]).returncode == 0:
        return IMAGE
    with tempfile.TemporaryDirectory(prefix="vbbench-image-") as tmp:
        got = _run(["apt-get", "download", "busybox-static"], cwd=tmp)
        debs = glob.glob(os.path.join(tmp, "busybox-static_*.deb"))
        if got.returncode != 0 or not debs:
            raise ImageError(
                f"cannot build {IMAGE}: `apt-get download busybox-static` failed "
                f"(exit {got.returncode}): {got.stderr.strip() or got.stdout.strip()}\n"
                "Run `apt-get update` (Debian/Ubuntu with network access to a mirror) and retry, "
                f"or provide any image tagged {IMAGE} that has /bin/tar.")
        root = os.path.join(tmp, "root")
        _check(_run(["dpkg", "-x", debs[0], root]), "dpkg -x")
        busybox = os.path.join(root, "bin", "busybox")
        if not os.path.isfile(busybox):
            raise ImageError(f"cannot build {IMAGE}: the package has no /bin/busybox")
        for applet in APPLETS:
            os.symlink("busybox", os.path.join(root, "bin", applet))
        tar = subprocess.Popen(["tar", "-C", root, "-cf", "-", "bin"], stdout=subprocess.PIPE)
        imported = _run(["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", IMAGE], stdin=tar.stdout)
        tar.stdout.close()
        tar.wait()
        _check(imported, "docker import")
    probe = _run(["docker", "run", "--rm", "--log-driver", "none", IMAGE, "tar", "--help"])
    if "Usage: tar" not in probe.stdout + probe.stderr:
        raise ImageError(f"{IMAGE} was built but `tar` does not run in it: {probe.stderr.strip()}")
    return IMAGE


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise ImageError(f"cannot build {IMAGE}: {what} failed: {done.stderr.strip()}")

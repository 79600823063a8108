"""Small helpers for integration tests: fill volumes, read them back, find leftovers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable
from pathlib import Path

from volbackup.docker.helpers import PID_LABEL

# The two ways volbackup reads and writes a plain local volume, and the option for each.
PATHS = {"direct": "--direct", "engine": "--no-direct"}


def fill(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


BIG = 384 * 1024 * 1024  # enough data that a run can be caught half way


def random_file(root: str, name: str = "random.bin", size: int = BIG) -> None:
    """An incompressible file of `size` bytes (a multiple of 16 MiB) under `root`."""
    with open(os.path.join(root, name), "wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))


def _default_sigint() -> None:
    # A child of a non-interactive shell inherits SIGINT ignored; a terminal's Ctrl-C is not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """volbackup in the background, with SIGINT as a terminal's Ctrl-C would find it."""
    return subprocess.Popen([sys.executable, "-m", "volbackup", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, env={**os.environ, **(env or {})})


def gone(pids: list[int], timeout: float = 10) -> bool:
    """True once none of `pids` runs any more (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def contents(root: str) -> dict[str, bytes]:
    """Relative path -> bytes of every regular file under root."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath, name)
            out[str(full.relative_to(root))] = full.read_bytes()
    return out


def repo_files(repo: Path) -> list[str]:
    """Every file in a repository directory, temp files included."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())


def tar_first_on_path(directory: Path, script: str) -> dict:
    """Environment whose PATH finds `script` as `tar` first (`{tar}` in it: the real one)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    tar = bin_dir / "tar"
    tar.write_text(script.format(tar=shutil.which("tar")))
    tar.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got: {stderr!r}"
    assert lines[0].startswith("volbackup: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def helpers_of(client, pid: int) -> list:
    """Helper containers of the volbackup process `pid` (the low-level list: inspecting
    a helper blocks while its archive stream is open)."""
    return client.api.containers(all=True, filters={"label": f"{PID_LABEL}={pid}"})


def tar_children(pid: int) -> list[int]:
    """Pids of the GNU tar processes that volbackup process `pid` runs (the direct path),
    from any of its threads (`--jobs` starts them from worker threads)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            pass
    found = []
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "tar":
                found.append(int(child))
        except OSError:
            pass
    return found


def wait_for_read(client, proc: subprocess.Popen, via: str, timeout: float = 120) -> None:
    """Wait until `proc` streams a volume: `via` "engine" (a helper) or "direct" (tar).
    `timeout` is a hang guard only (generous: a loaded host starts helpers slowly)."""
    going = (lambda: tar_children(proc.pid)) if via == "direct" else \
        (lambda: helpers_of(client, proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if going():
            time.sleep(0.3)  # let the stream get going
            assert proc.poll() is None, "the run ended before it could be interrupted"
            return
        time.sleep(0.02)
    raise AssertionError(f"no {via} read appeared while the run was going")


def wait_until(done: Callable[[], object], proc: subprocess.Popen, what: str,
               timeout: float = 120) -> None:
    """Poll until `done()` is true while `proc` runs (an event to wait for, not a time);
    `timeout` is a hang guard only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        assert proc.poll() is None, f"the run ended before {what}"
        time.sleep(0.02)
    raise AssertionError(f"{what}: not seen within {timeout:g}s")


def events(client, since: float, container_ids: set[str]) -> list[tuple[float, str, str]]:
    """(time, action, container name) of the events since `since` of the containers
    `container_ids` and of every volbackup helper, oldest first."""
    found = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                          filters={"type": "container"})
    out = []
    for e in found:
        name = e.get("Actor", {}).get("Attributes", {}).get("name", "")
        at = e["timeNano"] / 1e9
        if at >= since and (e.get("id") in container_ids or name.startswith("volbackup-helper-")):
            out.append((at, e["Action"], name))
    return sorted(out)


def named_again(repo_dir: Path, snapshot: str, catalogue: bool = True) -> int:
    """How many of the blobs a packed snapshot's trees name (pieces included, and the
    catalogue's with `catalogue`) name a blob named before in it: a run of repeated bytes
    cut into equal chunks (the corpus's big file at 256 KiB chunks). A backup stores such
    a blob once, and a copy sends it once and counts the rest as present."""
    from volbackup.repo import catalogtree
    from volbackup.repo.repository import Repository
    from volbackup.repo.trees import TreeRoot, nodes

    repo = Repository.open(str(repo_dir))
    manifest = repo.load(snapshot)
    roots = [TreeRoot.from_fields(manifest.data, "t")]
    if catalogue:
        roots.append(catalogtree.check_field(manifest.catalog, "t"))
    named = [node.id for root in roots for node in nodes(repo.blobs, root, {})]
    return len(named) - len(set(named))

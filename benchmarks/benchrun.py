"""Running and timing the contenders of benchmarks/run.py, and cleaning up after them.

Every child runs in its own session, so a Ctrl-C reaches this process only; it then
interrupts the running child (SIGINT to its group: volbackup removes its own helper),
waits for it, and lets the caller's cleanup remove the `vbbench-<run>-` resources.
"""

from __future__ import annotations

import atexit
import compileall
import functools
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import docker

MIB = 1 << 20
SETTLE_SECONDS = 3


def _own_cache_dir() -> None:
    """volbackup's cache directory (the parent records of backups into encrypted
    repositories) in a directory of this run, removed when it ends: a benchmark leaves
    nothing in ~/.cache, and starts from no record."""
    if os.environ.get("VOLBACKUP_CACHE_DIR"):
        return
    cache = tempfile.mkdtemp(prefix="vbbench-cache-")
    os.environ["VOLBACKUP_CACHE_DIR"] = cache
    atexit.register(shutil.rmtree, cache, True)


_own_cache_dir()


class StepFailed(RuntimeError):
    pass


def publish(result: dict, text: str, json_path: str | None) -> None:
    """A benchmark's report on stdout, and every figure as JSON where --json asks."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)


def run_steps(script: str, bench, steps: Callable[[], object]) -> int:
    """Run a benchmark's `steps`: 0 when they ran, 1 when one failed (StepFailed, said on
    stderr), 130 on Ctrl-C or SIGTERM; what `bench` made is removed either way."""
    try:
        steps()
    except StepFailed as e:
        print(f"{script}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{script}: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for problem in bench.cleanup():
            print(f"{script}: cleanup: {problem}", file=sys.stderr)
    return 0


VOLBACKUP_ARGS: list[str] = []  # extra options for volbackup backup/restore (run.py --no-direct)
WARM_ARCHIVES = False  # run.py --warm-archives: restores read archives from the page cache
PERF_DIR: str | None = None  # run.py --perf-dir: each volbackup run under `perf record -a -g`


def volbackup_cmd() -> list[str]:
    """The console script installed beside this interpreter, else `python -m volbackup`.

    Not the first `volbackup` on PATH: that can be a version manager's shim (pyenv's is a
    bash script that runs several more) costing 50-60 ms per run that are not volbackup's."""
    _compile_volbackup()
    script = os.path.join(os.path.dirname(sys.executable), "volbackup")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "volbackup"]


@functools.lru_cache(maxsize=1)
def _compile_volbackup() -> None:
    """Write volbackup's bytecode once, as pip does when it installs a package. A checkout
    installed with `pip install -e` under PYTHONDONTWRITEBYTECODE (set in this sandbox)
    would compile its 46 modules from source in every run: 12-15 ms (measured with
    `volbackup --version`, docs/performance.md) that no installed copy spends."""
    spec = importlib.util.find_spec("volbackup")
    for path in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(path, quiet=1)


class _PeakRss(threading.Thread):
    """Follows a process's own peak RSS (VmHWM in /proc/PID/status) until it ends, and
    samples the summed VmRSS of it and its descendants (GNU tar under volbackup's direct
    path) every TREE_EVERY-th look: the peak of the process tree.

    Not ru_maxrss from wait4: a child forked from this harness starts with the harness's
    resident pages, and the kernel keeps that high-water mark across exec, so every
    figure would be at least the harness's own size (about 50-70 MiB)."""

    TREE_EVERY = 4   # the tree walk reads a file per thread and per child: every 20 ms

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.path, self._done = pid, f"/proc/{pid}/status", threading.Event()
        self.peak_kib = self.tree_peak_kib = 0

    def run(self) -> None:
        looks = 0
        while not self._done.is_set():
            try:
                with open(self.path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                return
            if looks % self.TREE_EVERY == 0:
                self.tree_peak_kib = max(self.tree_peak_kib, _tree_rss_kib(self.pid))
            looks += 1
            self._done.wait(0.005)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_kib / 1024

    def tree_mib(self) -> float:
        """The tree's sampled peak, never below the process's own exact one."""
        return max(self.peak_kib, self.tree_peak_kib) / 1024


def _tree_rss_kib(pid: int) -> int:
    """VmRSS of `pid` and every descendant now, summed (0 for any that ended meanwhile)."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def timed(cmd: list[str], what: str, output: list | None = None,
          rss: bool = False, usage: dict | None = None) -> tuple[float, float | None]:
    """Run `cmd`; return (wall seconds, peak RSS in MiB of that process if `rss`).
    With `output`, its stdout is appended to that list; with `usage`, CPU seconds, page
    faults and context switches of it and its children (from wait4) go into that dict,
    and with `rss` too the peak RSS of its process tree (`tree_rss_mib`, sampled).

    Dirty pages are written back first (untimed), so no step pays for an earlier one's."""
    os.sync()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        peak = _PeakRss(proc.pid) if rss else None
        if peak:
            peak.start()
        try:
            _, status, used = os.wait4(proc.pid, 0)
        except BaseException:
            _stop(proc)
            raise
        finally:
            peak_mib = peak.stop() if peak else None
        seconds = time.monotonic() - started
        if usage is not None:
            if peak:
                usage["tree_rss_mib"] = round(peak.tree_mib(), 1)
            usage.update(cpu_user=round(used.ru_utime, 3), cpu_sys=round(used.ru_stime, 3),
                         minor_faults=used.ru_minflt, voluntary_switches=used.ru_nvcsw,
                         involuntary_switches=used.ru_nivcsw)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise StepFailed(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                             f"{err.read().decode(errors='replace')[-2000:]}")
        if output is not None:
            out.seek(0)
            output.append(out.read().decode(errors="replace"))
    return seconds, peak_mib


def volbackup_timed(args: list[str], what: str) -> tuple[float, float, dict]:
    """`timed` for a volbackup command run with --json: also its one volume's result
    (`seconds` there is the volume's own time, without start-up; `via` the path taken),
    with the process's `usage` (CPU, faults, switches: GNU tar's included) added."""
    printed: list[str] = []
    usage: dict = {}
    cmd = [*volbackup_cmd(), *args, *VOLBACKUP_ARGS, "--json"]
    if PERF_DIR:
        record = os.path.join(PERF_DIR, f"{args[0]}-{len(os.listdir(PERF_DIR))}.data")
        cmd = ["perf", "record", "-a", "-g", "-q", "-o", record, "--", *cmd]
    seconds, rss = timed(cmd, what, printed, rss=True, usage=usage)
    return seconds, rss, {**json.loads(printed[0])["volumes"][0], "usage": usage}


def busy_fraction(seconds: float = 2.0) -> float:
    """How busy the CPUs are (0..1) over `seconds`, from /proc/stat: is something else running?"""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]   # total, idle + iowait
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def remove_volumes(client: docker.DockerClient, *names: str) -> None:
    """Remove the benchmark's volumes that exist (after a failure, some may not)."""
    for name in names:
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass


def shell(script: str, what: str) -> float:
    return timed(["bash", "-o", "pipefail", "-c", script], what)[0]


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
    return [path]


def evict(path: str) -> None:
    """Drop a file's pages (or every file's under a directory) from the page cache, so a
    restore reads its archive from disk, as one does days after the backup."""
    for p in _files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prepare_archives(*paths: str) -> None:
    """Before restores: every archive out of the page cache (a restore reads its archive
    from disk, as it does days after the backup), then a pause, so that neither restore
    gets the pages this just freed. This VM hands free memory back to its host about 2 s
    after it is freed, and filling pages that were handed back costs several times more
    kernel time than reusing ones that were not (docs/performance.md).
    With WARM_ARCHIVES (run.py --warm-archives), every archive is read once instead."""
    for path in paths:
        warm(path) if WARM_ARCHIVES else evict(path)
    time.sleep(SETTLE_SECONDS)


def warm(path: str) -> None:
    """Read a file (or every file under a directory) once, so it is in the page cache."""
    for p in _files(path):
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def dir_bytes(path: str) -> int:
    """The bytes of the files under `path`, also while a backup writes there: a temp file
    listed, then renamed or removed before its size is read, counts as gone."""
    total = 0
    for p in _files(path):
        try:
            total += os.path.getsize(p)
        except FileNotFoundError:
            pass
    return total


class Bench:
    """The resources of one run (all named `<prefix>...`) and the contenders' steps."""

    def __init__(self, client: docker.DockerClient, prefix: str, image: str, fsync: bool):
        self.client, self.prefix, self.image, self.fsync = client, prefix, image, fsync
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{self.prefix}{stem}-{self.count}"

    def volume(self, stem: str) -> tuple[str, str]:
        name = self.name(stem)
        self.client.volumes.create(name)
        return name, self.client.api.inspect_volume(name)["Mountpoint"]

    def source_container(self, volume: str) -> str:
        """A created, never started container that mounts `volume` at /data (for --volumes-from)."""
        name = self.name("src")
        self.client.api.create_container(
            self.image, command=["true"], name=name,
            host_config=self.client.api.create_host_config(binds=[f"{volume}:/data"]))
        return name

    def _sync(self, path: str) -> str:
        return f" && sync {shlex.quote(path)}" if self.fsync else ""

    # -- backups: each returns (seconds, peak RSS MiB or None, archive bytes) -----------------

    def backup_volbackup(self, volume: str) -> tuple[float, float, int, str, dict]:
        repo = tempfile.mkdtemp(prefix="repo-", dir=self.work)
        seconds, rss, result = volbackup_timed(["backup", volume, "-r", repo], "volbackup backup")
        return seconds, rss, dir_bytes(repo), repo, result

    def backup_recipe(self, src: str) -> tuple[float, None, int, str]:
        out = os.path.join(self.work, "recipe.tar.zst")
        seconds = shell(
            f"docker run --rm --log-driver none --name {self.name('recipe')} --volumes-from {src} "
            f"{self.image} tar -cf - /data | zstd -q -T0 -3 > {out}{self._sync(out)}",
            "recipe (docker run tar | zstd)")
        return seconds, None, os.path.getsize(out), out

    def backup_limit(self, mountpoint: str) -> tuple[float, None, int, str]:
        out = os.path.join(self.work, "limit.tar.zst")
        seconds = shell(f"tar -cf - -C {shlex.quote(mountpoint)} . | zstd -q -T0 -3 > {out}"
                        f"{self._sync(out)}", "limit (host tar | zstd)")
        return seconds, None, os.path.getsize(out), out

    # -- restores: each returns (seconds, peak RSS MiB or None) -----------------------------
    # Restored volumes are kept until cleanup: on ext4 without a journal (this VM's disk),
    # creating thousands of files within minutes of deleting thousands costs seconds of
    # kernel time (the inode allocator skips recently deleted inodes one by one).

    def restore_volbackup(self, volume: str, repo: str) -> tuple[float, float, dict]:
        return volbackup_timed(["restore", volume, "--as", self.name("restored"), "-r", repo],
                               "volbackup restore")

    def restore_limit(self, archive: str) -> tuple[float, None]:
        _, mountpoint = self.volume("restored")
        seconds = shell(f"zstd -dc {shlex.quote(archive)} | tar -xf - -C {shlex.quote(mountpoint)}",
                        "limit (host zstd -dc | tar -x)")
        return seconds, None

    def cleanup(self) -> list[str]:
        """Remove every container and volume named with the prefix, and the work dir."""
        problems = []
        for container in self.client.containers.list(all=True, filters={"name": self.prefix}):
            if container.name.startswith(self.prefix):
                try:
                    container.remove(force=True)
                except docker.errors.APIError as e:
                    problems.append(f"container {container.name}: {e}")
        for volume in self.client.volumes.list(filters={"name": self.prefix}):
            if volume.name.startswith(self.prefix):
                try:
                    volume.remove(force=True)
                except docker.errors.APIError as e:
                    problems.append(f"volume {volume.name}: {e}")
        shutil.rmtree(self.work, ignore_errors=True)
        return problems

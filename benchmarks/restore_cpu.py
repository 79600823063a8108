"""Where a restore's CPU goes: CPU seconds (user + sys) per stage and per GiB, by layout.

    python benchmarks/restore_cpu.py [--size 256] [--runs 2] [--layouts archive,packed]
    python benchmarks/restore_cpu.py --layouts packed,packed-encrypted --json out.json
    python benchmarks/restore_cpu.py --extract-into /dev/shm       # tar's CPU without ext4's
    python benchmarks/restore_cpu.py --quick                      # does it run? (16 MiB)

Run as root beside a Docker engine (the volume is backed up with --direct). CPU seconds,
not wall seconds: they say what a restore costs on a machine that others share (a busy
machine stretches wall time far more than CPU time). The volume is uniquevolume.py's
(seeded unique data, a few large files and thousands of small ones), backed up once into a
fresh repository of each layout: archive (no init), packed (`init --layout packed`),
packed-encrypted (the same, `--encrypt-to` one age recipient). Then, per run and layout, a
worker process (so that imports and setup are not counted) reads the newest snapshot
once per stage, each stage doing all the previous one did and one thing more:
  blobs    (packed only) every data blob loaded: ranged reads, zstd, decryption, each
           checked against its id (BlobStore.load_many)
  checked  the checked tar stream (Repository.unpacker): + the tar walker and the
           holding back of the end (for an archive: its zstd stream and sha256)
  piped    that stream written into `cat > /dev/null` through a 1 MiB pipe: + the pipe
  extract  that stream extracted by GNU tar into a fresh directory (volbackup.docker
           .direct.import_): + GNU tar, whose CPU (children) is mostly the kernel making
           files, and depends on the filesystem's state (ext4 spends more making inodes
           soon after many were deleted: nothing is deleted until the end); with
           --extract-into DIR, into a fresh directory under DIR, removed after each run
           (a tmpfs such as /dev/shm: making files costs the same each time)
and the whole `volbackup restore --direct` into a fresh volume (CPU of volbackup and its
GNU tar, from wait4), as peers.py measures it. Repositories stay in the page cache (the
CPU of reading them from disk is the kernel's, not volbackup's). Figures: the median of
--runs; "own" is volbackup's process (all its threads), "tar" its children.
Everything made is named vbbench-<random>- and removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

LAYOUTS = ("archive", "packed", "packed-encrypted", "chunked")
STAGES = ("blobs", "checked", "piped", "extract")
GIB = 1 << 30


def _usage() -> tuple[float, float, float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime, own.ru_stime, kids.ru_utime, kids.ru_stime


def worker(repo_url: str, volume: str, scratch: str, remove: bool) -> dict:
    """The stages of one restore's reading, in this process: CPU seconds of each."""
    from volbackup.docker import direct
    from volbackup.repo.repository import Repository
    from volbackup.repo.trees import TreeRoot, walk

    repo = Repository.open(repo_url)
    manifest = repo.reveal(repo.resolve(volume))

    def blobs() -> None:
        for _ in repo.blobs.load_many(walk(repo.blobs, TreeRoot.from_fields(
                manifest.data, "benchmark")), 8):
            pass

    def checked() -> None:
        repo.unpacker(manifest).drain()

    def piped() -> None:
        proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        for piece in repo.unpacker(manifest).chunks():
            proc.stdin.write(piece)
        proc.stdin.close()
        proc.wait()

    def extract() -> None:
        direct.import_(tempfile.mkdtemp(dir=scratch), repo.unpacker(manifest).chunks())

    def removed() -> None:
        if remove:
            for name in os.listdir(scratch):
                shutil.rmtree(os.path.join(scratch, name))

    out = {"bytes": manifest.bytes}
    for name, stage in (("blobs", blobs), ("checked", checked), ("piped", piped),
                        ("extract", extract)):
        if name == "blobs" and not getattr(manifest, "tree", False):
            continue
        before, started = _usage(), time.monotonic()
        stage()
        after = _usage()
        used = [round(b - a, 3) for a, b in zip(before, after)]
        out[name] = {"own_user": used[0], "own_sys": used[1], "tar_user": used[2],
                     "tar_sys": used[3], "own": round(used[0] + used[1], 3),
                     "tar": round(used[2] + used[3], 3),
                     "wall": round(time.monotonic() - started, 3)}
    removed()
    return out


class Contender:
    """A repository of one layout holding the volume's snapshot."""

    def __init__(self, bench, layout: str):
        from benchrun import timed, volbackup_cmd

        self.layout, self.env = layout, dict(os.environ)
        self.repo = os.path.join(bench.work, f"repo-{layout}")
        os.mkdir(self.repo)
        init = [*volbackup_cmd(), "init", "-r", self.repo]
        key: list[str] = []
        if layout == "packed" or layout == "chunked":
            timed([*init, "--layout", layout], "volbackup init")
        elif layout == "packed-encrypted":
            from pyrage import x25519

            identity = x25519.Identity.generate()
            key_file = os.path.join(bench.work, "key")
            timed([*init, "--layout", "packed", "--encrypt-to", str(identity.to_public()),
                   "--key-file", key_file], "volbackup init")
            self.env["VOLBACKUP_IDENTITY_FILE"] = os.path.join(bench.work, "identity")
            with open(key_file) as k, open(self.env["VOLBACKUP_IDENTITY_FILE"], "w") as f:
                f.write(f"{identity}\n{k.read()}")   # the key file appended (docs/security.md)
            key = ["--key-file", key_file]
        self.backup_args = ["--direct", *key]

    def stages(self, volume: str, scratch: str, remove: bool) -> dict:
        out = subprocess.run([sys.executable, __file__, "--worker", self.repo, volume, scratch,
                              "remove" if remove else "keep"],
                             env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            from benchrun import StepFailed
            raise StepFailed(f"worker for {self.layout} failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--size", type=int, default=256, help="volume size in MiB (default 256)")
    p.add_argument("--runs", type=int, default=2, help="runs (default 2); the median is shown")
    p.add_argument("--layouts", default="archive,packed",
                   help=f"comma-separated, of {','.join(LAYOUTS)} (default archive,packed)")
    p.add_argument("--quick", action="store_true", help="does it run? 16 MiB, one run")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--extract-into", metavar="DIR",
                   help="extract stage into a fresh directory under DIR, removed after each "
                        "run (default: the work directory in /var/tmp, kept until the end)")
    p.add_argument("--worker", nargs=4, metavar=("REPO", "VOLUME", "SCRATCH", "REMOVE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        repo, volume, scratch, remove = args.worker
        print(json.dumps(worker(repo, volume, scratch, remove == "remove")))
        return 0
    layouts = args.layouts.split(",")
    if set(layouts) - set(LAYOUTS):
        p.error(f"--layouts: unknown {','.join(sorted(set(layouts) - set(LAYOUTS)))}")
    if args.quick:
        args.size, args.runs = 16, 1
    if args.runs < 1 or args.size < 1:
        p.error("--runs and --size must be >= 1")
    if args.extract_into and not os.path.isdir(args.extract_into):
        p.error(f"--extract-into: {args.extract_into} is not a directory")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import docker
    import uniquevolume
    from benchrun import publish, run_steps
    from dedup import Dedup

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    bench = Dedup(docker.from_env(timeout=600), f"vbbench-{secrets.token_hex(3)}-")
    result: dict = {"prefix": bench.prefix, "config": vars(args), "cpus": os.cpu_count(),
                    "load_before": os.getloadavg(), "layouts": {}}

    def steps() -> None:
        volume, mountpoint = bench.volume("vol")
        result["volume"] = uniquevolume.fill(mountpoint, args.size)
        contenders = [Contender(bench, layout) for layout in layouts]
        for c in contenders:
            bench.backup(volume, c.repo, *c.backup_args)
        runs: dict[str, list[dict]] = {c.layout: [] for c in contenders}
        scratch = tempfile.mkdtemp(prefix=f"{bench.prefix}extract-",
                                   dir=args.extract_into or bench.work)
        try:
            rounds(contenders, volume, scratch, runs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for layout, rows in runs.items():
            result["layouts"][layout] = {"median": _median(rows), "runs": rows}

    def rounds(contenders: list, volume: str, scratch: str, runs: dict) -> None:
        for _ in range(args.runs):
            for c in contenders:
                row = c.stages(volume, scratch, remove=args.extract_into is not None)
                saved = os.environ.copy()
                os.environ.update(c.env)
                try:
                    row["restore"] = bench.restore(volume, c.repo, "--direct")
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                runs[c.layout].append(row)

    code = run_steps("restore_cpu.py", bench, steps)
    if code:
        return code
    result["load_after"] = os.getloadavg()
    publish(result, report(result), args.json)
    return 0


def _median(rows: list[dict]) -> dict:
    out: dict = {"bytes": rows[0]["bytes"]}
    for stage in STAGES:
        if stage in rows[0]:
            out[stage] = {k: round(statistics.median(r[stage][k] for r in rows), 3)
                          for k in rows[0][stage]}
    out["restore_cpu"] = round(statistics.median(r["restore"]["cpu_seconds"] for r in rows), 3)
    out["restore_wall"] = round(statistics.median(r["restore"]["seconds"] for r in rows), 3)
    return out


def report(result: dict) -> str:
    lines = [f"restore CPU seconds, {result['volume']['mib']:.0f} MiB volume "
             f"({result['volume']['files']} files), median of {result['config']['runs']} "
             f"run(s); load {result['load_before'][0]:.1f} before, "
             f"{result['load_after'][0]:.1f} after",
             f"{'layout':18}{'stage':9}{'own u':>7}{'own s':>7}{'tar':>7}{'own':>7}"
             f"{'own/GiB':>9}{'all/GiB':>9}"]
    for layout, data in result["layouts"].items():
        m = data["median"]
        per_gib = GIB / m["bytes"]
        for stage in STAGES:
            if stage in m:
                s = m[stage]
                lines.append(f"{layout:18}{stage:9}{s['own_user']:7.2f}{s['own_sys']:7.2f}"
                             f"{s['tar']:7.2f}{s['own']:7.2f}{s['own'] * per_gib:9.2f}"
                             f"{(s['own'] + s['tar']) * per_gib:9.2f}")
        lines.append(f"{layout:18}{'restore':9}{'':21}{m['restore_cpu']:7.2f}{'':9}"
                     f"{m['restore_cpu'] * per_gib:9.2f}   (volbackup restore --direct: "
                     f"volbackup + GNU tar, {m['restore_wall']:.2f} s wall)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

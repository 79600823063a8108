"""`volbackup backup --jobs N`: wall time and peak RSS for many small volumes and a few large.

    python benchmarks/jobs.py [--small 20] [--large 2] [--jobs 1,2,4] [--rounds 2]

Run as root beside a Docker engine. Makes --small volumes of 5 MiB (50 files, half
random) and --large volumes of 512 MiB (benchmarks/benchvolume.py's mix), then backs up
each set with every --jobs value on both paths (direct and --no-direct), alternating,
into a fresh repository each time. Prints the median seconds and the largest peak RSS
of the volbackup process. Everything made is named vbbench-<random>- and removed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile

import docker
from benchrun import Bench, timed, volbackup_cmd
from benchvolume import Shape, fill


def small_files(root: str) -> None:
    for i in range(50):
        with open(os.path.join(root, f"f{i:02d}"), "wb") as f:
            f.write(os.urandom(50_000) + b"log line\n" * 5_556)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=20, help="small volumes (default 20)")
    p.add_argument("--large", type=int, default=2, help="512 MiB volumes (default 2)")
    p.add_argument("--jobs", default="1,2,4", help="--jobs values (default 1,2,4)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    jobs = [int(j) for j in args.jobs.split(",")]
    bench = Bench(docker.from_env(timeout=600), f"vbbench-{secrets.token_hex(3)}-", "", fsync=True)
    try:
        sets = {"small": [], "large": []}
        for i in range(args.small):
            name, mountpoint = bench.volume("small")
            small_files(mountpoint)
            sets["small"].append(name)
        for i in range(args.large):
            name, mountpoint = bench.volume("large")
            fill(mountpoint, Shape(size_mib=512, seed=7 + i))
            sets["large"].append(name)
        print(f"{'volumes':>22}  {'path':>9}  {'jobs':>4}  {'seconds':>8}  {'peak RSS':>9}")
        for kind, volumes in sets.items():
            for path in ("--direct", "--no-direct"):
                seen = {j: ([], []) for j in jobs}
                for _ in range(args.rounds):
                    for j in jobs:
                        repo = tempfile.mkdtemp(prefix="repo-", dir=bench.work)
                        seconds, rss = timed([*volbackup_cmd(), "backup", *volumes, "-r", repo,
                                              path, "--jobs", str(j)], "volbackup backup",
                                             rss=True)
                        shutil.rmtree(repo)
                        seen[j][0].append(seconds)
                        seen[j][1].append(rss)
                for j, (secs, rss) in seen.items():
                    label = f"{len(volumes)} x {'5' if kind == 'small' else '512'} MiB"
                    print(f"{label:>22}  {path.lstrip('-'):>9}  {j:>4}  "
                          f"{statistics.median(secs):>8.2f}  {max(rss):>5.1f} MiB", flush=True)
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

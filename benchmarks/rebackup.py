"""What an unchanged re-backup adds to a repository, for a volume of many small files.

    python benchmarks/rebackup.py --files 100000 [--only volbackup-packed,restic] [--json out.json]

Issue 24: "an unchanged re-backup of a 100,000-file volume adds at most 64 KiB to the
repository (restic adds 253 bytes)". A chunked snapshot stores its chunk list and
catalogue again (bytes per file); a tree snapshot (`init --layout packed`) stores them as
trees of blobs, so the second backup finds every piece stored and adds its manifest.

Run as root beside a Docker engine. The volume: --files files of --min-bytes to
--max-bytes (log-uniform, seeded unique text from uniquevolume.py), 1,000 per directory.
Per contender (peers.py's, restic taken from PATH), into a fresh repository: the first
backup, then a second one of the unchanged volume; the bytes the repository directory
grew by in the second, and which files made the growth; and the seconds of both (issue
25: the second of 100,000 small files at least 5x faster than the first). Everything made is named <prefix>... (default vbbench-<random>-) and
removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import signal
import sys
import time

import docker
import uniquevolume
from benchrun import publish, run_steps, volbackup_cmd
from dedup import Dedup
from peers import NAMES, SETTLE, contenders, find_peer, peer_environment, version

FILES_PER_DIR = 1000
DEFAULT_ONLY = "volbackup-chunked,volbackup-packed,volbackup-packed-encrypted,restic"


def fill(root: str, files: int, low: int, high: int, seed: int) -> dict:
    """`files` small files of unique text in directories of FILES_PER_DIR; their statistics."""
    src = uniquevolume.Source(seed)
    total = 0
    for i in range(files):
        directory = os.path.join(root, f"d{i // FILES_PER_DIR:04d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(directory)
        n = int(math.exp(src.rng.uniform(math.log(low), math.log(high))))
        with open(os.path.join(directory, f"f{i:06d}.txt"), "wb") as f:
            f.write(src.text(n))
        total += n
    return {"files": files, "bytes": total, "directories": -(-files // FILES_PER_DIR)}


def sizes(repo: str) -> dict[str, int]:
    """Relative path -> size of every file in the repository directory."""
    out = {}
    for directory, _, names in os.walk(repo):
        for name in names:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, repo)] = os.lstat(path).st_size
    return out


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Bytes added per top-level directory of the repository (files new or grown)."""
    out: dict[str, int] = {}
    for path, size in after.items():
        added = size - before.get(path, 0)
        if added:
            top = path.split(os.sep)[0]
            out[top] = out.get(top, 0) + added
    return out


def measure(bench: Dedup, contender, volume: str, mountpoint: str) -> dict:
    repo = contender.setup(bench)
    first_step = contender.backup(bench, volume, mountpoint, repo, "first")
    first = sizes(repo)
    second_step = contender.backup(bench, volume, mountpoint, repo, "unchanged")
    second = sizes(repo)
    row = {"first_seconds": first_step["seconds"], "unchanged_seconds": second_step["seconds"],
           "first_rss_mib": first_step.get("rss_mib"),
           "unchanged_rss_mib": second_step.get("rss_mib"),
           "unchanged_files_cache": second_step.get("files_cache"),
           "first_bytes": sum(first.values()),
           "unchanged_new_bytes": sum(second.values()) - sum(first.values()),
           "unchanged_new_files": len(second.keys() - first.keys()),
           "unchanged_growth": growth(first, second)}
    shutil.rmtree(os.path.dirname(repo) if contender.tool == "borg" else repo)
    shutil.rmtree(repo + ".cache", ignore_errors=True)
    return row


def report(result: dict) -> str:
    vol = result["volume"]
    lines = [f"{vol['files']:,} files, {vol['bytes'] / (1 << 20):.1f} MiB in "
             f"{vol['directories']} directories",
             f"{'contender':<28}{'first s':>8}{'again s':>8}{'first backup':>14}"
             f"{'unchanged adds':>16}  where"]
    for name, row in result["contenders"].items():
        where = ", ".join(f"{k} {v:,}" for k, v in sorted(row["unchanged_growth"].items()))
        lines.append(f"{name:<28}{row['first_seconds']:>8.2f}{row['unchanged_seconds']:>8.2f}"
                     f"{row['first_bytes']:>14,}{row['unchanged_new_bytes']:>16,}  {where}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--min-bytes", type=int, default=100)
    p.add_argument("--max-bytes", type=int, default=4096)
    p.add_argument("--only", metavar="NAMES", default=DEFAULT_ONLY,
                   help=f"comma-separated, of {','.join(NAMES)} (default {DEFAULT_ONLY})")
    p.add_argument("--prefix", help="of every name made (default vbbench-<random>-)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args()
    if args.files < 1 or not 0 < args.min_bytes <= args.max_bytes:
        p.error("--files >= 1 and 0 < --min-bytes <= --max-bytes")
    only = set(args.only.split(","))
    if only - set(NAMES):
        p.error(f"--only: unknown {','.join(sorted(only - set(NAMES)))} (of {','.join(NAMES)})")
    peers = {"restic": find_peer("restic", None), "borg": find_peer("borg", None)}
    if peers["borg"]["present"]:
        from peers import borg_encryption
        peers["borg"]["encryption"] = borg_encryption()
    chosen = contenders(peers, only)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    client = docker.from_env(timeout=600)
    bench = Dedup(client, args.prefix or f"vbbench-{secrets.token_hex(3)}-")
    peer_environment(bench.work)
    result: dict = {"prefix": bench.prefix, "config": vars(args), "peers": peers,
                    "volbackup_version": version([*volbackup_cmd(), "--version"])}
    def steps() -> None:
        volume, mountpoint = bench.volume("vol")
        result["volume"] = fill(mountpoint, args.files, args.min_bytes, args.max_bytes, args.seed)
        time.sleep(SETTLE)      # files caches do not trust files changed just before
        result["contenders"] = {c.name: measure(bench, c, volume, mountpoint) for c in chosen}

    code = run_steps("rebackup.py", bench, steps)
    if code:
        return code
    publish(result, report(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak RSS of `volbackup backup` and `restore` for volumes of different sizes.

Memory must not grow with the volume: every path streams. Run as root beside a Docker
engine (files are written straight into the volume's mountpoint):

    python benchmarks/memory.py --sizes 256,1024,2048 [--json]

Each size gets a fresh volume of 64 MiB files, alternately incompressible and highly
compressible, plus 1,000 small
files, a backup into a temporary repository and a restore into a fresh volume, each in
its own process, whose own peak RSS (VmHWM) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile

import docker
from benchrun import StepFailed, remove_volumes, timed, volbackup_cmd

FILE_MIB = 64


def fill(root: str, mib: int) -> None:
    """Alternate incompressible and extremely compressible files: the second kind is what
    catches a decompressor whose output grows with the compression ratio."""
    repetitive = b"the same log line, again and again\n" * (1 << 15)
    for i in range(mib // FILE_MIB):
        with open(os.path.join(root, f"big-{i:04d}.bin"), "wb") as f:
            for _ in range(FILE_MIB // 16):
                f.write(os.urandom(16 << 20) if i % 2 == 0 else
                        (repetitive * ((16 << 20) // len(repetitive) + 1))[:16 << 20])
    os.makedirs(os.path.join(root, "small"))
    for i in range(1000):
        with open(os.path.join(root, "small", f"{i:04d}.txt"), "wb") as f:
            f.write(f"small file {i}\n".encode() * 50)


def run(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one volbackup process (its own VmHWM: see benchrun)."""
    try:
        return timed([*volbackup_cmd(), *args], f"volbackup {args[0]}", rss=True)
    except StepFailed as e:
        raise SystemExit(str(e)) from None


def measure(mib: int, client, layout: str = "archive") -> dict:
    with tempfile.TemporaryDirectory() as repo:
        if layout == "chunked":
            run("init", "-r", repo, "--layout", "chunked")
        return {**round_trip(mib, client, repo), "layout": layout}


def round_trip(mib: int, client, repo: str) -> dict:
    """Back up a fresh volume of `mib` MiB into `repo` and restore it, each in its own
    process; the volumes are removed afterwards."""
    name = f"vbbench-{secrets.token_hex(3)}"
    client.volumes.create(name)
    try:
        fill(client.api.inspect_volume(name)["Mountpoint"], mib)
        b_sec, b_rss = run("backup", name, "-r", repo)
        r_sec, r_rss = run("restore", name, "--as", name + "-r", "-r", repo)
        return {"mib": mib, "backup_rss_mib": round(b_rss, 1), "restore_rss_mib": round(r_rss, 1),
                "backup_mib_s": round(mib / b_sec, 1), "restore_mib_s": round(mib / r_sec, 1)}
    finally:
        remove_volumes(client, name, name + "-r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,2048", help="MiB per volume, comma-separated")
    parser.add_argument("--layout", choices=["archive", "chunked"], default="archive",
                        help="repository layout (chunked: made by `volbackup init`)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    rows = [measure(int(s), client, args.layout) for s in args.sizes.split(",")]
    print_rows(rows, args.json)


def print_rows(rows: list[dict], as_json: bool) -> None:
    """The measurements as a table, or as JSON."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'volume':>8}  {'backup RSS':>11}  {'restore RSS':>12}  {'backup':>11}  {'restore':>11}")
    for r in rows:
        print(f"{r['mib']:>4} MiB  {r['backup_rss_mib']:>7.1f} MiB  {r['restore_rss_mib']:>8.1f} MiB"
              f"  {r['backup_mib_s']:>5.0f} MiB/s  {r['restore_mib_s']:>5.0f} MiB/s")


if __name__ == "__main__":
    main()

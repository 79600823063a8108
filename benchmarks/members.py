"""Peak RSS of import, verify, export, restore and backup against the number of members.

Memory must not grow with the number of files in a volume: no command may keep state per
member (beyond bounded, spilled sets). Run as root beside a Docker engine:

    python benchmarks/members.py --members 20000,250000 [--layout archive|chunked] [--json]

For each count, a tar of that many tiny files (in 100 directories) is imported into a
temporary repository, the snapshot is verified, exported, restored into a fresh volume
(default path: direct when possible) and that volume is backed up again; each step is its
own process, whose peak RSS (VmHWM) is reported in MiB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import tarfile
import tempfile

import docker
from benchrun import StepFailed, remove_volumes, timed, volbackup_cmd


def write_tar(path: str, members: int) -> None:
    """A plain tar of `members` one-byte files under `./dNN/` (the directories included)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        dirs = min(100, members)
        for d in range(dirs):
            info = tarfile.TarInfo(f"./d{d:02d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(members - dirs):
            info = tarfile.TarInfo(f"./d{i % dirs:02d}/file-{i:08d}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def run(*args: str) -> float:
    """Peak RSS in MiB of one volbackup process."""
    try:
        return round(timed([*volbackup_cmd(), *args], f"volbackup {args[0]}", rss=True)[1], 1)
    except StepFailed as e:
        raise SystemExit(str(e)) from None


def measure(members: int, layout: str, client) -> dict:
    volume = f"vbbench-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as work:
        repo, source = os.path.join(work, "repo"), os.path.join(work, "in.tar")
        write_tar(source, members)
        os.mkdir(repo)
        if layout == "chunked":
            run("init", "-r", repo, "--layout", "chunked")
        try:
            out = {"members": members, "layout": layout}
            out["import_mib"] = run("import", source, "--volume", volume, "-r", repo, "-q")
            out["verify_mib"] = run("verify", volume, "-r", repo, "-q")
            out["export_mib"] = run("export", volume, "-r", repo, "-o",
                                    os.path.join(work, "out.tar.zst"))
            out["restore_mib"] = run("restore", volume, "--as", volume + "-r", "-r", repo, "-q")
            out["backup_mib"] = run("backup", volume + "-r", "-r", repo, "-q")
            return out
        finally:
            remove_volumes(client, volume, volume + "-r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="20000,250000", help="counts, comma-separated")
    parser.add_argument("--layout", choices=["archive", "chunked"], default="archive")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = docker.from_env(timeout=900)  # removing a volume of 250,000 files takes a while
    steps = ["import", "verify", "export", "restore", "backup"]
    if not args.json:
        print(f"{'members':>9} {'layout':>8} " + " ".join(f"{s + ' MiB':>12}" for s in steps),
              flush=True)
    rows = []
    for n in args.members.split(","):
        rows.append(row := measure(int(n), args.layout, client))
        if not args.json:
            print(f"{row['members']:>9} {row['layout']:>8} "
                  + " ".join(f"{row[s + '_mib']:>12}" for s in steps), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

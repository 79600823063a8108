"""What writing the catalogue costs a backup: CPU seconds of packing one tar stream into a
local repository with and without the catalogue, both layouts (no Docker: the tar is made
by GNU tar from a directory benchmarks/uniquevolume.py fills).

CPU time (user + system of this process, all threads) rather than wall time, so that the
figure means something on a busy machine too.

    python benchmarks/catalog_cost.py --size-mib 512 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import uniquevolume  # noqa: E402
from volbackup.repo.repository import Repository, new_snapshot_id  # noqa: E402
from volbackup.stream import catalog  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tar_pieces(directory: str):
    proc = subprocess.Popen(["tar", "-C", directory, "-c", "--sort=name", "."],
                            stdout=subprocess.PIPE)
    while piece := proc.stdout.read(1 << 20):
        yield piece
    proc.wait()


def one(directory: str, repo_dir: str, chunked: bool, with_catalog: bool) -> tuple[float, float]:
    os.makedirs(repo_dir)
    repo = Repository.init(repo_dir) if chunked else Repository.open(repo_dir, writable=True)
    if not with_catalog:
        catalog.record = lambda walker, sink: None  # the hook that writes the catalogue
    else:
        catalog.record = RECORD
    started, wall = cpu(), time.monotonic()
    with repo.snapshot_writer(new_snapshot_id("bench", datetime.now(timezone.utc))) as writer:
        writer.pack(tar_pieces(directory), 3)
    return cpu() - started, time.monotonic() - wall


RECORD = catalog.record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vb-catcost-") as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        uniquevolume.fill(data, args.size_mib)
        files = sum(len(f) for _, _, f in os.walk(data))
        print(f"volume: {args.size_mib} MiB, {files} files")
        for chunked in (False, True):
            results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for round_ in range(args.repeat):
                for with_catalog in (False, True):
                    repo_dir = os.path.join(tmp, f"repo-{chunked}-{with_catalog}-{round_}")
                    results[with_catalog].append(one(data, repo_dir, chunked, with_catalog))
                    subprocess.run(["rm", "-rf", repo_dir], check=True)
            layout = "chunked" if chunked else "archive"
            base = sorted(c for c, _ in results[False])[len(results[False]) // 2]
            withc = sorted(c for c, _ in results[True])[len(results[True]) // 2]
            print(f"{layout}: CPU s without catalogue {base:.2f}, with {withc:.2f} "
                  f"(+{(withc - base) / base * 100:.1f} %); wall medians "
                  f"{sorted(w for _, w in results[False])[args.repeat // 2]:.2f} / "
                  f"{sorted(w for _, w in results[True])[args.repeat // 2]:.2f} s")


if __name__ == "__main__":
    main()

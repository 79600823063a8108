"""Backup and restore throughput of volbackup beside the usual recipe and the machine's limit.

    python benchmarks/run.py --size-mib 1024 --repeat 3 [--no-direct] [--json out.json]
    python benchmarks/run.py --quick --json out.json      # 64 MiB, 1 round: does it run?

Run as root beside a Docker engine (the test volume is written through its host
mountpoint; the host pipelines read and write mountpoints). Contenders, all zstd level 3:
  backup   volbackup: `volbackup backup VOL -r REPO` (a fresh repository each time)
           recipe:    `docker run --rm --log-driver none --volumes-from SRC
                       volbackup-bench-busybox:1 tar -cf - /data | zstd -T0 -3 > FILE`
           limit:     `tar -cf - -C MOUNTPOINT . | zstd -T0 -3 > FILE` on the host
  restore  volbackup: `volbackup restore VOL --as NEW -r REPO`
           limit:     `zstd -dc FILE | tar -xf - -C NEW_MOUNTPOINT` on the host
One warm-up round, then --repeat rounds; the order of the contenders rotates each round.
Backups read a warm volume (the page cache is not dropped). Restores read their archive
from disk: before the restores of a round, both archives are evicted from the page cache
and the harness pauses 3 s (see benchrun.prepare_archives; --warm-archives reads them
into the cache instead). Dirty pages are written back
(sync) before each step, untimed. The host pipelines end
with `sync FILE` because volbackup fsyncs its archive (--no-fsync: the bare commands).
Throughput is the uncompressed volume size over wall time (process start to exit).
Peak RSS is the volbackup process's own VmHWM (polled from /proc; not wait4's ru_maxrss, which
starts from this harness's size); with --rss-double (default)
a volume twice as large, built the same way, is backed up and restored once more.
Everything made is named vbbench-<random>- and removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys

import docker
from benchimage import ImageError, ensure_image
import benchrun
from benchrun import MIB, Bench, busy_fraction, publish, run_steps, volbackup_cmd
from benchvolume import Shape, fill, parse_mix

BACKUPS = ("backup:volbackup", "backup:recipe", "backup:limit")
RESTORES = ("restore:volbackup", "restore:limit")
LABELS = {"backup:volbackup": "volbackup backup",
          "backup:recipe": "recipe: docker run busybox tar | zstd",
          "backup:limit": "limit: host tar | zstd",
          "restore:volbackup": "volbackup restore",
          "restore:limit": "limit: host zstd -dc | tar -x"}


def rotated(items: tuple, n: int) -> tuple:
    n %= len(items)
    return items[n:] + items[:n]


def measure(bench: Bench, shape: Shape, repeat: int) -> dict:
    volume, mountpoint = bench.volume("vol")
    stats = fill(mountpoint, shape)
    src = bench.source_container(volume)
    runs = {key: [] for key in BACKUPS + RESTORES}
    repo = archive = None
    for rnd in range(repeat + 1):          # round 0 is the warm-up
        for key in rotated(BACKUPS, rnd):
            if key == "backup:volbackup":
                seconds, rss, size, new_repo, result = bench.backup_volbackup(volume)
                if repo:
                    shutil.rmtree(repo)
                repo = new_repo
            elif key == "backup:recipe":
                seconds, rss, size, _ = bench.backup_recipe(src)
            else:
                seconds, rss, size, archive = bench.backup_limit(mountpoint)
            runs[key].append(sample(rnd, seconds, stats, rss, size,
                                    result if key == "backup:volbackup" else None))
        benchrun.prepare_archives(repo, archive)
        for key in rotated(RESTORES, rnd):
            if key == "restore:volbackup":
                seconds, rss, result = bench.restore_volbackup(volume, repo)
            else:
                (seconds, rss), result = bench.restore_limit(archive), None
            runs[key].append(sample(rnd, seconds, stats, rss, result=result))
    shutil.rmtree(repo)
    return {"volume": stats, "contenders": {key: summarise(key, r) for key, r in runs.items()}}


def measure_double(bench: Bench, shape: Shape) -> dict:
    """One backup and one restore of a volume twice as large: peak RSS must not grow."""
    volume, mountpoint = bench.volume("vol2x")
    stats = fill(mountpoint, shape)
    b_sec, b_rss, size, repo, b_result = bench.backup_volbackup(volume)
    benchrun.prepare_archives(repo)
    r_sec, r_rss, r_result = bench.restore_volbackup(volume, repo)
    shutil.rmtree(repo)
    return {"volume": stats, "backup": sample(1, b_sec, stats, b_rss, size, b_result),
            "restore": sample(1, r_sec, stats, r_rss, result=r_result)}


def sample(rnd: int, seconds: float, stats: dict, rss: float | None, size: int | None = None,
           result: dict | None = None) -> dict:
    """One timed step; `result` is volbackup's own JSON for its volume (its `seconds` leave
    out start-up, its `via` says which path was taken)."""
    out = {"round": rnd, "warmup": rnd == 0, "seconds": round(seconds, 4),
           "mib_s": round(stats["mib"] / seconds, 2)}
    if result is not None:
        out["volume_seconds"], out["via"] = result["seconds"], result["via"]
        out["usage"] = result["usage"]
    if rss is not None:
        out["peak_rss_mib"] = round(rss, 1)
    if size is not None:
        out["archive_bytes"] = size
    return out


def summarise(key: str, runs: list[dict]) -> dict:
    measured = [r for r in runs if not r["warmup"]]
    speeds = [r["mib_s"] for r in measured]
    out = {"label": LABELS[key], "median_mib_s": round(statistics.median(speeds), 2),
           "min_mib_s": min(speeds), "max_mib_s": max(speeds), "runs": runs}
    if "peak_rss_mib" in runs[0]:
        out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in measured)
    if "archive_bytes" in runs[0]:
        out["archive_mib"] = round(runs[-1]["archive_bytes"] / MIB, 1)
    if "volume_seconds" in runs[0]:
        out["median_seconds"] = statistics.median(r["seconds"] for r in measured)
        out["median_volume_seconds"] = statistics.median(r["volume_seconds"] for r in measured)
        out["via"] = sorted({r["via"] for r in runs})
    return out


def ratios(contenders: dict) -> dict:
    med = {key: c["median_mib_s"] for key, c in contenders.items()}
    return {"backup_volbackup_vs_recipe": round(med["backup:volbackup"] / med["backup:recipe"], 3),
            "backup_volbackup_vs_limit": round(med["backup:volbackup"] / med["backup:limit"], 3),
            "backup_recipe_vs_limit": round(med["backup:recipe"] / med["backup:limit"], 3),
            "restore_volbackup_vs_limit": round(med["restore:volbackup"] / med["restore:limit"], 3)}


def environment(client: docker.DockerClient) -> dict:
    def out(*cmd: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              cwd=os.path.dirname(__file__))
        return done.stdout.rstrip() if done.returncode == 0 else "?"

    info, version = client.info(), client.version()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(info["MemTotal"] / 2**30, 1),
            "kernel": platform.release(), "engine_version": version["Version"],
            "api_version": version["ApiVersion"], "storage_driver": info["Driver"],
            "docker_root_dir": info["DockerRootDir"], "python": platform.python_version(),
            "zstd": out("zstd", "--version").strip("* "), "tar": out("tar", "--version").splitlines()[0],
            "volbackup": out(*volbackup_cmd(), "--version"),
            "git_commit": out("git", "rev-parse", "--short", "HEAD"),
            "volbackup_uncommitted_files": out("git", "status", "--porcelain", "--", "../volbackup")
            .splitlines()}


def report(result: dict) -> str:
    cfg, vol, c, r = result["config"], result["volume"], result["contenders"], result["ratios"]
    lines = [(f"volume {vol['mib']:.0f} MiB: {vol['files']:,} files ({vol['large_files']} large), "
             f"seed {cfg['seed']}; zstd level 3; {result['environment']['cpus']} CPUs"),
             (f"{cfg['repeat']} round(s) after 1 warm-up round, contenders alternated; backups from "
             f"a warm volume, restores from archives "
             f"{'in' if cfg.get('warm_archives') else 'out of'} the page cache; host pipelines "
             f"{'end with `sync FILE`' if cfg['fsync'] else 'not synced'}"),
             "MiB/s of the uncompressed volume size", "",
             f"{'':40}{'median':>8}  {'min-max':>13}  {'/recipe':>7}  {'/limit':>7}  "
             f"{'peak RSS':>10}  {'archive':>10}"]
    ratio = {"backup:volbackup": (r["backup_volbackup_vs_recipe"], r["backup_volbackup_vs_limit"]),
             "backup:recipe": (None, r["backup_recipe_vs_limit"]),
             "restore:volbackup": (None, r["restore_volbackup_vs_limit"])}
    for key, row in c.items():
        if key in ("backup:volbackup", "restore:volbackup"):
            lines.append(key.split(":")[0].upper())
        vs = ratio.get(key, (None, None))
        cells = [f"{x:.2f}x" if x else "" for x in vs]
        rss = f"{row['peak_rss_mib']:.1f} MiB" if "peak_rss_mib" in row else ""
        arc = f"{row['archive_mib']:.1f} MiB" if "archive_mib" in row else ""
        lines.append(f"  {row['label']:38}{row['median_mib_s']:>8.1f}  "
                     f"{row['min_mib_s']:>6.1f}-{row['max_mib_s']:<6.1f}  {cells[0]:>7}  {cells[1]:>7}  "
                     f"{rss:>10}  {arc:>10}")
    lines.append("")
    for key in ("backup:volbackup", "restore:volbackup"):
        row = c[key]
        lines.append(f"{key.split(':')[0]}: volbackup took {row['median_seconds']:.2f} s (median), of which "
                     f"{row['median_volume_seconds']:.2f} s for the volume itself (the rest: start-up, "
                     f"engine calls, lock); path: {', '.join(row['via'])}")
    if "double" in result:
        d = result["double"]
        lines += ["", f"peak RSS of volbackup{'':6}{vol['mib']:>6.0f} MiB vol  "
                      f"{d['volume']['mib']:>6.0f} MiB vol",
                  *(f"  {op:25}{c[key]['peak_rss_mib']:>10.1f} MiB  {d[op]['peak_rss_mib']:>10.1f} MiB"
                    f"   ({d[op]['mib_s']:.0f} MiB/s, 1 run)"
                    for op, key in (("backup", "backup:volbackup"), ("restore", "restore:volbackup")))]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--size-mib", type=int, default=1024, help="volume size (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds after the warm-up (default 3)")
    p.add_argument("--large-files", type=int, default=4, help="number of large files (default 4)")
    p.add_argument("--large-share", type=float, default=0.78,
                   help="share of the volume in the large files (default 0.78: 4 x ~200 MiB of 1 GiB)")
    p.add_argument("--small-mix", default="text=5,random=3,zeros=2",
                   help="kinds of the small files by weight (default text=5,random=3,zeros=2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rss-double", action=argparse.BooleanOptionalAction, default=True,
                   help="also back up and restore a volume twice as large (default on)")
    p.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                   help="end the host pipelines with `sync FILE` like volbackup's fsync (default on)")
    p.add_argument("--quick", action="store_true", help="64 MiB, 1 round (overrides --size-mib/--repeat)")
    p.add_argument("--no-direct", action="store_true",
                   help="run volbackup backup/restore with --no-direct (through the engine's archive "
                        "endpoints; the default reads this idle volume directly with GNU tar)")
    p.add_argument("--warm-archives", action="store_true",
                   help="restores read archives from the page cache (read once, untimed) instead of "
                        "from disk")
    p.add_argument("--perf-dir", metavar="DIR",
                   help="record each volbackup run system-wide with `perf record -a -g` into DIR "
                        "(backup-N.data, restore-N.data; for diagnosis: the peak RSS is perf's)")
    p.add_argument("--json", metavar="PATH", help="write all raw numbers to PATH")
    args = p.parse_args()
    if args.quick:
        args.size_mib, args.repeat = 64, 1
    if args.no_direct:
        benchrun.VOLBACKUP_ARGS.append("--no-direct")
        for key in ("backup:volbackup", "restore:volbackup"):
            LABELS[key] += " --no-direct"
    benchrun.WARM_ARCHIVES = args.warm_archives
    if args.perf_dir:
        os.makedirs(args.perf_dir, exist_ok=True)
        benchrun.PERF_DIR = args.perf_dir
    if args.repeat < 1 or args.size_mib < 1 or not 0 <= args.large_share < 1:
        p.error("--repeat and --size-mib must be >= 1, --large-share in [0, 1)")
    try:
        shape = Shape(args.size_mib, args.large_files, args.large_share, parse_mix(args.small_mix), args.seed)
    except ValueError as e:
        p.error(str(e))

    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM cleans up like Ctrl-C
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        image = ensure_image()
    except (docker.errors.DockerException, ImageError) as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 1
    bench = Bench(client, f"vbbench-{secrets.token_hex(3)}-", image, args.fsync)
    result = {"prefix": bench.prefix, "config": {**vars(args), "small_mix": shape.small_mix},
              "environment": environment(client)}
    print(f"run.py: {bench.prefix}*, {args.size_mib} MiB, {args.repeat} round(s) + warm-up ...",
          file=sys.stderr)
    need = args.size_mib * (2 * args.repeat + 5 + (6 if args.rss_double else 0)) * MIB
    free = min(shutil.disk_usage(result["environment"]["docker_root_dir"]).free,
               shutil.disk_usage(bench.work).free)
    if free < need:
        bench.cleanup()
        print(f"run.py: needs about {need / 2**30:.1f} GiB of free disk (restored volumes are kept "
              f"until the end), has {free / 2**30:.1f} GiB", file=sys.stderr)
        return 1
    busy = result["environment"]["cpu_busy_before"] = round(busy_fraction(), 3)
    if busy > 0.1:
        print(f"run.py: warning: the CPUs were {busy:.0%} busy before the start: something else is "
              "running; the figures will be noisy", file=sys.stderr)
    def steps() -> None:
        result.update(measure(bench, shape, args.repeat))
        result["ratios"] = ratios(result["contenders"])
        if args.rss_double:
            result["double"] = measure_double(bench, shape.scaled(2))

    code = run_steps("run.py", bench, steps)
    if code:
        return code
    publish(result, report(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

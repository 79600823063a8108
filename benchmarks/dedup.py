"""Chunked repositories measured: speed against the archive layout, what dedup saves, memory.

    python benchmarks/dedup.py [--size-mib 1024] [--repeat 3] [--sections speed,dedup,sizes]
    python benchmarks/dedup.py --sections daily --daily-mib 256 [--layout packed] [--daily-chunk-size 1M]
        [--daily-keep DIR]     # then: python benchmarks/daily_bytes.py DIR
    python benchmarks/dedup.py --sections rss --rss-sizes 1024,2048,4096
    python benchmarks/dedup.py --sections prune --prune-chunks 100000     # S3 (moto server)
    python benchmarks/dedup.py --quick --json out.json                       # does it run?

Run as root beside a Docker engine. The volume holds unique data (uniquevolume.py: no
repeated blocks), so every saving is dedup's own. Sections:
  speed   per round, in rotating order: the first backup into a fresh archive-layout
          repository and into a fresh chunked one, a second backup of the unchanged volume
          into the chunked one, then (repositories evicted from the page cache) a restore
          of each; new bytes = growth of the repository directory.
  dedup   into one chunked repository holding the volume: the volume after a ~1.5 % change
          (a copy, changed: uniquevolume.change), an identical copy in another volume, and
          two more identical copies backed up at once by two processes ("two hosts").
  parts   which part of that change costs what: each of its three kinds alone (appends to
          1 % of the small files, a block rewritten in a large file, files added and removed).
  sizes   per chunk size (`volbackup init --chunk-size`), rounds rotating: the first backup
          and the changed volume's backup; new bytes, objects per GiB, requests.
  daily   --days snapshots of a volume of --daily-mib changing 1 % a day; repository size.
  rss     peak RSS (VmHWM) of a chunked backup and restore at each of --rss-sizes.
  prune   (benchmarks/dedup_prune.py) prune of a repository of --prune-chunks chunks on S3.
  encryption  per round, in rotating order: the first backup into a fresh plain chunked
          repository and into a fresh encrypted one (`init --encrypt-to`, one age
          recipient), then (evicted) a restore from each.
Everything made is named vbbench-<random>- and removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading

import docker
import benchrun
from benchrun import (MIB, StepFailed, busy_fraction, dir_bytes, publish, run_steps, timed,
                      volbackup_cmd, volbackup_timed)
import uniquevolume

SECTIONS = ("speed", "dedup", "parts", "sizes", "daily", "rss", "prune", "encryption")
CHUNK_SIZES = ("512K", "1M", "2M", "4M")
INIT_ARGS: list[str] = []   # --layout (chunked unless --layout), --chunker


class Dedup:
    """The resources of one run (all named `<prefix>...`) and its volbackup steps."""

    def __init__(self, client: docker.DockerClient, prefix: str):
        self.client, self.prefix = client, prefix
        self.work = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
        self.numbers = itertools.count(1)   # next() is atomic: peers.py names from threads

    def name(self, stem: str) -> str:
        return f"{self.prefix}{stem}-{next(self.numbers)}"

    def volume(self, stem: str) -> tuple[str, str]:
        name = self.name(stem)
        self.client.volumes.create(name)
        return name, self.client.api.inspect_volume(name)["Mountpoint"]

    def copy(self, mountpoint: str, stem: str) -> tuple[str, str]:
        """A new volume with the same files, modes and times (cp -a)."""
        name, target = self.volume(stem)
        subprocess.run(["cp", "-a", f"{mountpoint}/.", target], check=True)
        return name, target

    def repo(self, chunk_size: str | None, *init_args: str) -> str:
        """A fresh repository directory: made by `volbackup init` (with INIT_ARGS, then
        `init_args`) unless chunk_size is None; chunk_size "default" gives no --chunk-size
        (the layout's own)."""
        path = tempfile.mkdtemp(prefix="repo-", dir=self.work)
        if chunk_size:
            size = [] if chunk_size == "default" else ["--chunk-size", chunk_size]
            timed([*volbackup_cmd(), "init", "-r", path, *size, *INIT_ARGS, *init_args],
                  "volbackup init")
        return path

    def backup(self, volume: str, repo: str, *extra: str) -> dict:
        before = dir_bytes(repo)
        seconds, rss, result = volbackup_timed(["backup", volume, "-r", repo, *extra],
                                               "volbackup backup")
        return {"seconds": round(seconds, 3), "rss_mib": round(rss, 1), "via": result["via"],
                "bytes": result["bytes"], "stored_bytes": result["stored_bytes"],
                "new_bytes": dir_bytes(repo) - before,
                "files_cache": result.get("files_cache"), **_usage(result)}

    def restore(self, volume: str, repo: str, *extra: str) -> dict:
        """Restore `volume`'s latest snapshot into a new volume (its name: `volume` below)."""
        target = self.name("restored")
        seconds, rss, result = volbackup_timed(
            ["restore", volume, "--as", target, "-r", repo, *extra], "volbackup restore")
        return {"seconds": round(seconds, 3), "rss_mib": round(rss, 1), "via": result["via"],
                "volume": target, **_usage(result)}

    def cleanup(self) -> list[str]:
        problems = []
        for volume in self.client.volumes.list(filters={"name": self.prefix}):
            if volume.name.startswith(self.prefix):
                try:
                    volume.remove(force=True)
                except docker.errors.APIError as e:
                    problems.append(f"volume {volume.name}: {e}")
        shutil.rmtree(self.work, ignore_errors=True)
        return problems


def _usage(result: dict) -> dict:
    """CPU seconds (user + sys, GNU tar's included) and the process tree's peak RSS."""
    usage = result["usage"]
    return {"cpu_seconds": round(usage["cpu_user"] + usage["cpu_sys"], 3),
            "tree_rss_mib": usage["tree_rss_mib"]}


def chunk_objects(repo: str) -> int:
    """Data objects: chunks (chunked layout) or packs (packed)."""
    return sum(len(files) for top in ("chunks", "packs")
               for _, _, files in os.walk(os.path.join(repo, top)))


def objects_by_kind(repo: str) -> dict[str, int]:
    """Objects under each of a repository's data folders (chunks/, packs/, index/)."""
    return {top: sum(len(files) for _, _, files in os.walk(os.path.join(repo, top)))
            for top in ("chunks", "packs", "index")}


def indexed_blobs(repo: str) -> int:
    """Blob entries in a packed repository's index objects (the header's blob count,
    docs/format.md "Index objects"): what a backup holds in memory, about 51 bytes each."""
    total = 0
    folder = os.path.join(repo, "index")
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        with open(os.path.join(folder, name), "rb") as f:
            magic, _, _, _, blobs = struct.unpack("<7sBBII", f.read(17))
        if magic != b"VBINDEX":
            raise StepFailed(f"index/{name} is not an index object")
        total += blobs
    return total


def size_name(n: int) -> str:
    """As `init --chunk-size` spells it: 512K, 1M."""
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n >> 10}K"


def med(values: list[float]) -> float:
    return statistics.median(values)


# -- sections -----------------------------------------------------------------------------

def encryption(bench: Dedup, volume: str, mib: float, repeat: int) -> dict:
    from pyrage import x25519

    identity = x25519.Identity.generate()
    runs: dict[str, list[dict]] = {k: [] for k in ("plain_backup", "encrypted_backup",
                                                   "plain_restore", "encrypted_restore")}
    for rnd in range(repeat + 1):          # round 0 is the warm-up
        repos = {"plain": bench.repo("1M")}
        path = tempfile.mkdtemp(prefix="repo-", dir=bench.work)
        key = os.path.join(bench.work, f"key-{rnd}")
        timed([*volbackup_cmd(), "init", "-r", path, "--encrypt-to", str(identity.to_public()),
               "--key-file", key, *INIT_ARGS], "volbackup init --encrypt-to")
        ident = os.path.join(bench.work, f"identity-{rnd}")
        with open(ident, "w") as f:
            f.write(f"{identity}\n{open(key).read()}")
        repos["encrypted"] = path
        secrets_for = {"plain": [], "encrypted": ["--key-file", key]}
        order = ("plain", "encrypted") if rnd % 2 else ("encrypted", "plain")
        for kind in order:
            before = dir_bytes(repos[kind])
            seconds, rss_mib, _ = volbackup_timed(
                ["backup", volume, "-r", repos[kind], *secrets_for[kind]], f"backup ({kind})")
            runs[f"{kind}_backup"].append({"round": rnd, "seconds": round(seconds, 3),
                                           "rss_mib": round(rss_mib, 1),
                                           "new_bytes": dir_bytes(repos[kind]) - before})
        benchrun.prepare_archives(*repos.values())
        reading = {"plain": [], "encrypted": ["--identity", ident]}
        for kind in reversed(order):
            seconds, rss_mib, _ = volbackup_timed(
                ["restore", volume, "--as", bench.name("restored"), "-r", repos[kind],
                 *reading[kind]], f"restore ({kind})")
            runs[f"{kind}_restore"].append({"round": rnd, "seconds": round(seconds, 3),
                                            "rss_mib": round(rss_mib, 1)})
        for path in repos.values():
            shutil.rmtree(path)
    out = {}
    for key_, rows in runs.items():
        measured = [r for r in rows if r["round"] > 0]
        out[key_] = {"median_seconds": med([r["seconds"] for r in measured]),
                     "median_mib_s": round(mib / med([r["seconds"] for r in measured]), 1),
                     "peak_rss_mib": max(r["rss_mib"] for r in measured), "runs": rows}
    out["ratios"] = {
        "backup_encrypted_vs_plain": round(out["plain_backup"]["median_seconds"]
                                           / out["encrypted_backup"]["median_seconds"], 3),
        "restore_encrypted_vs_plain": round(out["plain_restore"]["median_seconds"]
                                            / out["encrypted_restore"]["median_seconds"], 3)}
    return out


def speed(bench: Dedup, volume: str, mib: float, repeat: int) -> dict:
    runs: dict[str, list[dict]] = {k: [] for k in ("archive_first", "chunked_first",
                                                   "chunked_second", "archive_restore",
                                                   "chunked_restore")}
    for rnd in range(repeat + 1):          # round 0 is the warm-up
        repos = {}
        for layout in (("archive", "chunked") if rnd % 2 else ("chunked", "archive")):
            repos[layout] = bench.repo("1M" if layout == "chunked" else None)
            step = bench.backup(volume, repos[layout])
            runs[f"{layout}_first"].append({"round": rnd, **step})
        runs["chunked_second"].append({"round": rnd, **bench.backup(volume, repos["chunked"])})
        benchrun.prepare_archives(*repos.values())
        for layout in (("archive", "chunked") if rnd % 2 == 0 else ("chunked", "archive")):
            runs[f"{layout}_restore"].append({"round": rnd, **bench.restore(volume, repos[layout])})
        for path in repos.values():
            shutil.rmtree(path)
    out = {}
    for key, rows in runs.items():
        measured = [r for r in rows if r["round"] > 0]
        out[key] = {"median_seconds": med([r["seconds"] for r in measured]),
                    "median_mib_s": round(mib / med([r["seconds"] for r in measured]), 1),
                    "peak_rss_mib": max(r["rss_mib"] for r in measured),
                    "via": sorted({r["via"] for r in rows}), "runs": rows}
        if "new_bytes" in rows[0]:
            out[key]["median_new_bytes"] = med([r["new_bytes"] for r in measured])
    full = out["chunked_first"]["median_new_bytes"]
    out["ratios"] = {
        "first_chunked_vs_archive": round(out["archive_first"]["median_seconds"]
                                          / out["chunked_first"]["median_seconds"], 3),
        "restore_chunked_vs_archive": round(out["archive_restore"]["median_seconds"]
                                            / out["chunked_restore"]["median_seconds"], 3),
        "second_vs_first_speedup": round(out["chunked_first"]["median_seconds"]
                                         / out["chunked_second"]["median_seconds"], 3),
        "second_new_pct": round(100 * out["chunked_second"]["median_new_bytes"] / full, 3),
        "archive_vs_chunked_size": round(out["archive_first"]["median_new_bytes"] / full, 3)}
    return out


def dedup(bench: Dedup, volume: str, mountpoint: str, seed: int) -> dict:
    repo = bench.repo("1M")
    first = bench.backup(volume, repo)
    full = first["new_bytes"]
    changed, changed_mp = bench.copy(mountpoint, "changed")
    change = uniquevolume.change(changed_mp, seed + 1000)
    copy, _ = bench.copy(mountpoint, "copy")
    hosts = [bench.copy(mountpoint, f"host{i}")[0] for i in (1, 2)]
    rows = {"first": first, "changed": bench.backup(changed, repo),
            "identical_copy": bench.backup(copy, repo)}
    before = dir_bytes(repo)
    together: dict[str, dict] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            together[name] = bench.backup(name, repo)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    rows["two_hosts_at_once"] = {"new_bytes": dir_bytes(repo) - before,
                                 "stored_bytes": sum(r["stored_bytes"] for r in together.values()),
                                 "seconds": max(r["seconds"] for r in together.values())}
    for row in rows.values():
        row["new_pct"] = round(100 * row["new_bytes"] / full, 3)
    shutil.rmtree(repo)
    return {"change": change, "rows": rows, "full_snapshot_bytes": full}


def parts(bench: Dedup, volume: str, mountpoint: str, seed: int, chunk_size: str = "1M") -> dict:
    repo = bench.repo(chunk_size)
    full = bench.backup(volume, repo)["new_bytes"]
    out = {"chunk_size": chunk_size, "full_snapshot_bytes": full, "rows": {}}
    for part in uniquevolume.PARTS:
        changed, changed_mp = bench.copy(mountpoint, part)
        change = uniquevolume.change(changed_mp, seed + 1000, parts=(part,))
        row = bench.backup(changed, repo)
        out["rows"][part] = {"change": change, "new_bytes": row["new_bytes"],
                             "new_pct": round(100 * row["new_bytes"] / full, 2)}
        bench.client.volumes.get(changed).remove(force=True)
    shutil.rmtree(repo)
    return out


def sizes(bench: Dedup, volume: str, mountpoint: str, mib: float, seed: int, repeat: int) -> dict:
    changed, changed_mp = bench.copy(mountpoint, "changed")
    change = uniquevolume.change(changed_mp, seed + 1000)
    runs: dict[str, list[dict]] = {s: [] for s in CHUNK_SIZES}
    for rnd in range(repeat):
        order = CHUNK_SIZES[rnd % 4:] + CHUNK_SIZES[:rnd % 4]
        for size in order:
            repo = bench.repo(size)
            first = bench.backup(volume, repo)
            objects = chunk_objects(repo)
            after = bench.backup(changed, repo)
            runs[size].append({"first": first, "changed": after, "objects": objects,
                               "new_objects": chunk_objects(repo) - objects})
            shutil.rmtree(repo)
    out = {"change": change, "by_size": {}}
    for size, rows in runs.items():
        first_s = med([r["first"]["seconds"] for r in rows])
        full = med([r["first"]["new_bytes"] for r in rows])
        objects = med([r["objects"] for r in rows])
        out["by_size"][size] = {
            "first_mib_s": round(mib / first_s, 1), "first_seconds": first_s,
            "full_bytes": full, "objects": objects,
            "objects_per_gib": round(objects * 1024 / mib),
            "mean_chunk_kib": round(mib * 1024 / objects, 1),
            "changed_new_pct": round(100 * med([r["changed"]["new_bytes"] for r in rows]) / full, 2),
            "changed_new_objects": med([r["new_objects"] for r in rows]),
            "changed_seconds": med([r["changed"]["seconds"] for r in rows]),
            "runs": rows}
    return out


def daily(bench: Dedup, mib: int, days: int, seed: int, chunk_size: str = "default",
          keep: str | None = None) -> dict:
    volume, mountpoint = bench.volume("daily")
    stats = uniquevolume.fill(mountpoint, mib, seed)
    repo = bench.repo(chunk_size)
    with open(os.path.join(repo, "config")) as f:
        chunker = json.load(f)["chunker"]
    rows = []
    for day in range(days):
        if day:
            rows[-1]["change"] = uniquevolume.change(mountpoint, seed + day, share=0.01)
        step = bench.backup(volume, repo)
        rows.append({"day": day + 1, **step, "repo_bytes": dir_bytes(repo)})
    full = rows[0]["new_bytes"]
    out = {"volume": stats, "days": days, "full_snapshot_bytes": full,
           "repo_bytes": rows[-1]["repo_bytes"], "repo_vs_full": round(rows[-1]["repo_bytes"] / full, 3),
           "chunk_objects": chunk_objects(repo), "objects": objects_by_kind(repo),
           "indexed_blobs": indexed_blobs(repo),
           "chunk_size": size_name(chunker["avg_size"]), "chunker": chunker, "rows": rows}
    if keep:    # for benchmarks/daily_bytes.py, which says where each day's bytes went
        shutil.move(repo, keep)
        out["kept"] = keep
    else:
        shutil.rmtree(repo)
    return out


def rss(bench: Dedup, sizes_mib: list[int], seed: int) -> list[dict]:
    rows = []
    for mib in sizes_mib:
        volume, mountpoint = bench.volume(f"rss{mib}")
        uniquevolume.fill(mountpoint, mib, seed)
        repo = bench.repo("1M")
        b = bench.backup(volume, repo)
        benchrun.prepare_archives(repo)
        r = bench.restore(volume, repo)
        rows.append({"mib": mib, "backup_rss_mib": b["rss_mib"], "restore_rss_mib": r["rss_mib"],
                     "backup_mib_s": round(mib / b["seconds"], 1),
                     "restore_mib_s": round(mib / r["seconds"], 1)})
        shutil.rmtree(repo)
        bench.client.volumes.get(volume).remove(force=True)
    return rows


def prune(chunks: int) -> dict:
    script = os.path.join(os.path.dirname(__file__), "dedup_prune.py")
    done = subprocess.run([sys.executable, script, "--chunks", str(chunks), "--json"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StepFailed(f"dedup_prune.py failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


# -- report -------------------------------------------------------------------------------

def pct(n: float) -> str:
    return f"{n:.2f} %"


def report(result: dict) -> str:
    lines = []
    vol = result.get("volume")
    if vol:
        lines.append(f"volume {vol['mib']:.0f} MiB of unique data: {vol['files']:,} files "
                     f"({vol['large_files']} large); {result['cpus']} CPUs; load before: "
                     f"{result['load_before']}; volbackup {' '.join(result['volbackup_args']) or '(direct)'}")
    if "speed" in result:
        s = result["speed"]
        r = s["ratios"]
        lines += ["", f"SPEED (median of {result['repeat']} rounds after a warm-up)",
                  f"  {'':34}{'MiB/s':>8}  {'seconds':>8}  {'peak RSS':>9}  {'new bytes':>12}  via"]
        for key in ("archive_first", "chunked_first", "chunked_second", "archive_restore",
                    "chunked_restore"):
            row = s[key]
            new = f"{row['median_new_bytes'] / MIB:.1f} MiB" if "median_new_bytes" in row else ""
            lines.append(f"  {key.replace('_', ' '):34}{row['median_mib_s']:>8.1f}  "
                         f"{row['median_seconds']:>8.2f}  {row['peak_rss_mib']:>5.1f} MiB  {new:>12}  "
                         f"{','.join(row['via'])}")
        lines += [f"  first backup chunked/archive speed: {r['first_chunked_vs_archive']:.2f}x "
                  f"(target >= 0.9x)",
                  f"  restore chunked/archive speed:      {r['restore_chunked_vs_archive']:.2f}x "
                  f"(target >= 0.9x)",
                  f"  second backup (unchanged): {pct(r['second_new_pct'])} new (target < 1 %), "
                  f"{r['second_vs_first_speedup']:.2f}x faster than the first (target >= 3x)",
                  f"  archive size / chunked full snapshot: {r['archive_vs_chunked_size']:.3f}"]
    if "dedup" in result:
        d = result["dedup"]
        lines += ["", f"DEDUP (chunk size 1M; full snapshot {d['full_snapshot_bytes'] / MIB:.1f} MiB; "
                      f"change: {d['change']['changed_pct']} % of the volume)"]
        targets = {"changed": "<= 3 %", "identical_copy": "< 1 %", "two_hosts_at_once": "< 1 % (both)"}
        for key, row in d["rows"].items():
            if key == "first":
                continue
            lines.append(f"  {key.replace('_', ' '):24}{row['new_bytes'] / MIB:>9.2f} MiB new  "
                         f"{pct(row['new_pct']):>9}  (target {targets[key]})")
    if "parts" in result:
        z = result["parts"]
        lines += ["", f"PARTS OF THE CHANGE (chunk size {z['chunk_size']}; each alone, against the "
                      f"unchanged volume)"]
        for part, row in z["rows"].items():
            c = row["change"]
            lines.append(f"  {part:12}{c['changed'] / MIB:>8.2f} MiB changed ({c['changed_pct']:.2f} %)"
                         f"  {row['new_bytes'] / MIB:>8.2f} MiB new  {pct(row['new_pct']):>9}")
    if "sizes" in result:
        z = result["sizes"]
        lines += ["", f"CHUNK SIZE (change: {z['change']['changed_pct']} % of the volume; medians "
                      f"of {result['repeat']} rounds)",
                  f"  {'size':>5}  {'mean chunk':>10}  {'objects/GiB':>11}  {'first MiB/s':>11}  "
                  f"{'changed: new':>12}  {'new objects':>11}"]
        for size, row in z["by_size"].items():
            lines.append(f"  {size:>5}  {row['mean_chunk_kib']:>6.0f} KiB  {row['objects_per_gib']:>11}  "
                         f"{row['first_mib_s']:>11.1f}  {pct(row['changed_new_pct']):>12}  "
                         f"{row['changed_new_objects']:>11.0f}")
    if "daily" in result:
        d = result["daily"]
        o = d["objects"]
        lines += ["", f"DAILY ({d['days']} snapshots of {d['volume']['mib']:.0f} MiB changing 1 % a day; "
                      f"chunk size {d['chunk_size']})",
                  f"  repository {d['repo_bytes'] / MIB:.1f} MiB = {d['repo_vs_full']:.3f}x one full "
                  f"snapshot ({d['full_snapshot_bytes'] / MIB:.1f} MiB; target <= 1.4x); "
                  f"{o['chunks']} chunk objects, {o['packs']} packs, {o['index']} index objects "
                  f"naming {d['indexed_blobs']} blobs",
                  "  new MiB per day: " + " ".join(f"{r['new_bytes'] / MIB:.1f}" for r in d["rows"][1:])]
    if "rss" in result:
        lines += ["", "PEAK RSS (chunked repository, 1 run each; target < 150 MB and flat)",
                  f"  {'volume':>8}  {'backup':>10}  {'restore':>10}  {'backup':>11}  {'restore':>11}"]
        for r in result["rss"]:
            lines.append(f"  {r['mib']:>4} MiB  {r['backup_rss_mib']:>6.1f} MiB  "
                         f"{r['restore_rss_mib']:>6.1f} MiB  {r['backup_mib_s']:>5.0f} MiB/s  "
                         f"{r['restore_mib_s']:>5.0f} MiB/s")
    if "encryption" in result:
        e = result["encryption"]
        r = e["ratios"]
        lines += ["", f"ENCRYPTION (median of {result['repeat']} rounds after a warm-up; one age "
                      f"recipient)",
                  f"  {'':20}{'MiB/s':>8}  {'seconds':>8}  {'peak RSS':>9}"]
        for key in ("plain_backup", "encrypted_backup", "plain_restore", "encrypted_restore"):
            row = e[key]
            lines.append(f"  {key.replace('_', ' '):20}{row['median_mib_s']:>8.1f}  "
                         f"{row['median_seconds']:>8.2f}  {row['peak_rss_mib']:>5.1f} MiB")
        lines += [f"  backup encrypted/plain speed:  {r['backup_encrypted_vs_plain']:.2f}x "
                  f"(target >= 0.9x)",
                  f"  restore encrypted/plain speed: {r['restore_encrypted_vs_plain']:.2f}x "
                  f"(target >= 0.9x)"]
    if "prune" in result:
        p = result["prune"]
        lines += ["", f"PRUNE on S3 (moto server): {p['chunks']} chunks, {p['referenced']} referenced",
                  f"  write {p['write_seconds']:.1f} s; prune {p['prune_seconds']:.1f} s "
                  f"(removed {p['removed']}); dry run {p['dry_run_seconds']:.1f} s; "
                  f"prune peak RSS {p['prune_rss_mib']:.1f} MiB"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--size-mib", type=int, default=1024, help="volume size (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--sections", default="speed,dedup,sizes",
                   help=f"comma-separated, of {','.join(SECTIONS)} (default speed,dedup,sizes)")
    p.add_argument("--daily-mib", type=int, default=256)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--daily-chunk-size", default="default", help="init --chunk-size of the "
                   "daily section's repository (default: the layout's, 256K packed, 1M chunked)")
    p.add_argument("--daily-keep", metavar="DIR", help="move the daily section's repository "
                   "to DIR (which must not exist) instead of removing it")
    p.add_argument("--rss-sizes", default="1024,2048,4096")
    p.add_argument("--prune-chunks", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--no-direct", action="store_true", help="volbackup backup/restore --no-direct")
    p.add_argument("--chunker", choices=("members", "stream"),
                   help="volbackup init --chunker (default: volbackup's default, members)")
    p.add_argument("--layout", choices=("chunked", "packed"), default="chunked",
                   help="volbackup init --layout (default chunked, what the sections measure "
                        "in docs/performance.md; volbackup init's own default is packed)")
    p.add_argument("--quick", action="store_true",
                   help="every section at toy sizes (16 MiB, 1 round, 3 days, 500 chunks)")
    p.add_argument("--json", metavar="PATH", help="write all raw numbers to PATH")
    args = p.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    if args.quick:
        args.size_mib, args.repeat, args.daily_mib, args.days = 16, 1, 16, 3
        args.rss_sizes, args.prune_chunks, sections = "16,32", 500, list(SECTIONS)
    if args.daily_keep and os.path.lexists(args.daily_keep):
        p.error(f"--daily-keep {args.daily_keep}: it exists already")
    if set(sections) - set(SECTIONS) or args.repeat < 1 or args.size_mib < 1:
        p.error(f"--sections must be of {','.join(SECTIONS)}; --repeat, --size-mib >= 1")
    if args.no_direct:
        benchrun.VOLBACKUP_ARGS.append("--no-direct")
    if args.chunker:
        INIT_ARGS.extend(["--chunker", args.chunker])
    INIT_ARGS.extend(["--layout", args.layout])

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as e:
        print(f"dedup.py: {e}", file=sys.stderr)
        return 1
    bench = Dedup(client, f"vbbench-{secrets.token_hex(3)}-")
    result: dict = {"prefix": bench.prefix, "config": {**vars(args), "sections": sections},
                    "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                    "cpu_busy_before": round(busy_fraction(), 3), "repeat": args.repeat,
                    "volbackup_args": list(benchrun.VOLBACKUP_ARGS)}
    print(f"dedup.py: {bench.prefix}*, sections {','.join(sections)}, load {os.getloadavg()}",
          file=sys.stderr)
    def steps() -> None:
        if {"speed", "dedup", "parts", "sizes", "encryption"} & set(sections):
            volume, mountpoint = bench.volume("vol")
            result["volume"] = uniquevolume.fill(mountpoint, args.size_mib, args.seed)
            mib = result["volume"]["mib"]
            if "speed" in sections:
                result["speed"] = speed(bench, volume, mib, args.repeat)
            if "dedup" in sections:
                result["dedup"] = dedup(bench, volume, mountpoint, args.seed)
            if "parts" in sections:
                result["parts"] = parts(bench, volume, mountpoint, args.seed)
            if "sizes" in sections:
                result["sizes"] = sizes(bench, volume, mountpoint, mib, args.seed, args.repeat)
            if "encryption" in sections:
                result["encryption"] = encryption(bench, volume, mib, args.repeat)
        if "daily" in sections:
            result["daily"] = daily(bench, args.daily_mib, args.days, args.seed,
                                    args.daily_chunk_size, args.daily_keep)
        if "rss" in sections:
            result["rss"] = rss(bench, [int(s) for s in args.rss_sizes.split(",")], args.seed)
        if "prune" in sections:
            result["prune"] = prune(args.prune_chunks)

    code = run_steps("dedup.py", bench, steps)
    if code:
        return code
    result["load_after"] = os.getloadavg()
    publish(result, report(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

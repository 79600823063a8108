"""volbackup, restic and borg on the same data in the same run (issue 24's yardstick).

    python benchmarks/peers.py [--size 1024] [--runs 3] [--json out.json]
    python benchmarks/peers.py --restic /usr/bin/restic --borg /opt/borg-venv/bin/borg
    python benchmarks/peers.py --quick --json out.json                 # does it run? (16 MiB)

Run as root beside a Docker engine. It installs neither peer: each is taken from --restic /
--borg, else from PATH, and reported as absent (its rows left out, never faked) when not found.
  restic  Debian's package: `apt-get install -y restic` (0.14 in bookworm).
  borg    PyPI, into a virtualenv of its own outside the project:
            apt-get install -y build-essential pkg-config python3-dev libssl-dev \\
                liblz4-dev libzstd-dev libxxhash-dev libacl1-dev
            python3 -m venv /opt/borg-venv && /opt/borg-venv/bin/pip install borgbackup
            ln -s /opt/borg-venv/bin/borg /usr/local/bin/borg     # or: --borg /opt/borg-venv/bin/borg
          borgbackup 1.4.5 on PyPI is a source distribution only (no wheel): pip compiles its
          C extensions (about 80 s on 2 cores), which needs a C compiler, Python's headers and
          the -dev packages above (the build stops at the first one missing: lz4 first).

The volume is uniquevolume.py's (seeded unique data, text and random, a few large files and
thousands of small ones), filled once; each run copies it (cp -a) into a work volume that all
contenders read, rotating their order per run. Per contender and run, into a fresh repository:
  first      the first backup: wall seconds, CPU seconds (user + sys, children included),
             peak RSS of the process tree, repository bytes and files (objects) after it
  unchanged  a second backup of the same volume: seconds, bytes added
  changed    the work volume changed in place (uniquevolume.change, about 1.5 %, scattered),
             then backed up: seconds, bytes added, as a % of what the first backup stored
  restore    (repositories evicted from the page cache first) the latest snapshot into a new
             volume: seconds, peak RSS, and sha256 of every file against the work volume
Contenders, each with zstd level 3 where the tool lets one choose it:
  volbackup-archive    no init: one .tar.zst per snapshot (backup/restore --direct, as root)
  volbackup-chunked    `init --layout chunked` (1M chunks, the default chunker)
  volbackup-packed     `init --layout packed` (chunks of the packed default, 256K, in 16 MiB
                       packs with an index; `--packed-chunk-size 1M` as measured before
                       2026-12-07 20:30 UTC)
  volbackup-packed-encrypted  the same, `--encrypt-to` one age recipient (a key per pack)
  volbackup-encrypted  `init --layout chunked --encrypt-to` one age X25519 recipient (chunks
                       age-encrypted, named by HMAC-SHA256 under the repository key)
  restic               always encrypted (AES-256-CTR + Poly1305-AES, scrypt-derived master key);
                       `--compression auto` is zstd at its default level (zstd's level 3 class)
  borg-none            `borg init --encryption=none`, `borg create --compression zstd,3`:
                       neither encrypted nor authenticated, like volbackup-chunked
  borg-encrypted       `--encryption=repokey` (AES-256-CTR + HMAC-SHA256, keyed chunk ids) on a
                       CPU with SHA instructions, else `repokey-blake2` (BLAKE2b instead of
                       HMAC-SHA256): borg's docs name the faster of the two for each kind of CPU.
                       Encrypted and authenticated like restic and volbackup-encrypted, so it is
                       the row to set beside them; `authenticated` would not hide the data.
Bytes are the repository directory's growth; restic's and borg's caches (their chunk indexes,
kept beside the repository under this run's work directory) are not counted.
Everything made is named vbbench-<random>- (volumes; the work directory in /var/tmp holds the
repositories, the caches and borg's base dir) and removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import benchrun
import docker
import uniquevolume
from benchrun import MIB, busy_fraction, dir_bytes, publish, run_steps, timed, volbackup_cmd
from dedup import Dedup

PASSWORD = "vbbench-peers"   # restic's and borg-encrypted's passphrase (throwaway repositories)
SEED = 11
SETTLE = 2.5        # seconds between the copy of the volume and the first backup


def peer_environment(work: str) -> None:
    """The peers' secrets, caches and state: all under this run's work directory."""
    os.environ.update(RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE=PASSWORD,
                      BORG_BASE_DIR=os.path.join(work, "borg-base"),
                      BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                      BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")


def repo_files(repo: str) -> int:
    """Files in the repository: its objects (chunks, packs, segments, indexes, manifests)."""
    return sum(len(files) for _, _, files in os.walk(repo))


def tree_digest(root: str) -> dict[str, str]:
    """Relative path -> sha256 of each file ("dir" for a directory): what a restore must equal."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(directory, d), root)] = "dir"
        for f in files:
            path = os.path.join(directory, f)
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(MIB):
                    digest.update(block)
            out[os.path.relpath(path, root)] = digest.hexdigest()
    return out


def version(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""


def find_peer(name: str, given: str | None) -> dict:
    """The peer's path and version, or why it is absent."""
    path = given or shutil.which(name)
    if not path:
        return {"present": False, "reason": f"not on PATH (give --{name} PATH)"}
    if not os.access(path, os.X_OK):
        return {"present": False, "reason": f"{path} is not executable"}
    asked = [path, "version" if name == "restic" else "--version"]
    found = version(asked)
    if not found:
        return {"present": False, "reason": f"{' '.join(asked)} failed"}
    return {"present": True, "path": path, "version": found}


def external_step(cmd: list[str], what: str) -> dict:
    """A peer's command, timed like volbackup's (benchrun.timed: wall, CPU, tree RSS)."""
    usage: dict = {}
    seconds, rss = timed(cmd, what, rss=True, usage=usage)
    return {"seconds": round(seconds, 3), "rss_mib": round(rss, 1),
            "cpu_seconds": round(usage["cpu_user"] + usage["cpu_sys"], 3),
            "tree_rss_mib": usage["tree_rss_mib"]}


# -- contenders: each makes a repository, backs a volume up into it, restores its latest --------

class Volbackup:
    tool = "volbackup"

    packed_chunk_size = "default"   # --packed-chunk-size: init's own unless given

    def __init__(self, name: str, layout: str, encrypted: bool):
        self.name, self.layout, self.encrypted = name, layout, encrypted
        self.identity = self.key = ""

    def setup(self, bench: Dedup) -> str:
        if self.layout == "archive":
            return bench.repo(None)
        layout = ["--layout", self.layout]
        size = self.packed_chunk_size if self.layout == "packed" else "1M"
        if not self.encrypted:
            return bench.repo(size, *layout)
        from pyrage import x25519

        identity = x25519.Identity.generate()
        self.key = os.path.join(bench.work, f"key-{secrets.token_hex(4)}")
        repo = bench.repo(size, *layout, "--encrypt-to", str(identity.to_public()),
                          "--key-file", self.key)
        self.identity = self.key + ".identity"
        with open(self.key) as key, open(self.identity, "w") as f:
            f.write(f"{identity}\n{key.read()}")   # the key file appended (docs/security.md)
        return repo

    def backup(self, bench: Dedup, volume: str, mountpoint: str, repo: str, label: str) -> dict:
        key = ["--key-file", self.key] if self.encrypted else []
        return bench.backup(volume, repo, "--direct", *key)

    def restore(self, bench: Dedup, volume: str, repo: str) -> tuple[dict, str]:
        identity = ["--identity", self.identity] if self.encrypted else []
        step = bench.restore(volume, repo, "--direct", *identity)
        return step, bench.client.api.inspect_volume(step["volume"])["Mountpoint"]


class Restic:
    tool = "restic"
    encrypted = True

    def __init__(self, path: str):
        self.name, self.path = "restic", path

    def cmd(self, repo: str, *args: str) -> list[str]:
        return [self.path, "-r", repo, "--cache-dir", repo + ".cache", "--compression", "auto",
                "--quiet", *args]

    def setup(self, bench: Dedup) -> str:
        repo = tempfile.mkdtemp(prefix="restic-", dir=bench.work)
        os.rmdir(repo)                                  # restic init makes it
        timed(self.cmd(repo, "init"), "restic init")
        return repo

    def backup(self, bench: Dedup, volume: str, mountpoint: str, repo: str, label: str) -> dict:
        # `env -C` runs restic in the volume (same pid: its own RSS is measured), so the
        # snapshot holds relative paths and each backup finds the one before as its parent
        return external_step(["env", "-C", mountpoint,
                              *self.cmd(repo, "backup", "--host", "vbbench", "--tag", label, ".")],
                             f"restic backup ({label})")

    def restore(self, bench: Dedup, volume: str, repo: str) -> tuple[dict, str]:
        _, target = bench.volume("restored")
        return external_step(self.cmd(repo, "restore", "latest", "--target", target),
                             "restic restore"), target


class Borg:
    tool = "borg"

    def __init__(self, name: str, path: str, encryption: str):
        self.name, self.path, self.encryption = name, path, encryption
        self.encrypted = encryption != "none"

    def setup(self, bench: Dedup) -> str:
        repo = os.path.join(tempfile.mkdtemp(prefix="borg-", dir=bench.work), "repo")
        timed([self.path, "init", f"--encryption={self.encryption}", repo], "borg init")
        return repo

    def backup(self, bench: Dedup, volume: str, mountpoint: str, repo: str, label: str) -> dict:
        # in the volume, like restic: relative paths, and the files cache keyed by the same ones
        return external_step(["env", "-C", mountpoint, self.path, "create", "--compression",
                              "zstd,3", f"{repo}::{label}", "."], f"borg create ({label})")

    def restore(self, bench: Dedup, volume: str, repo: str) -> tuple[dict, str]:
        _, target = bench.volume("restored")
        return external_step(["env", "-C", target, self.path, "extract", f"{repo}::changed"],
                             "borg extract"), target


def borg_encryption() -> str:
    """repokey (HMAC-SHA256) where the CPU has SHA instructions, else repokey-blake2."""
    with open("/proc/cpuinfo") as f:
        return "repokey" if "sha_ni" in f.read().split() else "repokey-blake2"


NAMES = ("volbackup-archive", "volbackup-chunked", "volbackup-encrypted", "volbackup-packed",
         "volbackup-packed-encrypted", "restic", "borg-none", "borg-encrypted")


def contenders(peers: dict, only: set[str] | None) -> list:
    out = [Volbackup("volbackup-archive", "archive", False),
           Volbackup("volbackup-chunked", "chunked", False),
           Volbackup("volbackup-encrypted", "chunked", True),
           Volbackup("volbackup-packed", "packed", False),
           Volbackup("volbackup-packed-encrypted", "packed", True)]
    if peers["restic"]["present"]:
        out.append(Restic(peers["restic"]["path"]))
    if peers["borg"]["present"]:
        out += [Borg("borg-none", peers["borg"]["path"], "none"),
                Borg("borg-encrypted", peers["borg"]["path"], peers["borg"]["encryption"])]
    return [c for c in out if not only or c.name in only]


# -- one run ------------------------------------------------------------------------------

def each(contenders: list, step, parallel: bool) -> dict:
    """`step(contender)` for each, in this order, or all at once (--quick: figures that mean
    nothing, in half the time); their results by contender name."""
    if not parallel:
        return {c.name: step(c) for c in contenders}
    with ThreadPoolExecutor(len(contenders)) as pool:
        futures = {c.name: pool.submit(step, c) for c in contenders}
        return {name: future.result() for name, future in futures.items()}


def one_run(bench: Dedup, pristine: str, chosen: list, rnd: int, seed: int,
            parallel: bool) -> tuple[dict, dict]:
    """Every contender on one fresh copy of the volume; returns (rows by contender, change)."""
    volume, mountpoint = bench.copy(pristine, f"work{rnd}")
    # borg's and volbackup's files caches do not trust a file changed in the seconds before
    # a backup (volbackup: 2 s); a volume copied just now would be read whole again
    time.sleep(SETTLE)
    order = chosen[rnd % len(chosen):] + chosen[:rnd % len(chosen)]
    repos = each(order, lambda c: c.setup(bench), parallel)

    def backup(c, label: str) -> dict:
        before = dir_bytes(repos[c.name])
        step = c.backup(bench, volume, mountpoint, repos[c.name], label)
        step["new_bytes"] = dir_bytes(repos[c.name]) - before
        step["repo_bytes"], step["objects"] = dir_bytes(repos[c.name]), repo_files(repos[c.name])
        return step

    steps = {label: each(order, lambda c, label=label: backup(c, label), parallel)
             for label in ("first", "unchanged")}
    change = uniquevolume.change(mountpoint, seed + 1000)
    steps["changed"] = each(order, lambda c: backup(c, "changed"), parallel)
    expected = tree_digest(mountpoint)
    benchrun.prepare_archives(*repos.values())

    def restore(c) -> dict:
        step, target = c.restore(bench, volume, repos[c.name])
        got = tree_digest(target)
        step["files"] = sum(1 for v in got.values() if v != "dir")
        step["expected_files"] = sum(1 for v in expected.values() if v != "dir")
        step["differing"] = sorted(p for p in expected.keys() | got.keys()
                                   if expected.get(p) != got.get(p))[:20]
        step["identical"] = got == expected
        return step

    steps["restore"] = each(order[::-1], restore, parallel)
    rows = {}
    for c in chosen:
        row = rows[c.name] = {"run": rnd, **{label: steps[label][c.name] for label in steps}}
        for label in ("unchanged", "changed"):
            row[label]["new_pct"] = round(100 * row[label]["new_bytes"] / row["first"]["new_bytes"], 3)
        shutil.rmtree(os.path.dirname(repos[c.name]) if c.tool == "borg" else repos[c.name])
        shutil.rmtree(repos[c.name] + ".cache", ignore_errors=True)
    return rows, change


def summarise(runs: list[dict], mib: float) -> dict:
    """Medians over the runs of every figure the table shows."""
    def med(*path: str) -> float:
        values = []
        for row in runs:
            for key in path:
                row = row[key]
            values.append(row)
        return statistics.median(values)

    return {"first_seconds": med("first", "seconds"),
            "first_mib_s": round(mib / med("first", "seconds"), 1),
            "first_cpu_seconds": med("first", "cpu_seconds"),
            "first_rss_mib": max(r["first"]["tree_rss_mib"] for r in runs),
            "repo_bytes": med("first", "repo_bytes"), "objects": med("first", "objects"),
            "objects_after_change": med("changed", "objects"),
            "unchanged_seconds": med("unchanged", "seconds"),
            "unchanged_new_bytes": med("unchanged", "new_bytes"),
            "unchanged_new_pct": med("unchanged", "new_pct"),
            "changed_seconds": med("changed", "seconds"),
            "changed_new_bytes": med("changed", "new_bytes"),
            "changed_new_pct": med("changed", "new_pct"),
            "restore_seconds": med("restore", "seconds"),
            "restore_mib_s": round(mib / med("restore", "seconds"), 1),
            "restore_cpu_seconds": med("restore", "cpu_seconds"),
            "restore_rss_mib": max(r["restore"]["tree_rss_mib"] for r in runs),
            "restore_identical": all(r["restore"]["identical"] for r in runs)}


def against_peers(contenders_out: dict) -> dict:
    """Each volbackup contender against the best peer row for each of issue 24's three targets:
    speed ratios (> 1: volbackup faster) and the change's bytes (< 1: volbackup smaller)."""
    peers = {k: v["median"] for k, v in contenders_out.items() if v["tool"] != "volbackup"}
    if not peers:
        return {}
    best_first = min(peers, key=lambda k: peers[k]["first_seconds"])
    best_restore = min(peers, key=lambda k: peers[k]["restore_seconds"])
    best_change = min(peers, key=lambda k: peers[k]["changed_new_bytes"])
    out = {}
    for name, c in contenders_out.items():
        if c["tool"] != "volbackup":
            continue
        m = c["median"]
        out[name] = {
            "first_speed_vs_best": round(peers[best_first]["first_seconds"] / m["first_seconds"], 3),
            "best_first": best_first,
            "restore_speed_vs_best": round(peers[best_restore]["restore_seconds"]
                                           / m["restore_seconds"], 3),
            "best_restore": best_restore,
            "change_bytes_vs_best": round(m["changed_new_bytes"]
                                          / max(1, peers[best_change]["changed_new_bytes"]), 3),
            "best_change": best_change}
    return out


# -- report -------------------------------------------------------------------------------

def report(result: dict) -> str:
    vol, change = result["volume"], result["change"]
    lines = [(f"volume {vol['mib']:.0f} MiB of unique data: {vol['files']:,} files "
              f"({vol['large_files']} large); change {change['changed_pct']} % of it; {result['cpus']} "
              f"CPUs; load before {result['load_before'][0]:.2f}, CPUs busy "
              f"{100 * result['cpu_busy_before']:.0f} %; median of {result['runs']} run(s)")]
    if result["parallel"]:
        lines.append("  --quick: the contenders ran at once, so the times and RSS below mean nothing")
    for name, peer in result["peers"].items():
        said = f"{peer['version']} ({peer['path']})" if peer["present"] else f"absent, {peer['reason']}"
        lines.append(f"  {name}: {said}")
    lines.append(f"  volbackup: {result['volbackup_version']}")
    head = (f"{'':20}{'first':>7}{'MiB/s':>7}{'CPU':>7}{'RSS':>6}{'stored':>8}{'objs':>6}"
            f"{'unchgd':>8}{'+KiB':>10}{'change':>8}{'+MiB':>7}{'+%':>7}{'restore':>8}{'CPU':>6}{'RSS':>6}  same")
    units = (f"{'':20}{'s':>7}{'':>7}{'s':>7}{'MiB':>6}{'MiB':>8}{'':>6}{'s':>8}{'':>10}{'s':>8}"
             f"{'':>7}{'full':>7}{'s':>8}{'s':>6}{'MiB':>6}")
    lines += ["", head, units]
    for name, c in result["contenders"].items():
        m = c["median"]
        lines.append(
            f"{name:20}{m['first_seconds']:>7.2f}{m['first_mib_s']:>7.0f}{m['first_cpu_seconds']:>7.2f}"
            f"{m['first_rss_mib']:>6.0f}{m['repo_bytes'] / MIB:>8.1f}{m['objects']:>6.0f}"
            f"{m['unchanged_seconds']:>8.2f}{m['unchanged_new_bytes'] / 1024:>10.1f}"
            f"{m['changed_seconds']:>8.2f}{m['changed_new_bytes'] / MIB:>7.2f}"
            f"{m['changed_new_pct']:>7.2f}{m['restore_seconds']:>8.2f}{m['restore_cpu_seconds']:>6.2f}"
            f"{m['restore_rss_mib']:>6.0f}"
            f"  {'yes' if m['restore_identical'] else 'NO'}")
    for name, a in result["against_peers"].items():
        lines.append(f"{name} against the best peer: first backup {a['first_speed_vs_best']:.2f}x "
                     f"{a['best_first']}'s speed, restore {a['restore_speed_vs_best']:.2f}x "
                     f"{a['best_restore']}'s, the change stores {a['change_bytes_vs_best']:.2f}x "
                     f"{a['best_change']}'s bytes (issue 24: >= 1, >= 1, <= 1)")
    absent = [n for n, p in result["peers"].items() if not p["present"]]
    if absent:
        lines.append(f"skipped (absent): {', '.join(absent)}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--size", type=int, default=1024, help="volume size in MiB (default 1024)")
    p.add_argument("--runs", type=int, default=3, help="runs, each on a fresh copy (default 3)")
    p.add_argument("--restic", metavar="PATH", help="restic binary (default: restic on PATH)")
    p.add_argument("--borg", metavar="PATH", help="borg binary (default: borg on PATH)")
    p.add_argument("--only", metavar="NAMES",
                   help=f"comma-separated contenders to run, of {','.join(NAMES)} (default: all present)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--packed-chunk-size", metavar="SIZE",
                   help="init --chunk-size of the packed contenders (default: the layout's)")
    p.add_argument("--quick", action="store_true",
                   help="does it run? 16 MiB, one run, the contenders at once (timings meaningless)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args()
    if args.quick:
        args.size, args.runs = 16, 1
        benchrun.SETTLE_SECONDS = 0
    if args.runs < 1 or args.size < 1:
        p.error("--runs and --size must be >= 1")
    if args.packed_chunk_size:
        Volbackup.packed_chunk_size = args.packed_chunk_size
    peers = {"restic": find_peer("restic", args.restic), "borg": find_peer("borg", args.borg)}
    for name, given in (("restic", args.restic), ("borg", args.borg)):
        if given and not peers[name]["present"]:
            p.error(f"--{name}: {peers[name]['reason']}")
    if peers["borg"]["present"]:
        peers["borg"]["encryption"] = borg_encryption()
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(NAMES):
        p.error(f"--only: unknown {','.join(sorted(only - set(NAMES)))} (of {','.join(NAMES)})")
    chosen = contenders(peers, only)
    if not chosen:
        p.error("--only: none of those contenders is present")

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as e:
        print(f"peers.py: {e}", file=sys.stderr)
        return 1
    bench = Dedup(client, f"vbbench-{secrets.token_hex(3)}-")
    peer_environment(bench.work)
    result: dict = {"prefix": bench.prefix, "config": vars(args), "cpus": os.cpu_count(),
                    "load_before": os.getloadavg(),
                    "cpu_busy_before": round(busy_fraction(0.5 if args.quick else 2), 3),
                    "runs": args.runs, "packed_chunk_size": Volbackup.packed_chunk_size,
                    "parallel": args.quick, "peers": peers,
                    "volbackup_version": version([*volbackup_cmd(), "--version"])}
    print(f"peers.py: {bench.prefix}*, {', '.join(c.name for c in chosen)}; "
          f"load {os.getloadavg()}", file=sys.stderr)
    runs: dict[str, list[dict]] = {c.name: [] for c in chosen}

    def steps() -> None:
        _, pristine = bench.volume("vol")
        result["volume"] = uniquevolume.fill(pristine, args.size, args.seed)
        for rnd in range(args.runs):
            rows, result["change"] = one_run(bench, pristine, chosen, rnd, args.seed,
                                             parallel=args.quick)
            for name, row in rows.items():
                runs[name].append(row)

    code = run_steps("peers.py", bench, steps)
    if code:
        return code
    result["load_after"] = os.getloadavg()
    result["contenders"] = {
        c.name: {"tool": c.tool, "encrypted": c.encrypted,
                 "median": summarise(runs[c.name], result["volume"]["mib"]), "runs": runs[c.name]}
        for c in chosen}
    result["against_peers"] = against_peers(result["contenders"])
    publish(result, report(result), args.json)
    return 0 if all(c["median"]["restore_identical"] for c in result["contenders"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

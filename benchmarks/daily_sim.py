"""What each kind of data blob costs over daily snapshots of a packed repository, per cut rule.

    python benchmarks/daily_sim.py [--mib 256] [--days 30] [--runs 2]
        [--settings base,mod4,mod4-max32,mod2-max16,avg384,avg256] [--json out.json]

A simulation, in-process and without Docker or a repository: a uniquevolume.py volume in a
directory (under /var/tmp), changed each day as dedup.py's daily section changes it; each day its
tar stream (GNU tar, as the direct path runs it) is cut by volbackup.stream.chunker's
cut_each_member under each setting, and every blob that setting has not seen before is counted at
its zstd level-3 size, by what it holds: chunks of a large member (one of HEADERS_APART bytes of
data or more, or a member cut inside), a member's headers alone, a whole file (SMALL bytes or
more), a group of small members (and how much of a new group is members that did not change),
a directory alone. Data blobs only: the catalogue and the data tree are not made here
(benchmarks/daily_bytes.py counts them in a real repository).

A setting is `base` (today's rules at 512K: SMALL 4 KiB, EACH_GROUP_MOD 8, EACH_GROUP_MAX 64 KiB,
HEADERS_APART 64 KiB) changed by dash-separated parts: modN, maxK (KiB), smallK, hdrK, avgK (min a
quarter, max four times). The runs of all settings share their chunker seeds (run i: seed i), so
that two settings differ by their rules only. docs/performance.md, "Where a day's new bytes go".
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tarfile
import time

import zstandard

import uniquevolume
from volbackup.docker.direct import export
from volbackup.stream import chunker
from volbackup.stream.archive import kept_tar
from volbackup.stream.tarstream import TarWalker

MIB = 1 << 20
BASE = {"SMALL": 4 << 10, "EACH_GROUP_MOD": 8, "EACH_GROUP_MAX": 64 << 10,
        "HEADERS_APART": 64 << 10, "avg": 512 << 10}
PARTS = (("mod", "EACH_GROUP_MOD", 1), ("max", "EACH_GROUP_MAX", 1024), ("small", "SMALL", 1024),
         ("hdr", "HEADERS_APART", 1024), ("avg", "avg", 1024))


def setting(name: str) -> dict:
    out = dict(BASE)
    for part in name.split("-"):
        if part == "base":
            continue
        for prefix, key, unit in PARTS:
            if part.startswith(prefix) and part[len(prefix):].isdigit():
                out[key] = int(part[len(prefix):]) * unit
                break
        else:
            raise SystemExit(f"daily_sim.py: unknown setting part {part!r} in {name!r}")
    return out


class RecordingWalker(TarWalker):
    """A TarWalker that also keeps (start, data_at, size, name, mtime, type) of each member
    the cutter is told of."""

    def __setattr__(self, key, value):
        if key == "on_member" and value is not None:
            inner = value

            def on_member(start, data_at, entry):
                self.members.append((start, data_at, entry.size, entry.name, entry.mtime,
                                     entry.type))
                inner(start, data_at, entry)
            value = on_member
        object.__setattr__(self, key, value)


def _padded_end(member) -> int:
    return member[1] + -(-member[2] // 512) * 512


def one_day(directory: str, rules: dict, seed: int, known: set, before: dict,
            compressor) -> tuple[dict, dict]:
    """Cut today's stream; count the blobs not in `known` (which grows) by kind."""
    for key in ("SMALL", "EACH_GROUP_MOD", "EACH_GROUP_MAX", "HEADERS_APART"):
        setattr(chunker, key, rules[key])
    avg = rules["avg"]
    walker = RecordingWalker(unique=False)
    walker.members = []
    blobs = []
    with export(directory) as pieces:
        at = 0
        for data in chunker.cut_each_member(kept_tar(pieces, walker), walker, avg, avg // 4,
                                            avg * 4, 1, seed,
                                            name_key=chunker.seed_name_key(seed)):
            digest = hashlib.sha256(data).digest()
            blobs.append((at, len(data), None if digest in known else data))
            known.add(digest)
            at += len(data)
    members = walker.members
    starts = [m[0] for m in members]
    out = {"blobs": len(blobs), "groups": 0, "new": {}, "new_blobs": {}, "group_members": 0,
           "group_changed": 0, "group_unchanged_bytes": 0}
    for at, n, data in blobs:
        first = bisect.bisect_right(starts, at) - 1
        inside = members[max(first, 0):bisect.bisect_left(starts, at + n)]
        if first >= 0 and members[first][0] < at:
            kind = "large_member_chunks"          # starts inside a member
        elif not inside:
            kind = "end_of_archive"
        elif len(inside) > 1:
            kind = "group"
        else:
            m = inside[0]
            if m[2] >= rules["HEADERS_APART"] and at + n <= m[1]:
                kind = "headers"
            elif at + n < _padded_end(m):
                kind = "large_member_chunks"
            elif m[5] == tarfile.DIRTYPE:
                kind = "directory"
            else:
                kind = "whole_file" if _padded_end(m) - m[0] >= rules["SMALL"] else "group"
        out["groups"] += kind == "group"
        if data is None:
            continue
        size = len(compressor.compress(data))
        out["new"][kind] = out["new"].get(kind, 0) + size
        out["new_blobs"][kind] = out["new_blobs"].get(kind, 0) + 1
        if kind == "group":
            changed = [m for m in inside if before.get(m[3]) != (m[2], m[4])]
            changed_bytes = sum(_padded_end(m) - m[0] for m in changed)
            out["group_members"] += len(inside)
            out["group_changed"] += len(changed)
            out["group_unchanged_bytes"] += int(size * max(0, 1 - changed_bytes / n))
    return out, {m[3]: (m[2], m[4]) for m in members}


def summary(state: dict) -> dict:
    full = sum(state["days"][0]["new"].values())
    later = state["days"][1:]
    kinds: dict[str, int] = {}
    for day in later:
        for kind, size in day["new"].items():
            kinds[kind] = kinds.get(kind, 0) + size
    n = max(1, len(later))
    return {"setting": state["name"], "run": state["run"], "full_bytes": full,
            "x_full": round((full + sum(kinds.values())) / full, 3),
            "blobs_first": state["days"][0]["blobs"], "groups_last": state["days"][-1]["groups"],
            "mib_a_day": {k: round(v / MIB / n, 3) for k, v in sorted(kinds.items())},
            "group_unchanged_mib_a_day": round(
                sum(d["group_unchanged_bytes"] for d in later) / MIB / n, 3),
            "new_groups_a_day": round(sum(d["new_blobs"].get("group", 0) for d in later) / n, 1),
            "their_members_a_day": round(sum(d["group_members"] for d in later) / n, 1),
            "changed_a_day": round(sum(d["group_changed"] for d in later) / n, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=11, help="the volume's (as dedup.py's)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--settings", default="base")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    directory = os.path.join("/var/tmp", f"vbsim-{secrets.token_hex(3)}")
    compressor = zstandard.ZstdCompressor(level=3)
    seeds = [secrets.randbits(31) for _ in range(args.runs)]
    states = [{"name": name, "run": run, "rules": setting(name), "seed": seeds[run],
               "known": set(), "before": {}, "days": []}
              for name in args.settings.split(",") for run in range(args.runs)]
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # the finally below cleans up
    os.makedirs(directory)
    try:
        uniquevolume.fill(directory, args.mib, args.seed)
        for day in range(args.days):
            if day:
                uniquevolume.change(directory, args.seed + day, share=0.01)
            started = time.monotonic()
            for state in states:
                out, state["before"] = one_day(directory, state["rules"], state["seed"],
                                               state["known"], state["before"], compressor)
                state["days"].append(out)
            print(f"day {day + 1} ({time.monotonic() - started:.0f} s): " + " | ".join(
                f"{s['name']}/{s['run']} {sum(s['days'][-1]['new'].values()) / MIB:.2f}"
                for s in states), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results = [summary(s) for s in states]
    for r in results:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "seeds": seeds, "results": results,
                       "days": [{k: s[k] for k in ("name", "run", "days")} for s in states]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

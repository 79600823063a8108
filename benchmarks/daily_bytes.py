"""Where each day's new bytes went in a packed repository kept by dedup.py's daily section.

    python benchmarks/dedup.py --sections daily --daily-mib 256 --layout packed --daily-keep DIR
    python benchmarks/daily_bytes.py DIR [--json out.json]

Reads the repository back (plain only): every snapshot in the order it was made, its data tree
and catalogue walked, each blob counted on the first snapshot that names it, at its stored size
from the index; so a snapshot's row is what it added, by kind: data blobs, data tree pieces,
catalogue pieces, catalogue tree pieces (index objects and manifests are the rest of what the
repository grew by). docs/performance.md, "Where a day's new bytes go".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from volbackup.errors import VolbackupError
from volbackup.repo import catalogtree, trees
from volbackup.repo.repository import Repository

MIB = 1 << 20
KINDS = ("data", "data_tree", "catalog", "catalog_tree")


def added(path: str) -> list[dict]:
    """Per snapshot, oldest first: {kind: stored bytes, kind_blobs: count} it added."""
    repo = Repository.open(path)
    if repo.config is None or not repo.config.packed or repo.config.encrypted:
        raise SystemExit(f"daily_bytes.py: {path} is not a plain packed repository")
    store = repo.blobs
    index = store.index()
    seen: set[str] = set()
    rows = []
    for manifest in sorted((repo.load(s) for s in repo.snapshot_ids()),
                           key=lambda m: m.created):
        revealed = repo.reveal(manifest)
        roots = (("data", trees.TreeRoot.from_fields(revealed.data, manifest.snapshot)),
                 ("catalog", catalogtree.check_field(revealed.catalog, manifest.snapshot)))
        row = {"snapshot": manifest.snapshot, **{k: 0 for k in KINDS},
               **{f"{k}_blobs": 0 for k in KINDS}}
        for label, root in roots:
            for node in trees.nodes(store, root, {}):
                if node.id in seen:
                    continue
                seen.add(node.id)
                kind = label + ("_tree" if node.piece is not None else "")
                locations = index.locations(bytes.fromhex(node.id))
                row[kind] += locations[0].stored if locations else 0
                row[f"{kind}_blobs"] += 1
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("repository")
    p.add_argument("--json", metavar="PATH", help="write the rows to PATH")
    args = p.parse_args()
    try:
        rows = added(args.repository)
    except VolbackupError as e:
        print(f"daily_bytes.py: {e}", file=sys.stderr)
        return 1
    print(f"{'snapshot':>8}  " + "  ".join(f"{k:>16}" for k in KINDS))
    for n, row in enumerate(rows, 1):
        print(f"{n:>8}  " + "  ".join(f"{row[k] / MIB:>8.3f} MiB {row[k + '_blobs']:>3}"
                                      for k in KINDS))
    later = rows[1:]
    if later:
        print(f"{'mean 2-':>8}  " + "  ".join(
            f"{statistics.mean(r[k] for r in later) / MIB:>8.3f} MiB "
            f"{statistics.mean(r[k + '_blobs'] for r in later):>3.0f}" for k in KINDS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Manifests for the unit tests: a valid one, and its JSON with fields changed or removed."""

from __future__ import annotations

import json

from volbackup.repo.manifest import Manifest
from volbackup.repo.repository import Repository


def make_manifest(snapshot: str = "pgdata@20261129T031500Z-1a2b",
                  created: str = "2026-11-29T03:15:00.000Z", **changes) -> Manifest:
    fields = dict(
        snapshot=snapshot, volume=snapshot.split("@")[0], driver="local",
        driver_options={"type": "tmpfs"}, labels={"app": "db"}, created=created,
        host="host1", tool_version="0.1.0", archive=Repository.archive_name(snapshot),
        compression="zstd", level=3, bytes=10240, stored_bytes=300, sha256="ab" * 32,
        entries=4, seconds=0.25)
    fields.update(changes)
    return Manifest(**fields)


def manifest_json(drop: tuple[str, ...] = (), **changes) -> str:
    """A valid manifest's JSON with keys dropped or set to any JSON value."""
    data = make_manifest().to_dict()
    for key in drop:
        del data[key]
    data.update(changes)
    return json.dumps(data)


TREE_ROOT = {"root": "cd" * 32, "length": 88, "height": 1, "blobs": 2, "bytes": 10240}
TREE_CATALOG = {"version": 2, "entries": 4, "root": "ef" * 32, "length": 44, "height": 1,
                "blobs": 1, "bytes": 600}


def tree_manifest_json(**changes) -> str:
    """A valid tree snapshot's manifest (format 4) with fields set to any JSON value."""
    data = make_manifest(archive="20261129T031500Z-1a2b.tree", layout="chunked",
                         format_version=4, sha256="", new_chunks=1, data=dict(TREE_ROOT),
                         catalog=dict(TREE_CATALOG)).to_dict()
    data.update(changes)
    return json.dumps(data)


# (description, raw manifest text, words the error message must contain)
BROKEN = [
    ("not-json", "{not json", "not valid JSON"),
    ("not-utf8", b"\xff\xfe{}", "not valid JSON"),
    ("not-an-object", "[1, 2]", "not a volbackup snapshot manifest"),
    ("nested-too-deep", "[" * 200_000, "not valid JSON"),
    ("wrong-format", manifest_json(format="something-else"), "not a volbackup snapshot manifest"),
    ("no-format", manifest_json(drop=("format",)), "not a volbackup snapshot manifest"),
    ("lacks-fields", manifest_json(drop=("sha256", "volume")), "lacks volume, sha256"),
    ("newer-version", manifest_json(format_version=5), "format version 5"),
    ("unknown-layout", manifest_json(layout="tree"), "unknown layout 'tree'"),
    ("chunked-without-chunks", manifest_json(layout="chunked", format_version=2),
     "incomplete chunked manifest"),
    ("version-not-int", manifest_json(format_version="1"), "format version '1'"),
    ("level-str", manifest_json(level="3"), "invalid level"),
    ("level-99", manifest_json(level=99), "invalid level"),
    ("bytes-past-64-bits", manifest_json(bytes=1 << 63), "invalid bytes"),
    ("chunks-past-64-bits", manifest_json(chunks=1 << 64), "invalid chunks"),
    ("bytes-null", manifest_json(bytes=None), "invalid bytes"),
    ("sha256-int", manifest_json(sha256=5), "invalid sha256"),
    ("labels-list", manifest_json(labels=["a"]), "invalid labels"),
    ("options-str", manifest_json(driver_options="x"), "invalid driver_options"),
    ("archive-slash", manifest_json(archive="../other/x.tar.zst"), "invalid archive"),
    ("archive-subdir", manifest_json(archive="a/b.tar.zst"), "invalid archive"),
    ("archive-dot", manifest_json(archive=".hidden.tar.zst"), "invalid archive"),
    ("created-not-iso", manifest_json(created="yesterday"), "invalid created time 'yesterday'"),
    ("created-no-zone", manifest_json(created="2026-11-29T03:15:00.000"), "invalid created time"),
    ("created-int", manifest_json(created=1764386100), "invalid created"),
    ("host-int", manifest_json(host=42), "invalid host"),
    ("tool-version-null", manifest_json(tool_version=None), "invalid tool_version"),
    ("seconds-str", manifest_json(seconds="0.2"), "invalid seconds"),
    ("source-kind-list", manifest_json(source_kind=["bind"]), "invalid source_kind"),
    ("mount-path-int", manifest_json(mount_path=3), "invalid mount_path"),
    ("label-value-int", manifest_json(labels={"a": 1}), "invalid labels"),
    ("snapshot-of-other-volume", manifest_json(snapshot="other@20261129T031500Z-1a2b"),
     "invalid snapshot id 'other@20261129T031500Z-1a2b' for volume pgdata"),
    ("snapshot-not-an-id", manifest_json(snapshot="pgdata"), "invalid snapshot id"),
    # tree snapshots (format 4): the data and catalogue trees' roots
    ("tree-without-data", tree_manifest_json(data=None), "incomplete tree manifest"),
    ("data-on-version-2", manifest_json(layout="chunked", format_version=2, chunks=2,
                                        data=TREE_ROOT), "incomplete tree manifest"),
    ("tree-with-chunks", tree_manifest_json(chunks=2), "incomplete tree manifest"),
    ("tree-with-list-sha256", tree_manifest_json(sha256="ab" * 32), "incomplete tree manifest"),
    ("tree-with-tar-sha256", tree_manifest_json(tar_sha256="ab" * 32),
     "incomplete tree manifest"),
    ("tree-archive-layout", tree_manifest_json(layout="archive"), "incomplete tree manifest"),
    ("data-not-an-object", tree_manifest_json(data=[1]), "invalid data or catalog field"),
    ("data-field-missing", tree_manifest_json(data={k: v for k, v in TREE_ROOT.items()
                                                    if k != "length"}),
     "invalid data or catalog field"),
    ("data-extra-field", tree_manifest_json(data={**TREE_ROOT, "x": 1}),
     "invalid data or catalog field"),
    ("data-height-5", tree_manifest_json(data={**TREE_ROOT, "height": 5}),
     "invalid data or catalog field"),
    ("data-root-not-hex", tree_manifest_json(data={**TREE_ROOT, "root": "zz" * 32}),
     "invalid data or catalog field"),
    ("data-length-not-records", tree_manifest_json(data={**TREE_ROOT, "length": 45}),
     "invalid data or catalog field"),
    ("data-length-bool", tree_manifest_json(data={**TREE_ROOT, "length": True}),
     "invalid data or catalog field"),
    ("data-bytes-not-the-snapshots", tree_manifest_json(data={**TREE_ROOT, "bytes": 10241}),
     "data tree of 10241 bytes"),
    ("tree-with-catalog-v1", tree_manifest_json(catalog={
        "version": 1, "entries": 4, "bytes": 10, "chunks": 1, "sha256": "ab" * 32,
        "plain_sha256": "ab" * 32}), "invalid data or catalog field"),
    ("tree-without-catalog", tree_manifest_json(catalog=None), "incomplete tree manifest"),
    ("catalog-v2-on-version-2", manifest_json(layout="chunked", format_version=2, chunks=2,
                                              catalog=TREE_CATALOG), "invalid catalog field"),
    ("catalog-more-pieces-than-entries", tree_manifest_json(
        catalog={**TREE_CATALOG, "blobs": 5, "bytes": 600}), "invalid data or catalog field"),
]

"""Manifest JSON: round trip, unknown keys from newer writers, and every way it can be unreadable."""

from __future__ import annotations

import json

import pytest

from tests.unit.manifests import BROKEN, make_manifest, manifest_json, tree_manifest_json
from volbackup.errors import RepositoryError
from volbackup.repo.manifest import ARCHIVE_VERSION, FORMAT, Manifest

WHERE = "snapshots/pgdata/20261129T031500Z-1a2b.json"


def test_round_trip():
    manifest = make_manifest(source_kind="bind", source_container="web", mount_path="/srv",
                             bind_path="/host/srv")
    text = manifest.to_json()
    assert text.endswith("\n")
    again = Manifest.from_json(text, WHERE)
    assert again == manifest
    assert again.to_json() == text
    data = json.loads(text)
    assert data["format"] == FORMAT and data["format_version"] == ARCHIVE_VERSION
    assert "extra" not in data
    assert list(data) == sorted(data)


def test_round_trip_keeps_unknown_keys():
    text = manifest_json(future_field={"nested": [1, 2]}, another="x", extra="named extra")
    manifest = Manifest.from_json(text.encode(), WHERE)
    assert manifest.extra == {"future_field": {"nested": [1, 2]}, "another": "x",
                              "extra": "named extra"}
    data = json.loads(manifest.to_json())
    assert data["future_field"] == {"nested": [1, 2]} and data["another"] == "x"
    assert data["extra"] == "named extra"
    assert Manifest.from_json(manifest.to_json(), WHERE) == manifest
    assert manifest.to_dict() == data


def test_extra_never_overrides_known_fields():
    manifest = make_manifest(extra={"sha256": "forged", "new": 1})
    data = manifest.to_dict()
    assert data["sha256"] == "ab" * 32 and data["new"] == 1


def test_optional_fields_default_when_absent():
    text = manifest_json(drop=("source_kind", "source_container", "mount_path", "bind_path"))
    manifest = Manifest.from_json(text, WHERE)
    assert manifest.source_kind == "volume"
    assert manifest.source_container is manifest.mount_path is manifest.bind_path is None
    assert manifest.extra == {}


@pytest.mark.parametrize("raw,words", [(raw, words) for _, raw, words in BROKEN],
                         ids=[name for name, _, _ in BROKEN])
def test_unreadable_manifest_names_itself_in_the_error(raw, words):
    with pytest.raises(RepositoryError) as caught:
        Manifest.from_json(raw, WHERE)
    assert WHERE in str(caught.value)
    assert words in str(caught.value)
    assert caught.value.exit_code == 5


def test_safety_for_is_optional_and_must_be_a_string():
    assert Manifest.from_json(manifest_json(drop=("safety_for",)), WHERE).safety_for is None
    marked = Manifest.from_json(manifest_json(safety_for="pgdata@20261129T031500Z-1a2b"), WHERE)
    assert marked.safety_for == "pgdata@20261129T031500Z-1a2b"
    for bad in (5, ["x"], {"a": 1}):
        with pytest.raises(RepositoryError, match="invalid safety_for"):
            Manifest.from_json(manifest_json(safety_for=bad), WHERE)


def test_excluded_is_optional_and_checked_like_the_command_line():
    assert Manifest.from_json(manifest_json(), WHERE).excluded is None
    recorded = Manifest.from_json(manifest_json(excluded=["cache", "/tmp/**"]), WHERE)
    assert recorded.excluded == ["cache", "/tmp/**"]
    assert Manifest.from_json(recorded.to_json(), WHERE) == recorded
    for bad in ("cache", [1], ["a/../b"], [""], ["x\x00"], ["a", "a"], {"a": 1}, [["a"]]):
        with pytest.raises(RepositoryError, match="invalid excluded"):
            Manifest.from_json(manifest_json(excluded=bad), WHERE)


def test_a_tree_manifest_reads_back_with_its_roots():
    manifest = Manifest.from_json(tree_manifest_json(), "m")
    assert manifest.tree and manifest.chunked and manifest.format_version == 4
    assert manifest.data["height"] == 1 and manifest.catalog["version"] == 2
    assert Manifest.from_json(manifest.to_json(), "m") == manifest
    assert not make_manifest().tree

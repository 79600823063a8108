"""ops.reading.Reader: what a restore or extract reads, whole or a part, and its size
(what `restore --force` checks for room before it replaces a volume)."""

from __future__ import annotations

import pytest

from tests.unit.chunkrepos import backup
from tests.unit.test_catalog import members, repo, volume  # noqa: F401 - fixture
from volbackup.errors import NotFound
from volbackup.ops.reading import reader_for
from volbackup.stream.archive import END_MARKER
from volbackup.stream.catalog import Selection


def test_whole_and_part(repo):  # noqa: F811 - the fixture
    manifest = backup(repo, volume())
    whole = reader_for(repo, manifest, None)
    assert whole.entries is None and whole.total == manifest.bytes
    assert whole.size() == (manifest.bytes, manifest.entries)
    part = reader_for(repo, manifest, Selection(include=("etc/app.conf",)))
    assert part.total is None
    data = b"".join(part.unpacker().chunks())
    assert sorted(members(data)) == [".", "etc", "etc/app.conf"]
    tar_bytes, entries = part.size()
    assert (entries, tar_bytes) == (3, len(data) - END_MARKER)  # their spans, cut out
    assert tar_bytes < manifest.bytes / 50


def test_an_include_matching_nothing_fails_at_once(repo):  # noqa: F811
    manifest = backup(repo, volume())
    with pytest.raises(NotFound, match="has no 'etc/nope'"):
        reader_for(repo, manifest, Selection(include=("etc/nope",)))

"""Per-entry digests from the tar walker: what migrate --verify compares."""

from __future__ import annotations

import copy
import hashlib
import tarfile

import pytest

from tests.unit.tars import CHUNKINGS, chunked, corpus_members, make_tar
from volbackup.stream.tarstream import TarWalker, digest_differences, normal_name


def digests_of(tar: bytes, how) -> dict:
    walker = TarWalker(digest=True)
    for piece in chunked(tar, how):
        walker.feed(piece)
    walker.finish()
    return walker.digests


@pytest.mark.parametrize("how", CHUNKINGS)
def test_digests_match_tarfiles_view_in_any_chunking(how):
    members = corpus_members()
    digests = digests_of(make_tar(members), how)
    assert set(digests) == {normal_name(info.name) for info, _ in members}
    for info, data in members:
        kind, mode, uid, gid, size, content, target, device, mtime = digests[normal_name(info.name)]
        assert (kind, mode, uid, gid, mtime) == (info.type.decode(), info.mode & 0o7777,
                                                 info.uid, info.gid, int(info.mtime))
        if info.isreg():
            assert (size, content) == (len(data), hashlib.sha256(data).hexdigest())
        else:
            assert content is None
        if info.issym():
            assert target == info.linkname


def test_root_is_dot_and_names_are_normal():
    assert normal_name("./") == normal_name(".") == normal_name("") == "."
    assert normal_name("./a/b/") == normal_name("a/b") == "a/b"


@pytest.mark.parametrize("field,change", [
    ("content", lambda info, data: (info, data[:-1] + b"!")),
    ("mode", lambda info, data: (_with(info, mode=0o600), data)),
    ("uid", lambda info, data: (_with(info, uid=12345), data)),
    ("mtime", lambda info, data: (_with(info, mtime=info.mtime + 1), data)),
])
def test_a_changed_file_is_named_with_the_field_that_differs(field, change):
    members = corpus_members(big=False)
    index = next(i for i, (info, data) in enumerate(members) if info.isreg() and data)
    changed = list(members)
    changed[index] = change(*members[index])
    before, after = digests_of(make_tar(members), 4096), digests_of(make_tar(changed), 4096)
    differences = digest_differences(before, after)
    assert len(differences) == 1
    name = normal_name(members[index][0].name)
    assert differences[0].startswith(f"{name}: ") and field in differences[0]


def test_missing_and_unexpected_entries_are_named():
    members = corpus_members(big=False)
    fewer = [m for m in members if normal_name(m[0].name) != "hello.txt"]
    assert digest_differences(digests_of(make_tar(members), 512),
                              digests_of(make_tar(fewer), 512)) == ["hello.txt: missing"]
    assert digest_differences(digests_of(make_tar(fewer), 512),
                              digests_of(make_tar(members), 512)) == ["hello.txt: unexpected"]


def test_without_digest_nothing_is_recorded():
    walker = TarWalker()
    walker.feed(make_tar(corpus_members(big=False)))
    assert walker.digests is None


def _with(info: tarfile.TarInfo, **changes) -> tarfile.TarInfo:
    info = copy.copy(info)
    for key, value in changes.items():
        setattr(info, key, value)
    return info

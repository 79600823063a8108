"""backup --exclude-path: the pattern matcher (a table of patterns x paths) and the tar
filter that drops excluded members from a stream before it is packed."""

from __future__ import annotations

import copy
import random
import re
import io
import tarfile

import pytest

from tests.conftest import deadline
from tests.unit.tars import chunked, corpus_members, make_tar, _info
from volbackup.errors import BadPattern, IntegrityError
from volbackup.stream.exclude import Matcher, filter_tar, parse_patterns, split_label
from volbackup.stream.tarstream import TarWalker, normal_name

# pattern, path, excluded?
TABLE = [
    # no `/`: one component at any depth (and everything beneath it)
    ("*.tmp", "a.tmp", True),
    ("*.tmp", "d/e/a.tmp", True),
    ("*.tmp", "a.tmp.keep", False),
    ("*.tmp", "x.tmp/inner", True),
    ("cache", "cache", True),
    ("cache", "srv/cache/blob", True),
    ("cache", "cached", False),
    ("cache", "my-cache", False),
    ("c?che", "cache", True),
    ("c?che", "c/che", False),       # `?` never matches `/`
    ("a*b", "a/b", False),           # `*` never crosses `/`
    ("a*b", "axxb", True),
    ("a**b", "a/x/b", False),        # `**` inside a component is a plain `*`
    ("a**b", "axyb", True),
    ("[!x]at", "bat", True),
    ("[!x]at", "xat", False),
    ("a[!x]b", "a/b", False),        # a negated class never matches `/`
    ("q[a-c]", "qb", True),
    ("q[a-c]", "qd", False),
    ("[]]x", "]x", True),
    ("[*]", "*", True),              # a class is the way to match a literal `*`
    ("[*]", "a", False),
    ("x[y", "x[y", True),            # an unclosed `[` is a plain `[`
    # with `/`: anchored at the volume root; a leading `/` means the same
    ("a/b", "a/b", True),
    ("a/b", "a/b/c/d", True),
    ("a/b", "z/a/b", False),
    ("/a/b", "a/b", True),
    ("/a/b", "z/a/b", False),
    ("/cache", "cache", True),
    ("/cache", "d/cache", False),
    ("cache/", "d/cache", True),     # a trailing `/` is dropped: `cache`, at any depth
    ("var/*.log", "var/x.log", True),
    ("var/*.log", "var/sub/x.log", False),
    # `**`: any number of components
    ("**/deep", "deep", True),
    ("**/deep", "a/b/deep", True),
    ("**/deep", "a/b/deeper", False),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "b/a/z", False),
    ("logs/**", "logs/x", True),
    ("logs/**", "logs/x/y", True),
    ("logs/**", "logs", False),      # keeps the (then empty) directory itself
    ("**", "anything/at/all", True),
    # member names as tar writes them
    ("cache", "./cache/", True),
    ("a/b", "./a/b/c", True),
    ("*", ".", False),               # the root is never excluded
    ("**", "./", False),
    # names with odd characters are matched literally
    ("we(ird)+.$", "we(ird)+.$", True),
    ("back\\slash", "back\\slash", True),
    ("caf\u00e9", "x/caf\u00e9", True),
]


@pytest.mark.parametrize("pattern,path,excluded", TABLE)
def test_matcher(pattern, path, excluded):
    assert Matcher([pattern]).excludes(path) is excluded


@pytest.mark.parametrize("pattern,why", [
    ("", "is empty"),
    ("/", "volume root"),
    ("//", "volume root"),
    ("a/../b", "'..' component"),
    ("..", "'..' component"),
    ("./cache", "'.' component"),
    ("a//b", "empty component"),
    ("a\x00b", "NUL"),
    ("[z-a]", "invalid character class"),
    ("x" * 5000, "longer than"),
])
def test_bad_patterns_are_refused(pattern, why):
    with pytest.raises(BadPattern, match=why) as e:
        Matcher(["ok", pattern])
    assert "\n" not in str(e.value)


def test_patterns_are_kept_as_given_without_duplicates():
    assert parse_patterns(["/a/", "*.tmp", "/a/"]) == ["/a/", "*.tmp"]
    assert not Matcher([])


def test_label_values_split_on_commas_and_newlines():
    assert split_label(" cache, *.tmp\n/var/log/**\n\n,") == ["cache", "*.tmp", "/var/log/**"]
    assert split_label("") == []


def names_after(data: bytes, patterns, chunking=65536) -> list[str]:
    """Member names (normalised) of the filtered stream, which must be a whole tar."""
    out = b"".join(filter_tar(chunked(data, chunking), Matcher(patterns)))
    walker = TarWalker()
    seen: list[str] = []
    walker.on_member = lambda start, data_at, entry: seen.append(normal_name(entry.name))
    walker.feed(out)
    walker.finish()
    return seen


def contents(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {normal_name(m.name): tar.extractfile(m).read() if m.isreg() else b""
                for m in tar}


@pytest.mark.parametrize("chunking", [1, 511, 512, 513, 4096, "random"])
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_filter_drops_long_names_with_their_headers(chunking, fmt):
    members = corpus_members(big=chunking != 1)  # byte by byte through 1 MiB: too slow
    data = make_tar(members, fmt)
    everything = [normal_name(i.name) for i, _ in members]
    long_dir = normal_name(members[11][0].name).split("/")[0]   # LONGER_NAME's first dir
    patterns = ["n" * 120, long_dir, "fifo", "big.bin"]
    kept = names_after(data, patterns, chunking)
    assert kept == [n for n in everything
                    if not Matcher(patterns).excludes(n)]
    assert "n" * 120 not in kept and "fifo" not in kept and long_dir not in str(kept)
    assert "hello.txt" in kept and "dir/hard" in kept and "big.bin" not in kept
    assert len(kept) == len(everything) - 3 - (chunking != 1)
    out = b"".join(filter_tar(chunked(data, chunking), Matcher(patterns)))
    want = {k: v for k, v in contents(data).items() if k in kept}
    assert contents(out) == want


def test_filter_without_patterns_passes_the_pieces_through():
    pieces = [b"a", b"bc"]
    assert list(filter_tar(iter(pieces), Matcher([]))) == pieces


def test_an_excluded_directory_takes_everything_beneath_it():
    data = make_tar([(_info("./", tarfile.DIRTYPE, 0o755), b""),
                     (_info("./cache/", tarfile.DIRTYPE, 0o755), b""),
                     (_info("./cache/a"), b"x" * 3000),
                     (_info("./cache/sub/", tarfile.DIRTYPE, 0o755), b""),
                     (_info("./cache/sub/b"), b"y"),
                     (_info("./keep"), b"kept")])
    assert names_after(data, ["cache"]) == [".", "keep"]
    assert names_after(data, ["cache/**"]) == [".", "cache", "keep"]


def test_a_link_to_a_kept_file_survives_and_an_excluded_link_goes():
    data = make_tar([(_info("./", tarfile.DIRTYPE, 0o755), b""),
                     (_info("./data"), b"payload"),
                     (_info("./tmp/", tarfile.DIRTYPE, 0o755), b""),
                     (_info("./tmp/link", tarfile.LNKTYPE, linkname="./data"), b""),
                     (_info("./also", tarfile.LNKTYPE, linkname="./data"), b"")])
    assert names_after(data, ["tmp"]) == [".", "data", "also"]


LINKED = [(_info("./", tarfile.DIRTYPE, 0o755), b""),
          (_info("./cache/", tarfile.DIRTYPE, 0o755), b""),
          (_info("./cache/blob", mode=0o4750, uid=7, mtime=1_600_000_000.25,
                 pax={"SCHILY.xattr.user.k": "v"}), b"payload" * 200),
          (_info("./kept", tarfile.LNKTYPE, mode=0o4750, uid=7, linkname="./cache/blob"), b""),
          (_info("./" + "k" * 150, tarfile.LNKTYPE, linkname="./cache/blob"), b""),
          (_info("./after"), b"after")]


def refetch_from(members, reads: list):
    """A refetch that gives the named member of `members` as the engine would: a tar
    holding that one file under its base name."""
    from contextlib import contextmanager

    @contextmanager
    def refetch(path):
        reads.append(path)
        info, data = next((i, d) for i, d in members if normal_name(i.name) == path)
        again = copy.copy(info)
        again.name = path.rsplit("/", 1)[-1]
        yield iter(chunked(make_tar([(again, data)]), 100))
    return refetch


def test_a_kept_hard_link_to_an_excluded_file_without_refetch_is_refused():
    data = make_tar(LINKED)
    with pytest.raises(BadPattern, match="'kept' is a hard link to 'cache/blob'"):
        names_after(data, ["cache"])
    assert names_after(data, ["cache", "kept", "k*"]) == [".", "after"]


@pytest.mark.parametrize("chunking", [1, 512, 700, 65536])
def test_a_kept_hard_link_to_an_excluded_file_gets_the_data_again(tmp_path, chunking):
    reads: list[str] = []
    out = b"".join(filter_tar(chunked(make_tar(LINKED), chunking), Matcher(["cache"]),
                              refetch_from(LINKED, reads)))
    assert reads == ["cache/blob"]   # once: the second link links to the first kept name
    walker = TarWalker()
    walker.feed(out)
    walker.finish()
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        members = {normal_name(m.name): m for m in tar}
        assert list(members) == [".", "kept", "k" * 150, "after"]
        kept = members["kept"]
        assert kept.isreg() and tar.extractfile(kept).read() == b"payload" * 200
        assert (kept.mode, kept.uid, kept.mtime) == (0o4750, 7, 1_600_000_000.25)
        assert kept.pax_headers["SCHILY.xattr.user.k"] == "v"
        assert members["k" * 150].islnk() and normal_name(members["k" * 150].linkname) == "kept"
        tar.extractall(tmp_path, filter="fully_trusted")
    assert (tmp_path / ("k" * 150)).stat().st_ino == (tmp_path / "kept").stat().st_ino
    assert (tmp_path / "after").read_bytes() == b"after"


def test_a_file_gone_when_read_again_breaks_the_stream():
    from contextlib import contextmanager

    from volbackup.errors import StreamBroken

    @contextmanager
    def gone(path):
        yield iter([make_tar([(_info("./", tarfile.DIRTYPE, 0o755), b"")])])

    with pytest.raises(StreamBroken, match="'cache/blob' changed while the volume was read"):
        b"".join(filter_tar(chunked(make_tar(LINKED), 512), Matcher(["cache"]), gone))


def test_a_truncated_stream_stays_truncated():
    data = make_tar(corpus_members(big=False))
    cut = data[:len(data) // 2 + 100]
    out = b"".join(filter_tar(chunked(cut, 512), Matcher(["exactly-one-block"])))
    walker = TarWalker()
    walker.feed(out)
    with pytest.raises(IntegrityError, match="truncated"):
        walker.finish()


def test_a_crafted_member_is_refused_by_the_filter_too():
    data = make_tar([(_info("./", tarfile.DIRTYPE, 0o755), b""),
                     (_info("../escape"), b"x")])
    with pytest.raises(IntegrityError, match="'..'"):
        b"".join(filter_tar(chunked(data, 512), Matcher(["nothing"])))


def test_sparse_files_are_dropped_whole(tmp_path):
    """GNU tar's sparse members (PAX 1.0: a map before the data) drop with their map."""
    import shutil
    import subprocess
    tar = shutil.which("tar")
    if tar is None or "GNU tar" not in subprocess.run([tar, "--version"], capture_output=True,
                                                      text=True).stdout:
        pytest.skip("needs GNU tar")
    (tmp_path / "v").mkdir()
    with open(tmp_path / "v" / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    (tmp_path / "v" / "after").write_bytes(b"after")
    data = subprocess.run([tar, "-C", str(tmp_path / "v"), "--create", "--file=-",
                           "--format=pax", "--sparse", "."], capture_output=True,
                          check=True).stdout
    assert sorted(names_after(data, ["sparse"])) == [".", "after"]
    assert sorted(names_after(data, ["after"])) == [".", "sparse"]


# Matching cost: the patterns of issue 23 that backtracked for minutes with a regex
# made of nested `[^/]*` and `(?:[^/]+/)*`. The deadline is a hang guard only.
SLOW_BEFORE = [
    ("*.*.*.*.*.*.*.*.tmp", "a." * 101 + "x", False),        # 203 characters
    ("*.*.*.*.*.*.*.*.tmp", "a." * 101 + "tmp", True),
    ("**/**/**/**/**/**/**/**/x", "/".join(["d"] * 60) + "/y", False),
    ("**/**/**/**/**/**/**/**/x", "/".join(["d"] * 60) + "/x", True),
    ("a/**/b/**/c/**/d/**/e/**/f", "a/" + "b/c/d/e/" * 15 + "g", False),
    ("a/**/b/**/c/**/d/**/e/**/f", "a/" + "b/c/d/e/" * 15 + "f", True),
    ("*a*a*a*a*a*a*a*a*b", "a" * 300, False),
    ("*a?*a?*a?*a?*[!a]", "a" * 300, False),
]


@pytest.mark.parametrize("pattern,path,excluded", SLOW_BEFORE)
def test_patterns_that_backtracked_finish(pattern, path, excluded):
    matcher = Matcher([pattern])
    with deadline(10):
        for _ in range(20):
            assert matcher.excludes(path) is excluded
            assert matcher.excludes(path + "/under/it") is excluded


def _reference(pattern: str) -> str:
    """The regex of the matcher before issue 23 (the semantics to keep), for fullmatch
    on the path and each directory above it."""
    body = pattern.strip("/")
    parts = body.split("/")
    anchored = pattern.startswith("/") or len(parts) > 1
    out, sep = ("" if anchored else "(?:.*/)?"), ""
    for i, part in enumerate(parts):
        if part == "**":
            out += sep + ("[^/]+(?:/[^/]+)*" if i == len(parts) - 1 else "(?:[^/]+/)*")
            sep = ""
        else:
            glob = re.sub(r"\*+", "*", part)
            piece = ""
            for c in re.findall(r"\[!?[^\]]*\]|.", glob):
                if c == "*":
                    piece += "[^/]*"
                elif c == "?":
                    piece += "[^/]"
                elif c.startswith("[") and len(c) > 1:
                    piece += ("[^/" + c[2:-1] + "]") if c[1] == "!" else "(?!/)" + c
                else:
                    piece += re.escape(c)
            out += sep + piece
            sep = "/"
    return out


def _reference_excludes(pattern: str, path: str) -> bool:
    regex = re.compile(_reference(pattern), re.DOTALL)
    path = normal_name(path)
    if path == ".":
        return False
    ends = [i for i, c in enumerate(path) if c == "/"] + [len(path)]
    return any(regex.fullmatch(path, 0, end) for end in ends)


def test_same_decisions_as_the_matcher_before_issue_23():
    """Random patterns and paths over a small alphabet (so that the old regex, which is
    exponential, stays quick on them): the new matcher decides as the old one."""
    rng = random.Random(23)
    globs = ["a", "b", "*", "?", "a*", "*b", "*a*", "[ab]", "[!a]", "a?b", "**", "*.*", "."]
    names = ["a", "b", "ab", "ba", "aab", "a.b", "b.a.b", "..a", "x"]
    checked = 0
    for _ in range(3000):
        parts = [rng.choice(globs) for _ in range(rng.randint(1, 4))]
        if any(p == "." for p in parts):
            continue
        pattern = ("/" if rng.random() < 0.2 else "") + "/".join(parts)
        matcher = Matcher([pattern])
        for _ in range(6):
            path = "/".join(rng.choice(names) for _ in range(rng.randint(1, 6)))
            assert matcher.excludes(path) is _reference_excludes(pattern, path), \
                (pattern, path)
            checked += 1
    assert checked > 10000
    for pattern, path, excluded in TABLE:  # the reference is the old matcher
        if "[" not in pattern:  # (it knows the classes of the alphabet above only)
            assert _reference_excludes(pattern, path) is excluded, (pattern, path)

"""`ls`, `dump` and `diff` over repositories of both layouts (and an encrypted one), made
without Docker: tars written as a backup writes them (tests/unit/chunkrepos.backup)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from tests.conftest import run_cli
from tests.unit.chunkrepos import backup, chunked_repo
from tests.unit.tars import end_of_members, make_tar
from tests.unit.test_catalog import Counting, _member, volume
from volbackup.errors import IntegrityError, NotFound, TargetNotEmpty, VolbackupError
from volbackup.ops import browse
from volbackup.repo.repository import Repository
from volbackup.stream.archive import END_MARKER


@pytest.fixture(params=["archive", "chunked"])
def root(request, tmp_path):
    path = tmp_path / "repo"
    if request.param == "chunked":
        chunked_repo(path)
    else:
        path.mkdir()
    return path


def opened(root) -> Repository:
    return Repository.open(str(root), writable=True)


def tar_members(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name.lstrip("./") or ".": t.extractfile(m).read() if m.isreg() else b""
                for m in t.getmembers()}


def dumped(repo, ref, path) -> bytes:
    out = io.BytesIO()
    browse.dump(repo, ref, path, out)
    return out.getvalue()


# -- ls

def test_ls_lists_every_entry_in_stream_order(root):
    repo = opened(root)
    backup(repo, volume())
    listing = browse.ls(repo, "pgdata")
    assert [e.path for e in listing.entries] == [
        ".", "etc", "etc/app.conf", "etc/extra.conf", "data", "data/big.bin",
        "data/small.txt", "data/link", "data/hard", "long/" * 30 + "name.txt"]


@pytest.mark.parametrize("given, want", [
    ("/etc", ["etc", "etc/app.conf", "etc/extra.conf"]),
    ("etc/", ["etc", "etc/app.conf", "etc/extra.conf"]),
    ("/data/small.txt", ["data/small.txt"]),
    ("/", None),
])
def test_ls_of_a_path_lists_it_and_what_is_under_it(root, given, want):
    repo = opened(root)
    backup(repo, volume())
    got = [e.path for e in browse.ls(repo, "pgdata", given).entries]
    assert got == want if want is not None else len(got) == 10


def test_ls_does_not_take_a_prefix_for_a_parent(root):
    repo = opened(root)
    backup(repo, make_tar_of([_member("./", type_=tarfile.DIRTYPE),
                              _member("./etc", type_=tarfile.DIRTYPE),
                              _member("./etcetera", b"x")]))
    assert [e.path for e in browse.ls(repo, "pgdata", "etc").entries] == ["etc"]


def make_tar_of(members) -> bytes:
    tar = make_tar(members)
    return tar[:end_of_members(tar) + END_MARKER]


def test_ls_of_an_unknown_path_or_snapshot_is_not_found(root):
    repo = opened(root)
    backup(repo, volume())
    with pytest.raises(NotFound, match="has no 'etc/nope'"):
        list(browse.ls(repo, "pgdata", "/etc/nope").entries)
    with pytest.raises(NotFound):
        browse.ls(repo, "nosuchvolume")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        browse.ls(repo, "pgdata", "etc/../../x")


# -- dump

def test_dump_gives_a_files_exact_bytes_and_a_hard_links_targets(root):
    repo = opened(root)
    tar = volume()
    backup(repo, tar)
    want = tar_members(tar)
    for path in ("data/big.bin", "etc/app.conf", "long/" * 30 + "name.txt"):
        assert hashlib.sha256(dumped(repo, "pgdata", "/" + path)).hexdigest() == \
            hashlib.sha256(want[path]).hexdigest()
    assert dumped(repo, "pgdata", "data/hard") == b"small\n"


def test_dump_of_an_empty_file_is_empty(root):
    repo = opened(root)
    backup(repo, make_tar_of([_member("./", type_=tarfile.DIRTYPE), _member("./empty")]))
    assert dumped(repo, "pgdata", "empty") == b""


def test_dump_of_a_directory_is_a_tar_of_its_subtree(root):
    repo = opened(root)
    backup(repo, volume())
    got = tar_members(dumped(repo, "pgdata", "/etc"))
    assert sorted(got) == [".", "etc", "etc/app.conf", "etc/extra.conf"]
    assert got["etc/app.conf"] == b"port = 5432\n"
    whole = tar_members(dumped(repo, "pgdata", "/"))
    assert len(whole) == 10 and whole["data/small.txt"] == b"small\n"


def test_dump_of_a_symlink_says_where_it_points(root):
    repo = opened(root)
    backup(repo, volume())
    with pytest.raises(VolbackupError, match=r"symbolic link to '\.\./etc/app\.conf'") as e:
        dumped(repo, "pgdata", "data/link")
    assert e.value.exit_code == 1


def test_dump_of_an_unknown_path_is_not_found(root):
    repo = opened(root)
    backup(repo, volume())
    with pytest.raises(NotFound):
        dumped(repo, "pgdata", "etc/nope")


def test_dump_in_a_chunked_repository_reads_only_the_files_chunks(tmp_path):
    root = tmp_path / "repo"
    chunked_repo(root)
    backup(Repository.open(str(root), writable=True), volume())
    repo = Repository(Counting(str(root)), Repository.open(str(root)).config)
    assert dumped(repo, "pgdata", "etc/app.conf") == b"port = 5432\n"
    chunks = [k for k in repo.backend.reads if k.startswith("chunks/")]
    whole = len(list((root / "chunks").rglob("*")))
    assert 0 < len(chunks) < whole / 4, (len(chunks), whole)


def test_dump_to_a_file_appears_whole_or_not_at_all(root, tmp_path):
    repo = opened(root)
    backup(repo, volume())
    out = tmp_path / "out.bin"
    result = browse.dump(repo, "pgdata", "etc/app.conf", str(out))
    assert out.read_bytes() == b"port = 5432\n" and result.bytes == 12
    with pytest.raises(TargetNotEmpty):
        browse.dump(repo, "pgdata", "etc/extra.conf", str(out))
    assert out.read_bytes() == b"port = 5432\n"
    browse.dump(repo, "pgdata", "etc/extra.conf", str(out), force=True)
    assert out.read_bytes() == b"x" * 3000
    with pytest.raises(NotFound):
        browse.dump(repo, "pgdata", "nope", str(tmp_path / "new.bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "repo"]


@pytest.fixture
def damaged(tmp_path):
    """An archive-layout repository whose snapshot's data/big.bin differs in its last byte
    from what the catalogue says (a valid archive, its manifest fields rewritten to fit):
    (repo, the entry, the original tar)."""
    root = tmp_path / "repo"
    root.mkdir()
    repo = opened(root)
    tar = volume()
    manifest = backup(repo, tar)
    (entry,) = [e for e in repo.catalog(manifest) if e.path == "data/big.bin"]
    changed = bytearray(tar)
    changed[entry.data + entry.size - 1] ^= 0xFF
    other = tmp_path / "other"
    other.mkdir()
    forged = backup(opened(other), bytes(changed))
    (root / "snapshots/pgdata" / manifest.archive).write_bytes(
        (other / "snapshots/pgdata" / forged.archive).read_bytes())
    path = root / f"snapshots/pgdata/{manifest.snapshot.split('@')[1]}.json"
    data = json.loads(path.read_text())
    data.update(sha256=forged.sha256, stored_bytes=forged.stored_bytes)
    path.write_text(json.dumps(data))
    return repo, entry, tar


def test_a_damaged_file_gives_an_error_and_never_its_last_piece(damaged):
    repo, entry, tar = damaged
    out = io.BytesIO()
    with pytest.raises(IntegrityError):
        browse.dump(repo, "pgdata", "data/big.bin", out)
    got = out.getvalue()
    assert len(got) < entry.size and tar[entry.data:entry.data + len(got)] == got


def test_a_damaged_file_leaves_no_output_file(damaged, tmp_path):
    repo, entry, tar = damaged
    with pytest.raises(IntegrityError):
        browse.dump(repo, "pgdata", "data/big.bin", str(tmp_path / "big.bin"))
    with pytest.raises(IntegrityError):
        browse.dump(repo, "pgdata", "/data", str(tmp_path / "data.tar"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "repo"]


# -- diff

def edited() -> bytes:
    return make_tar_of([
        _member("./", type_=tarfile.DIRTYPE, mode=0o755),
        _member("./etc/", type_=tarfile.DIRTYPE, mode=0o755, uid=7),       # mode
        _member("./etc/app.conf", b"port = 6543\n", mode=0o600, uid=7),    # content
        _member("./etc/extra.conf", b"x" * 3000, uid=9),                   # owner
        _member("./data/", type_=tarfile.DIRTYPE),
        _member("./data/small.txt", b"small\n"),
        _member("./data/link", type_=tarfile.SYMTYPE, link="../etc/other"),  # link
        _member("./data/hard", b"now a file\n"),                           # type
        _member("./data/new.txt", b"new!\n"),                              # added
        _member("./" + "long/" * 30 + "name.txt", b"deep\n")])             # big.bin removed


EXPECTED = {
    ("M", "etc", ("mode",)), ("M", "etc/app.conf", ("content",)),
    ("M", "etc/extra.conf", ("owner",)), ("M", "data/link", ("link",)),
    ("M", "data/hard", ("type",)), ("+", "data/new.txt", ()), ("-", "data/big.bin", ())}


@pytest.mark.parametrize("swap", [False, True])
def test_diff_names_each_change_and_what_changed(root, swap):
    repo = opened(root)
    old = backup(repo, volume())
    new = backup(repo, edited(), volume="other")
    if swap:  # the held side is the one with fewer entries: try both ways round
        old, new = new, old
    result = browse.diff(repo, old.snapshot, new.snapshot)
    got = {(c.kind, c.path, c.what) for c in result.changes}
    want = EXPECTED if not swap else {
        ({"+": "-", "-": "+"}.get(k, k), p, w) for k, p, w in EXPECTED}
    assert got == want
    s = result.summary
    assert (s.added, s.removed, s.modified, s.unchanged) == (1, 1, 5, 4 if not swap else 4)
    big = 600_000
    if not swap:
        assert s.bytes_removed == big + 12 and s.bytes_added == 5 + 12 + 11


def test_diff_of_a_snapshot_with_itself_is_empty(root):
    repo = opened(root)
    m = backup(repo, volume())
    result = browse.diff(repo, m.snapshot, "pgdata")
    assert list(result.changes) == [] and result.summary.unchanged == 10


def test_diff_ignores_mtime_alone(root):
    repo = opened(root)
    a = backup(repo, make_tar_of([_member("./", type_=tarfile.DIRTYPE), _member("./f", b"1")]))
    later = _member("./f", b"1")
    later[0].mtime += 3600
    b = backup(repo, make_tar_of([_member("./", type_=tarfile.DIRTYPE), later]), volume="b")
    assert list(browse.diff(repo, a.snapshot, b.snapshot).changes) == []


def test_diff_of_an_unknown_snapshot_is_not_found(root):
    repo = opened(root)
    backup(repo, volume())
    with pytest.raises(NotFound):
        browse.diff(repo, "pgdata", "nosuch")


# -- the CLI

def test_cli_ls_long_and_json(root):
    backup(opened(root), volume())
    run = run_cli("ls", "pgdata", "/data", "--long", "-r", str(root))
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("drw-r--r--") and lines[0].endswith(" /data")
    assert any(line.startswith("lrw-r--r--") and line.endswith(
        "/data/link -> ../etc/app.conf") for line in lines)
    assert any(" 600000 " in line and line.endswith("/data/big.bin") for line in lines)
    run = run_cli("ls", "pgdata", "--json", "-r", str(root))
    head, *entries = [json.loads(line) for line in run.stdout.splitlines()]
    assert head["command"] == "ls" and head["volbackup_json"] == 1
    assert len(entries) == 10 and entries[2]["path"] == "etc/app.conf"
    assert entries[2]["sha256"] == hashlib.sha256(b"port = 5432\n").hexdigest()


@pytest.mark.parametrize("args, code, words", [
    (["ls", "pgdata", "/etc/nope"], 4, "has no 'etc/nope'"),
    (["ls", "pgdata", "etc/../.."], 2, "'..'"),
    (["ls", "pgdata", "/etc/nope", "--json"], 4, "has no 'etc/nope'"),
    (["ls", "pgdata", "\x01/../x"], 2, "'..'"),
    (["ls", "nosuch"], 4, "nosuch"),
    (["dump", "pgdata", "/etc/nope"], 4, "has no 'etc/nope'"),
    (["dump", "pgdata", "../x"], 2, "'..'"),
    (["dump", "pgdata"], 2, "PATH"),
    (["dump", "pgdata", "data/link"], 1, "symbolic link to '../etc/app.conf'"),
    (["diff", "pgdata", "nosuch"], 4, "nosuch"),
    (["diff", "pgdata"], 2, "NEW"),
])
def test_cli_bad_input_is_one_line_and_an_exit_code(root, args, code, words):
    backup(opened(root), volume())
    run = run_cli(*args, "-r", str(root))
    assert run.code == code, (run.code, run.stderr)
    assert words in run.stderr and run.stdout == ""
    assert "Traceback" not in run.stderr


def test_cli_dump_to_stdout_and_to_a_file(root, tmp_path):
    backup(opened(root), volume())
    run = run_cli("dump", "pgdata", "/etc/app.conf", "-r", str(root))
    assert run.code == 0 and run.stdout == "port = 5432\n"
    out = tmp_path / "etc.tar"
    run = run_cli("dump", "pgdata", "/etc", "-o", str(out), "-r", str(root))
    assert run.code == 0, run.stderr
    assert sorted(tar_members(out.read_bytes())) == [".", "etc", "etc/app.conf",
                                                     "etc/extra.conf"]


def test_cli_diff_text_and_json(root):
    repo = opened(root)
    backup(repo, volume())
    backup(repo, edited(), volume="other")
    run = run_cli("diff", "pgdata", "other", "-r", str(root))
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "M    /etc/app.conf (content)" in lines and "+    /data/new.txt" in lines
    assert "-    /data/big.bin" in lines
    assert lines[-1].startswith("1 added, 1 removed, 5 modified;")
    run = run_cli("diff", "pgdata", "other", "--json", "-r", str(root))
    head, *changes, summary = [json.loads(line) for line in run.stdout.splitlines()]
    assert head["command"] == "diff" and len(changes) == 7
    assert summary["summary"]["modified"] == 5
    assert {"change": "modified", "path": "etc/app.conf", "type": "file", "old_size": 12,
            "new_size": 12, "what": ["content"]} in changes


# -- an encrypted repository: the catalogue and data need the identity

def test_an_encrypted_repository_is_browsed_with_its_key_and_identity(tmp_path):
    from tests.unit.test_encryption import age_identity, encrypted_repo
    from tests.unit.test_encryption import opened as opened_encrypted

    identity, key_file, root = tmp_path / "id.txt", tmp_path / "repo.key", tmp_path / "repo"
    encrypted_repo(root, [age_identity(identity)], key_file)
    backup(opened_encrypted(root, key_file), volume())
    backup(opened_encrypted(root, key_file), edited(), volume="other")
    repo = opened_encrypted(root, key_file, identity)
    assert dumped(repo, "pgdata", "etc/app.conf") == b"port = 5432\n"
    assert len(list(browse.ls(repo, "pgdata").entries)) == 10
    assert {(c.kind, c.path, c.what) for c in browse.diff(repo, "pgdata", "other").changes
            } == EXPECTED
    run = run_cli("ls", "pgdata", "--key-file", str(key_file), "-r", str(root))
    assert run.code == 17 and "identity" in run.stderr and run.stdout == ""
    run = run_cli("dump", "pgdata", "/etc/app.conf", "--identity", str(identity),
                  "--key-file", str(key_file), "-r", str(root))
    assert run.code == 0 and run.stdout == "port = 5432\n", run.stderr


def test_long_listing_shows_any_time_a_file_system_holds():
    """datetime stops at 9999; `ls -l` does not (negative times, the year 11470)."""
    from volbackup.cli.browse import long_line
    from volbackup.stream.catalog import CatalogEntry

    def shown(mtime, uid=0):
        return long_line(CatalogEntry("f", "file", 1, 0o7777, uid, 1 << 40, mtime, "", 0, 512,
                                      "ab" * 32))
    assert "1969-12-31 23:59:59 /f" in shown(-1)
    assert "1901-12-13 20:45:52 /f" in shown(-(1 << 31))
    assert "11470-01-17 02:46:40 /f" in shown(299_792_458_000)
    assert "292277026596-12-04 15:30:07 /f" in shown((1 << 63) - 1)
    assert shown(0, uid=4_294_967_294).startswith(f"-rwsrwsrwt 4294967294/{1 << 40} ")


def test_diff_compares_ids_past_32_bits():
    from volbackup.ops.browse import _compact, compare
    from volbackup.stream.catalog import CatalogEntry

    def entry(uid):
        return CatalogEntry("f", "file", 1, 0o644, uid, 0, 0, "", 0, 512, "ab" * 32)
    change = compare("f", _compact(entry(1 << 40)), _compact(entry((1 << 63) - 1)))
    assert change.what == ("owner",)

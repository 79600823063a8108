"""Command-line usage errors, help texts and JSON shapes that need no engine."""

from __future__ import annotations

import json
import stat

import pytest
from pyrage import x25519

from tests.conftest import umask

from tests.unit.chunkrepos import volume_tar
from tests.unit.manifests import make_manifest
from volbackup import __version__
from volbackup.cli import COMMAND_MODULES, all_commands
from volbackup.cli import main
from volbackup.repo.backends import LocalBackend
from volbackup.repo.repository import Repository


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args", [
    ["backup", "-r", "/tmp"],                              # nothing to back up
    ["backup", "v", "--container", "c", "-r", "/tmp"],     # both
    ["backup", "v", "--level", "0", "-r", "/tmp"],
    ["backup", "v", "--level", "23", "-r", "/tmp"],
    ["backup", "v", "--level", "fast", "-r", "/tmp"],
    ["backup", "v", "--jobs", "0", "-r", "/tmp"],
    ["backup", "v", "--jobs", "33", "-r", "/tmp"],
    ["backup", "v", "-j", "many", "-r", "/tmp"],
    ["restore", "-r", "/tmp"],
    ["restore", "a", "--all", "-r", "/tmp"],
    ["restore", "a", "b", "--as", "c", "-r", "/tmp"],
    ["restore", "--all", "--as", "c", "-r", "/tmp"],
    ["verify", "-r", "/tmp"],
    ["show", "-r", "/tmp"],
    ["nonsense"],
    ["list", "--bogus-option", "-r", "/tmp"],
])
def test_usage_errors_exit_2_without_a_traceback(capsys, args):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert "Traceback" not in err and "Error" in err


def test_repo_is_required(capsys, monkeypatch):
    monkeypatch.delenv("VOLBACKUP_REPO", raising=False)
    code, _, err = run(capsys, "list")
    assert code == 2 and "--repo" in err


def test_repo_from_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VOLBACKUP_REPO", str(tmp_path))
    code, out, err = run(capsys, "list", "--json")
    assert code == 0, err
    assert json.loads(out) == {"volbackup_json": 1, "command": "list", "snapshots": [],
                                "problems": [], "authenticated": False, "unauthentic": []}


def test_missing_repository_is_one_line_with_code_5(capsys, tmp_path):
    code, out, err = run(capsys, "list", "-r", str(tmp_path / "missing"))
    assert code == 5
    assert err.strip().splitlines() == [
        f"volbackup: error: repository {tmp_path / 'missing'} does not exist "
        "(`volbackup init` makes one; other commands need an existing directory)"]
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("command", [["list"], ["backup", "vol"], ["prune", "--keep-last", "1"],
                                     ["verify", "vol"], ["restore", "vol"], ["unlock"]])
def test_only_init_makes_a_missing_directory(capsys, tmp_path, command):
    """A typo in -r must not become a repository: every command but init refuses."""
    code, _, err = run(capsys, *command, "-r", str(tmp_path / "typo"))
    assert code == 5, err
    assert "does not exist" in err and not (tmp_path / "typo").exists()


def test_init_with_a_missing_parent_says_which_directory_is_missing(capsys, tmp_path):
    code, _, err = run(capsys, "init", "-r", str(tmp_path / "no-parent" / "repo"))
    assert code == 5
    assert err.strip().splitlines() == [
        f"volbackup: error: repository {tmp_path / 'no-parent' / 'repo'} cannot be made: "
        f"{tmp_path / 'no-parent'} does not exist (init makes the repository's directory, "
        "never its parents)"]
    assert not (tmp_path / "no-parent").exists()


def test_init_makes_a_missing_directory_0700_and_says_so(capsys, tmp_path):
    target = tmp_path / "new-repo"
    with umask(0o022):
        code, out, err = run(capsys, "init", "-r", str(target))
    assert code == 0, err
    assert out.splitlines()[0] == f"created directory {target} (mode 0700)"
    assert "created packed repository" in out.splitlines()[1]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert (target / "config").is_file()
    code, out, _ = run(capsys, "init", "-r", str(tmp_path / "json-repo"), "--json")
    assert code == 0 and json.loads(out)["created_directory"] is True
    (tmp_path / "existing").mkdir(mode=0o750)
    code, out, _ = run(capsys, "init", "-r", str(tmp_path / "existing"), "--json")
    assert code == 0 and json.loads(out)["created_directory"] is False
    assert stat.S_IMODE((tmp_path / "existing").stat().st_mode) == 0o750  # not its to change


def test_init_makes_a_packed_repository_unless_told_chunked(capsys, tmp_path):
    """Packed by default (issue 24), with chunks of 256 KiB; `--layout chunked` still makes
    what init made before, 1 MiB chunks and no pack size; the sizes are in the config."""
    code, out, err = run(capsys, "init", "-r", str(tmp_path / "packed"), "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["layout"] == "packed" and made["pack_size"] == 16 << 20
    assert (made["chunker"]["min_size"], made["chunker"]["avg_size"],
            made["chunker"]["max_size"]) == (64 << 10, 256 << 10, 1 << 20)
    assert made["chunker"]["algorithm"] == "fastcdc-2020-each-member"
    config = json.loads((tmp_path / "packed" / "config").read_text())
    assert config["layout"] == "packed" and config["chunker"]["avg_size"] == 256 << 10
    code, out, err = run(capsys, "init", "-r", str(tmp_path / "packed-text"))
    assert code == 0, err
    assert "created packed repository" in out and "chunks of about 320.0 KiB, packs of " \
        "16.0 MiB" in out, out

    code, out, err = run(capsys, "init", "-r", str(tmp_path / "chunked"), "--layout", "chunked",
                         "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["layout"] == "chunked" and made["pack_size"] is None
    assert (made["chunker"]["min_size"], made["chunker"]["avg_size"],
            made["chunker"]["max_size"]) == (256 << 10, 1 << 20, 4 << 20)
    config = json.loads((tmp_path / "chunked" / "config").read_text())
    assert config["layout"] == "chunked" and "pack_size" not in config
    assert config["format_version"] == 1      # what the versions before packs wrote

    code, out, err = run(capsys, "init", "-r", str(tmp_path / "packed-1m"), "--chunk-size", "1M",
                         "--json")
    assert code == 0 and json.loads(out)["chunker"]["avg_size"] == 1 << 20, err
    code, _, err = run(capsys, "init", "-r", str(tmp_path / "bad"), "--layout", "archive")
    assert code == 2 and "'archive' is not one of 'packed', 'chunked'" in err, err


def test_init_over_archive_snapshots_says_new_ones_are_packed(capsys, tmp_path):
    """An archive-layout repository's snapshots stay; init says what the new ones will be."""
    old = Repository(LocalBackend(tmp_path))
    snapshot = "pgdata@20261101T000000Z-0001"
    with old.snapshot_writer(snapshot) as writer:
        packed = writer.pack([volume_tar(seed=3)], 3)
    old.commit(make_manifest(snapshot, "2026-11-01T00:00:00.000Z", archive=writer.archive,
                             bytes=packed.bytes, stored_bytes=packed.stored_bytes,
                             sha256=packed.sha256, entries=packed.entries))
    code, out, err = run(capsys, "init", "-r", str(tmp_path))
    assert code == 0, err
    assert out.splitlines()[-1] == ("its 1 existing snapshots keep the archive layout and stay "
                                    "readable; new ones are packed")
    assert Repository.open(str(tmp_path)).layout.name == "packed"


def test_init_makes_no_parents(capsys, tmp_path):
    code, _, err = run(capsys, "init", "-r", str(tmp_path / "no" / "such" / "repo"))
    assert code == 5 and "does not exist" in err
    assert not (tmp_path / "no").exists()


def test_a_failed_init_removes_the_directory_it_made(capsys, tmp_path):
    """An encrypted init without --key-file fails after the directory was made: it goes."""
    target = tmp_path / "enc"
    recipient = str(x25519.Identity.generate().to_public())
    code, _, err = run(capsys, "init", "-r", str(target), "--encrypt-to", recipient)
    assert code == 17 and "--key-file" in err, err
    assert not target.exists()


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out


@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_every_command_has_help_with_text(capsys, name):
    code, out, _ = run(capsys, name, "--help")
    assert code == 0
    command = all_commands()[name]
    assert command.name == name, f"{name!r} is {command.name!r} in its module"
    assert command.help and len(command.help) > 20
    if any(getattr(p, "name", "") == "repo" for p in command.params):
        assert "--repo" in out


def test_clean_escapes_control_characters_only():
    from volbackup.cli.render import clean

    assert clean("pgdata db1 /srv/www é ü 日本") == "pgdata db1 /srv/www é ü 日本"
    assert clean("a\x1b[2Jb\x07c\rd\ne\x7ff\x9bg") == "a\\x1b[2Jb\\x07c\\x0dd\\x0ae\\x7ff\\x9bg"
    assert clean("evil\u202eexe.txt\u2066") == "evil\\u202eexe.txt\\u2066"
    assert clean(42) == "42"


def test_missing_repository_names_the_environment_variable(capsys, monkeypatch):
    monkeypatch.delenv("VOLBACKUP_REPO", raising=False)
    for command in (["list"], ["verify", "--all"], ["prune", "--keep-last", "1"]):
        code, out, err = run(capsys, *command)
        assert code == 2
        assert "Missing option '-r' / '--repo' (or set VOLBACKUP_REPO)" in err

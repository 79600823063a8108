"""Shell completion, driven the way bash drives it (`_VOLBACKUP_COMPLETE=bash_complete`,
COMP_WORDS, COMP_CWORD) in a subprocess, against the real engine and a real repository."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import run_cli


def complete(words: str, env: dict | None = None, timeout: float = 30) -> list[str]:
    """The candidates for the last word of `words` ("" after a trailing space)."""
    parts = words.split(" ")
    full = {**os.environ, "_VOLBACKUP_COMPLETE": "bash_complete", "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "volbackup"], capture_output=True, text=True,
                          env=full, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: a hung engine or endpoint."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_commands_and_options():
    assert complete("volbackup res") == ["restore"]
    assert complete("volbackup doc") == ["doctor"]
    assert "--json" in complete("volbackup doctor --")
    assert complete("volbackup backup --lev") == ["--level"]


def test_volume_names_come_from_the_engine(make_volume, names):
    volume = make_volume("cmpl").name
    other = make_volume("other").name
    stem = volume[:-3]
    assert complete(f"volbackup backup {stem}") == [volume]
    assert complete(f"volbackup backup --exclude {volume[:-1]}") == [volume]
    assert complete(f"volbackup migrate {volume} {other[:-1]}") == [other]
    assert complete(f"volbackup backup {other}") == [other]
    assert complete("volbackup backup vbtest-no-such-volume-") == []


def test_snapshot_ids_come_from_the_repository(make_volume, repo_dir):
    volume = make_volume("snap").name
    made = run_cli("backup", volume, "-r", str(repo_dir), "--json")
    assert made.code == 0, made.stderr
    snapshot = json.loads(made.stdout)["volumes"][0]["snapshot"]
    for command in ("restore", "show", "verify", "export"):
        assert complete(f"volbackup {command} -r {repo_dir} {volume[:-2]}") == [volume, snapshot]
    assert complete(f"volbackup show -r {repo_dir} {volume}@") == [snapshot]
    assert complete(f"volbackup show {volume}@", env={"VOLBACKUP_REPO": str(repo_dir)}) == [
        snapshot]
    assert complete(f"volbackup list -r {repo_dir} {volume[:-1]}") == [volume]
    assert complete(f"volbackup prune -r {repo_dir} --volume {volume[:-1]}") == [volume]


def test_no_repository_or_a_bad_one_gives_no_candidates(tmp_path):
    env = {"VOLBACKUP_REPO": ""}
    assert complete("volbackup show vb", env=env) == []
    assert complete(f"volbackup show -r {tmp_path}/missing vb", env=env) == []
    (tmp_path / "file").write_text("x")
    assert complete(f"volbackup restore -r {tmp_path}/file vb", env=env) == []
    assert complete("volbackup restore -r s3://vbtest-no-such-bucket/x vb", env={
        **env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}) == []


def test_an_unreachable_engine_gives_no_candidates(tmp_path):
    assert complete("volbackup backup vb",
                    env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}) == []


def test_a_hung_engine_or_endpoint_does_not_hang_completion(silent_server):
    """The server accepts and never answers: completion still ends, with no candidates, after
    each lookup reached it (so the lookup was abandoned, not skipped). The lookups are bounded
    to 3 s each; the subprocess timeout is only a hang guard, generous for a loaded host."""
    port, accepted = silent_server
    assert complete("volbackup backup vb", env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}"},
                    timeout=120) == []
    reached_by_engine_lookup = len(accepted)
    assert reached_by_engine_lookup >= 1
    assert complete("volbackup show -r s3://vbtest-any/x vb",
                    env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                         "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
                    timeout=120) == []
    assert len(accepted) > reached_by_engine_lookup


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"),
                                           ("zsh", "compdef"), ("fish", "complete --no-files")])
def test_the_install_scripts(shell, marker):
    proc = subprocess.run([sys.executable, "-m", "volbackup"], capture_output=True, text=True,
                          env={**os.environ, "_VOLBACKUP_COMPLETE": f"{shell}_source"},
                          timeout=30)
    assert proc.returncode == 0 and marker in proc.stdout and "_VOLBACKUP_COMPLETE" in proc.stdout

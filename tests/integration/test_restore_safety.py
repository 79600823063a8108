"""A restore must not be a way in, must not lose what it replaces, and must own its target.

- Driver options come from the repository, which anyone who can write to it controls: the
  ones that point outside the engine's volume area need --trust-driver-options.
- restore --force keeps the replaced volume's contents in a safety snapshot, and refuses
  before removing anything when the new contents cannot fit.
- Two restores into one name: exactly one wins; the other changes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import TEST_LABEL, make_layout
from tests.integration.helpers import (contents, fill, one_line_error, random_file, repo_files,
                                       tar_first_on_path)
from tests.integration.slow_engine import SlowEngine
from volbackup.docker.helpers import CREATED_LABEL, HELPER_IMAGE, HELPER_LABEL, HOST_LABEL, PID_LABEL
from volbackup.repo import locking
from volbackup.repo.repository import Repository

FILES = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40}
# The safety snapshots of restore --force (part 2) are written to both layouts; tests of
# what is decided from a manifest alone, or of the engine, run on the archive layout.
ARCHIVE_ONLY = pytest.mark.parametrize("layout", ["archive"])


@pytest.fixture
def repo_dir(repo_dir, layout):
    make_layout(str(repo_dir), layout)
    return repo_dir


def manifest_path(repo_dir: Path, volume: str) -> Path:
    (path,) = Path(repo_dir, "snapshots", volume).glob("*.json")
    return path


def craft(repo_dir: Path, volume: str, **fields) -> None:
    """Rewrite the manifest of `volume`'s only snapshot, as a writer of the repository can."""
    path = manifest_path(repo_dir, volume)
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.fixture
def setuid_snapshot(make_volume, mountpoint, cli, repo_dir, client):
    """A snapshot holding a setuid-root file; the volume itself is gone afterwards."""
    volume = make_volume("src")
    root = mountpoint(volume.name)
    fill(root, FILES)
    fill(root, {"evil": b"#!/bin/sh\necho owned\n"})
    os.chmod(os.path.join(root, "evil"), 0o4755)
    assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
    volume.remove()
    return volume.name


def volume_exists(client, name: str) -> bool:
    return any(v.name == name for v in client.volumes.list())


# -- 1. driver options from the repository ------------------------------------------------

@ARCHIVE_ONLY
def test_a_crafted_bind_manifest_creates_nothing_without_the_flag(setuid_snapshot, cli, repo_dir,
                                                                  client, tmp_path):
    host_dir = tmp_path / "usr-local-sbin"   # empty, as /usr/local/sbin usually is
    host_dir.mkdir()
    bind = {"type": "none", "o": "bind", "device": str(host_dir)}
    craft(repo_dir, setuid_snapshot, driver_options=bind)

    result = cli("restore", setuid_snapshot, "-r", str(repo_dir))
    assert result.code == 13, result.stderr
    line = one_line_error(result.stderr)
    assert f"device={host_dir}" in line and "o=bind" in line
    assert "--trust-driver-options" in line and "--drop-driver-options" in line
    assert not volume_exists(client, setuid_snapshot)
    assert os.listdir(host_dir) == []

    result = cli("restore", "--all", "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    (out,) = [v for v in json.loads(result.stdout)["volumes"] if v["volume"] == setuid_snapshot]
    assert out["status"] == "skipped" and "--trust-driver-options" in out["message"]
    assert "a bind mount of host path" in out["message"]
    assert not volume_exists(client, setuid_snapshot)
    assert os.listdir(host_dir) == []


@ARCHIVE_ONLY
def test_trusted_options_are_announced_then_applied(setuid_snapshot, cli, repo_dir, client,
                                                    tmp_path):
    host_dir = tmp_path / "storage"
    host_dir.mkdir()
    bind = {"type": "none", "o": "bind", "device": str(host_dir)}
    craft(repo_dir, setuid_snapshot, driver_options=bind)
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir), "--trust-driver-options",
                 "--json")
    assert result.code == 0, result.stderr
    assert f"volume {setuid_snapshot}: creating it with driver local" in result.stderr
    assert "a bind mount of host path" in result.stderr
    (out,) = json.loads(result.stdout)["volumes"]
    assert out["driver_options"] == bind and "bind mount" in out["external_storage"]
    assert client.api.inspect_volume(setuid_snapshot)["Options"] == bind
    assert contents(str(host_dir))["a.txt"] == b"alpha\n"


@ARCHIVE_ONLY
def test_drop_driver_options_restores_a_plain_volume(setuid_snapshot, cli, repo_dir, client,
                                                     mountpoint, tmp_path, names):
    host_dir = tmp_path / "never"
    host_dir.mkdir()
    craft(repo_dir, setuid_snapshot, driver="local",
          driver_options={"type": "none", "o": "bind", "device": str(host_dir)})
    target = names("plain")
    result = cli("restore", setuid_snapshot, "--as", target, "--drop-driver-options",
                 "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert not client.api.inspect_volume(target)["Options"]
    assert contents(mountpoint(target))["a.txt"] == b"alpha\n"
    mode = os.stat(os.path.join(mountpoint(target), "evil")).st_mode
    assert mode & stat.S_ISUID      # kept, but inside the engine's volume area
    assert os.listdir(host_dir) == []


@ARCHIVE_ONLY
def test_cifs_passwords_are_never_printed(setuid_snapshot, cli, repo_dir, client):
    cifs = {"type": "cifs", "device": "//192.0.2.1/share",
            "o": "addr=192.0.2.1,username=bob,password=hunter2,credentials=/root/smb"}
    craft(repo_dir, setuid_snapshot, driver_options=cifs)
    for extra in ([], ["--json"]):
        result = cli("restore", setuid_snapshot, "-r", str(repo_dir), *extra)
        assert result.code == 13, result.stderr
        assert "password=***" in one_line_error(result.stderr)
        assert "hunter2" not in result.stdout + result.stderr
        assert "/root/smb" not in result.stdout + result.stderr
    assert not volume_exists(client, setuid_snapshot)
    # trusted: the engine's mount error repeats the options; the secret is still hidden
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir), "--trust-driver-options")
    assert result.code == 7, result.stderr
    assert "failed to mount local volume" in result.stderr and "password=***" in result.stderr
    assert "hunter2" not in result.stderr and "/root/smb" not in result.stderr
    assert not volume_exists(client, setuid_snapshot)


@ARCHIVE_ONLY
def test_a_plugin_driver_is_refused(setuid_snapshot, cli, repo_dir, client):
    craft(repo_dir, setuid_snapshot, driver="evil/plugin", driver_options={})
    result = cli("restore", setuid_snapshot, "-r", str(repo_dir))
    assert result.code == 13, result.stderr
    assert "volume plugin 'evil/plugin'" in one_line_error(result.stderr)
    assert not volume_exists(client, setuid_snapshot)


def test_migrate_refuses_bind_options_before_creating_anything(make_volume, cli, client, tmp_path,
                                                               names):
    host_dir = tmp_path / "bound"
    host_dir.mkdir()
    fill(str(host_dir), FILES)
    source = make_volume("bound", driver_opts={"type": "none", "o": "bind",
                                               "device": str(host_dir)})
    target = names("moved")
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    result = cli("migrate", source.name, "--as", target, "--to-host", sock)
    assert result.code == 13, result.stderr
    assert "a bind mount of host path" in one_line_error(result.stderr)
    assert not volume_exists(client, target)


# -- 2. restore --force keeps what it replaces ------------------------------------------------

@pytest.fixture
def old_and_new(make_volume, mountpoint, cli, repo_dir):
    """A volume holding OLD (the target) and a snapshot of another holding FILES."""
    source = make_volume("new")
    fill(mountpoint(source.name), FILES)
    result = cli("backup", source.name, "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    target = make_volume("old", labels={"was": "old"})
    fill(mountpoint(target.name), OLD)
    return json.loads(result.stdout)["volumes"][0]["snapshot"], target.name


OLD = {"precious.txt": b"only here\n", "deep/er/data": os.urandom(50_000)}

# GNU tar that reads as usual (the safety snapshot works) but fails to extract, as on a
# disk that fills up half way through the restore.
EXTRACT_FAILS = """#!/bin/sh
case " $* " in
  *" --extract "*) head -c 70000 > /dev/null
                   echo "tar: ./sub/b.bin: Cannot write: No space left on device" >&2; exit 2 ;;
  *) exec {tar} "$@" ;;
esac
"""


@pytest.fixture
def extract_fails(tmp_path) -> dict:
    return tar_first_on_path(tmp_path, EXTRACT_FAILS)


def test_a_restore_that_fails_late_leaves_the_old_contents_restorable(
        old_and_new, cli, repo_dir, client, mountpoint, extract_fails):
    snapshot, target = old_and_new
    result = cli("restore", snapshot, "--as", target, "--force", "-r", str(repo_dir), "--json",
                 env=extract_fails)
    assert result.code == 1, result.stderr
    (out,) = json.loads(result.stdout)["volumes"]
    safety = out["safety_snapshot"]
    assert safety and safety.startswith(f"{target}@")
    saved, error = result.stderr.splitlines()   # said before the volume was removed
    assert saved == f"volbackup: volume {target}: old contents saved as safety snapshot " \
                    f"{safety} (volbackup restore {safety} brings them back)"
    line = one_line_error(error)
    assert "No space left on device" in line
    assert f"volume {target} was removed; its previous contents are kept in safety snapshot " \
           f"{safety} (volbackup restore {safety})" in line
    assert not volume_exists(client, target)
    manifest = json.loads(cli("show", safety, "-r", str(repo_dir), "--json").stdout)["manifest"]
    assert manifest["safety_for"] == snapshot

    back = cli("restore", safety, "-r", str(repo_dir))   # the one command the message names
    assert back.code == 0, back.stderr
    assert contents(mountpoint(target)) == OLD
    assert client.api.inspect_volume(target)["Labels"] == {"was": "old"}


def test_force_names_the_safety_snapshot_and_a_name_still_means_the_backup(
        old_and_new, cli, repo_dir, mountpoint):
    snapshot, target = old_and_new
    volume = snapshot.split("@")[0]
    result = cli("restore", snapshot, "--as", target, "--force", "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert f"{target}: restored from {snapshot} (replaced; old contents in safety snapshot " \
           f"{target}@" in result.stdout
    assert contents(mountpoint(target)) == FILES
    # the source's own newest snapshot is still the backup, also after a safety snapshot of it
    fill(mountpoint(volume), {"a.txt": b"changed\n"})
    again = cli("restore", volume, "--force", "-r", str(repo_dir), "--json")
    assert again.code == 0, again.stderr
    (out,) = json.loads(again.stdout)["volumes"]
    assert out["snapshot"] == snapshot and out["safety_snapshot"].startswith(f"{volume}@")
    assert contents(mountpoint(volume)) == FILES
    # the same command again: the volume's newest snapshot is now a safety snapshot, but a
    # name still means the backup, not "undo the last restore"
    fill(mountpoint(volume), {"a.txt": b"changed again\n"})
    third = cli("restore", volume, "--force", "-r", str(repo_dir), "--json")
    assert third.code == 0, third.stderr
    assert json.loads(third.stdout)["volumes"][0]["snapshot"] == snapshot
    assert contents(mountpoint(volume)) == FILES


@ARCHIVE_ONLY
def test_the_safety_snapshot_waits_for_a_prune_like_any_backup(old_and_new, cli, repo_dir,
                                                                 mountpoint):
    """It is written under the shared lock: while a prune holds the exclusive one, the
    restore waits and the old volume stays as it was; it goes on once the prune is done."""
    snapshot, target = old_and_new
    pruning = locking.acquire(Repository.open(str(repo_dir), writable=True).backend,
                              locking.EXCLUSIVE, 0, "prune")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "volbackup", "restore", snapshot, "--as",
                                 target, "--force", "-r", str(repo_dir), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        assert contents(mountpoint(target)) == OLD
    finally:
        pruning.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["volumes"][0]["safety_snapshot"].startswith(f"{target}@")
    assert contents(mountpoint(target)) == FILES


@pytest.fixture
def read_only(repo_dir):
    """`repo_dir` made read-only for root too (a read-only bind mount over itself)."""
    def make():
        subprocess.run(["mount", "--bind", str(repo_dir), str(repo_dir)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(repo_dir)], check=True)
        made.append(True)
    made = []
    yield make
    if made:
        subprocess.run(["umount", str(repo_dir)], check=True)


def test_no_safety_snapshot_no_removal(old_and_new, cli, repo_dir, mountpoint, read_only):
    snapshot, target = old_and_new
    stored = repo_files(repo_dir)
    read_only()
    result = cli("restore", snapshot, "--as", target, "--force", "-r", str(repo_dir))
    assert result.code == 5, result.stderr
    line = one_line_error(result.stderr)
    assert f"volume {target} was not replaced: its safety snapshot failed (" in line
    assert "nothing was removed" in line and "--no-safety-snapshot" in line
    assert contents(mountpoint(target)) == OLD
    assert repo_files(repo_dir) == stored
    # the way out the message names: the risk is the user's
    result = cli("restore", snapshot, "--as", target, "--force", "--no-safety-snapshot",
                 "-r", str(repo_dir), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["volumes"][0]["safety_snapshot"] is None
    assert contents(mountpoint(target)) == FILES


def test_force_refuses_before_removing_anything_when_the_snapshot_cannot_fit(
        make_volume, mountpoint, cli, repo_dir, client):
    source = make_volume("big")
    random_file(mountpoint(source.name), size=16 << 20)
    assert cli("backup", source.name, "-r", str(repo_dir)).code == 0
    stored = repo_files(repo_dir)
    target = make_volume("small")
    storage = mountpoint(target.name)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "vbtest", storage], check=True)
    try:
        fill(storage, {"precious.txt": b"only here\n"})
        result = cli("restore", source.name, "--as", target.name, "--force",
                     "-r", str(repo_dir))
        assert result.code == 15, result.stderr
        line = one_line_error(result.stderr)
        assert f"volume {target.name} was not replaced: snapshot {source.name}@" in line
        assert f"the filesystem of {storage} has " in line and "nothing was removed" in line
        assert contents(storage) == {"precious.txt": b"only here\n"}
        assert volume_exists(client, target.name)
        assert repo_files(repo_dir) == stored, "no safety snapshot is taken for a refusal"
    finally:
        subprocess.run(["umount", storage], check=True)


# -- 3. two restores into one name ----------------------------------------------------------

class SlowProxy(SlowEngine):
    """A proxy in front of the engine that holds `POST .../volumes/create` back, like a busy
    engine, until two runs have gone for the target (two claim creates, or two volume
    creates, seen) or `hold` seconds passed; so the two runs overlap however slowly each
    starts. (volume create is idempotent: two runs creating one name both succeed.)"""

    def __init__(self, path: Path, hold: float):
        super().__init__(path, rb"^$", times=0)
        self.hold = hold
        self.attempts = {"claim": 0, "volume": 0}
        self.changed = threading.Condition()

    def gate(self, data: bytes) -> None:
        first_line = data.split(b"\r\n", 1)[0]
        if not first_line.startswith(b"POST "):
            return
        kind = ("volume" if b"/volumes/create" in first_line else
                "claim" if b"/containers/create" in first_line
                and b"name=volbackup-claim-" in first_line else None)
        if kind:
            with self.changed:
                self.attempts[kind] += 1
                self.changed.notify_all()
                if kind == "volume":
                    self.changed.wait_for(lambda: max(self.attempts.values()) >= 2,
                                          timeout=self.hold)
            if kind == "volume" and self.attempts["claim"] >= 2:
                time.sleep(3)  # the winner still holds its claim while the loser looks it up


@pytest.fixture
def slow_engine(tmp_path):
    """DOCKER_HOST of a proxy whose `volume create` waits for a second run (SlowProxy)."""
    if not os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
        pytest.skip("the proxy fronts a unix-socket engine")
    with SlowProxy(tmp_path / "slow.sock", hold=30.0) as proxy:
        yield proxy.url


@ARCHIVE_ONLY
def test_two_restores_into_one_name_exactly_one_wins(make_volume, mountpoint, cli, repo_dir,
                                                     names, client, slow_engine):
    snapshots = {}
    for stem, files in (("a", {"a-only": b"A\n", "same": b"from A\n"}),
                        ("b", {"b-only": b"B\n", "same": b"from B\n"})):
        volume = make_volume(stem)
        fill(mountpoint(volume.name), files)
        assert cli("backup", volume.name, "-r", str(repo_dir)).code == 0
        snapshots[volume.name] = files
    target = names("t")
    env = {**os.environ, "DOCKER_HOST": slow_engine}
    procs = [subprocess.Popen([sys.executable, "-m", "volbackup", "restore", volume, "--as",
                               target, "-r", str(repo_dir), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for volume in snapshots]
    done = [(p, *p.communicate(timeout=300)) for p in procs]
    winners = [(p, out) for p, out, _ in done if p.returncode == 0]
    losers = [(p, err) for p, _, err in done if p.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(p.returncode, e) for p, _, e in done]
    (winner, out), (loser, err) = winners[0], losers[0]
    assert loser.returncode == 14, err
    line = one_line_error(err)
    assert f"volume {target} is being restored or migrated into by another volbackup run " \
           f"(pid {winner.pid} " in line
    restored_from = json.loads(out)["volumes"][0]["snapshot"].split("@")[0]
    assert contents(mountpoint(target)) == snapshots[restored_from]
    assert client.api.containers(all=True, filters={"name": f"volbackup-claim-{target}"}) == []


def claim_container(client, target: str, pid: int, host: str):
    """A claim on `target` as a run with `pid` on `host` leaves it (the helper label lets
    the no_helpers_left fixture remove it if the test fails)."""
    return client.api.create_container(
        HELPER_IMAGE, command=["volbackup-claim"], name=f"volbackup-claim-{target}",
        labels={HELPER_LABEL: "claim", PID_LABEL: str(pid), HOST_LABEL: host,
                CREATED_LABEL: str(int(time.time())), TEST_LABEL: "1"})


@ARCHIVE_ONLY
def test_a_live_claim_refuses_and_a_dead_one_is_swept(setuid_snapshot, cli, repo_dir, client,
                                                      names, mountpoint):
    target = names("claimed")
    held = claim_container(client, target, os.getpid(), socket.gethostname())
    try:
        result = cli("restore", setuid_snapshot, "--as", target, "-r", str(repo_dir))
        assert result.code == 14, result.stderr
        assert f"(pid {os.getpid()} on host {socket.gethostname()}, since " \
               in one_line_error(result.stderr)
        assert not volume_exists(client, target)
    finally:
        client.api.remove_container(held["Id"], force=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim_container(client, target, dead.pid, socket.gethostname())  # a killed run's claim
    result = cli("restore", setuid_snapshot, "--as", target, "-r", str(repo_dir))
    assert result.code == 0, result.stderr
    assert contents(mountpoint(target))["a.txt"] == b"alpha\n"

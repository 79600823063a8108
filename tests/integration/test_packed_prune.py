"""Prune of a packed repository while another process backs up into it: real processes
(`python -m volbackup backup` and `prune`) on one directory repository, each stopped at a
named step by the VOLBACKUP_PAUSE_AT hook (volbackup.pauses) and killed there with SIGKILL;
then `verify --all --packs`, and a second prune that finishes (docs/design.md, "Prune
with concurrent backups")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import helpers_of
from tests.integration.test_chunked import backed_up, init, ok
from volbackup.pauses import FILE_ENV, STEP_ENV

FIXED = 1_600_000_000


def fill(root: str, seed: int) -> None:
    """4 MiB of seeded bytes and a note, every mtime fixed: two volumes filled with one
    seed give the same blobs (but for the root's)."""
    import random
    Path(root, "data.bin").write_bytes(random.Random(seed).randbytes(4 << 20))
    Path(root, "note").write_text(f"seed {seed}\n")
    for name in ("data.bin", "note", ""):
        os.utime(os.path.join(root, name), (FIXED, FIXED))


class Paused:
    """A volbackup process that stops at the steps named (comma-separated)."""

    def __init__(self, tmp_path: Path, name: str, steps: str, *args: str):
        self.flag = tmp_path / f"{name}.paused"
        env = {**os.environ, STEP_ENV: steps, FILE_ENV: str(self.flag)}
        self.proc = subprocess.Popen([sys.executable, "-m", "volbackup", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def reached(self, step: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (self.flag.exists() and self.flag.read_text() == step):
            if self.proc.poll() is not None:
                raise AssertionError(f"ended before {step}: {self.proc.communicate()}")
            assert time.monotonic() < deadline, f"never reached {step}"
            time.sleep(0.02)

    def go_on(self) -> None:
        self.flag.unlink()

    def kill(self, client) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for helper in helpers_of(client, self.proc.pid):   # SIGKILL leaves its helper
            client.api.remove_container(helper["Id"], force=True)

    def finished(self) -> dict:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return json.loads(out)


def verified(repo: Path) -> dict:
    """`verify --all --packs`: every snapshot reads back, every pack matches the index."""
    result = json.loads(ok("verify", "--all", "--packs", "-r", str(repo), "--json").stdout)
    assert result["packs"]["problems"] == []
    assert all(s["status"] == "ok" for s in result["snapshots"]), result["snapshots"]
    return result


def plans(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "prune").glob("*")) if (repo / "prune").exists() \
        else []


@pytest.fixture
def scene(make_volume, mountpoint, tmp_path):
    """A packed repository where `prune --keep-last 1` dooms the packs of `first`'s first
    snapshot (seed 1), and `twin` (not backed up yet) holds the same files."""
    first, twin = make_volume("first"), make_volume("twin")
    repo = tmp_path / "repo"
    repo.mkdir()
    init(repo, "--layout", "packed", "--pack-size", "4M")
    fill(mountpoint(first.name), 1)
    backed_up(first.name, repo)
    fill(mountpoint(first.name), 2)
    backed_up(first.name, repo)
    fill(mountpoint(twin.name), 1)
    return repo, first.name, twin.name


def prune_args(repo: Path, *extra: str) -> tuple[str, ...]:
    return ("prune", "-r", str(repo), "--keep-last", "1", "--leftover-age", "0s", "--json",
            *extra)


def test_a_prune_killed_after_its_plan_while_a_backup_counts_on_its_doomed_packs(
        scene, tmp_path, client):
    """The worst moment for the backup: it loaded the index before the plan and names the
    doomed blobs after prune read the lists. Prune is killed right after its plan; the
    backup goes on and deduplicates against the doomed packs; the next prune adopts the
    plan, checks every list, and keeps (rescues) those packs."""
    repo, first, twin = scene
    backup = Paused(tmp_path, "backup", "index-loaded", "backup", twin, "-r", str(repo),
                    "--json")
    backup.reached("index-loaded")
    pruning = Paused(tmp_path, "prune", "prune-planned", *prune_args(repo))
    pruning.reached("prune-planned")
    pruning.kill(client)
    assert len(plans(repo)) == 1
    backup.go_on()
    (made,) = backup.finished()["volumes"]
    assert made["new_chunks"] <= 3          # all but the root's blob found in doomed packs
    verified(repo)
    again = json.loads(ok(*prune_args(repo)).stdout)["chunks"]
    assert again["adopted"] == 1 and again["rescued"] >= 1 and again["problems"] == []
    assert plans(repo) == []
    assert {s["snapshot"] for s in verified(repo)["snapshots"]} >= {made["snapshot"]}
    last = json.loads(ok(*prune_args(repo)).stdout)["chunks"]
    assert last["packs_removed"] == last["packs_repacked"] == 0 and last["adopted"] == 0


def test_a_backup_killed_before_its_manifest_while_prune_waits_for_it(scene, tmp_path, client):
    """The backup loads the index, prune plans and waits for its lock; the backup finds
    every blob (its trees' too) in the packs prune dooms, and is killed before its
    manifest. Prune
    breaks the dead run's lock and finishes: nothing names what the backup wrote (a tree
    snapshot is its manifest), so nothing is rescued, and the doomed packs it counted on
    go; the next prune finds nothing to do and the repository verifies."""
    repo, first, twin = scene
    backup = Paused(tmp_path, "backup", "index-loaded,before-manifest", "backup", twin,
                    "-r", str(repo))
    backup.reached("index-loaded")
    pruning = subprocess.Popen([sys.executable, "-m", "volbackup", *prune_args(repo)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not plans(repo):                  # planned: now it waits for the backup's lock
        assert pruning.poll() is None and time.monotonic() < deadline, pruning.communicate()
        time.sleep(0.02)
    backup.go_on()
    backup.reached("before-manifest")
    assert pruning.poll() is None           # still waiting
    backup.kill(client)
    out, err = pruning.communicate(timeout=60)
    assert pruning.returncode == 0, err
    assert "broke a stale lock" in err
    swept = json.loads(out)["chunks"]
    assert swept["rescued"] == 0 and swept["problems"] == [] and plans(repo) == []
    assert not list((repo / "snapshots").glob(f"{twin}/*.json"))   # killed: no snapshot
    verified(repo)
    assert swept["packs_removed"] >= 1
    again = json.loads(ok(*prune_args(repo)).stdout)["chunks"]
    assert again["problems"] == [] and again["plan"] is None
    assert verified(repo)["packs"]["unindexed"] == 0
    shutil.rmtree(tmp_path / "repo")


def test_a_backup_after_the_plan_and_a_prune_killed_while_deleting(scene, tmp_path, client):
    """Prune checks its plan (no backup ran, nothing to wait for) and stops; a backup of
    the same files then runs to its end beside it: it read the plan, so it stores the
    doomed blobs again rather than count on them. Prune is killed while deleting (the
    superseded index objects gone, the doomed packs not yet); the next prune deletes
    them, and the backup's snapshot still reads back."""
    repo, first, twin = scene
    pruning = Paused(tmp_path, "prune", "prune-checked,prune-deleting", *prune_args(repo))
    pruning.reached("prune-checked")
    backup = Paused(tmp_path, "backup", "", "backup", twin, "-r", str(repo), "--json")
    (made,) = backup.finished()["volumes"]
    assert made["new_chunks"] >= made["chunks"] - 3     # none taken from a doomed pack
    pruning.go_on()
    pruning.reached("prune-deleting")
    pruning.kill(client)
    assert len(plans(repo)) == 2                        # the plan and its checked marker
    verified(repo)
    again = json.loads(ok(*prune_args(repo)).stdout)["chunks"]
    assert again["adopted"] == 1 and again["packs_removed"] >= 1 and again["problems"] == []
    assert plans(repo) == []
    assert made["snapshot"] in {s["snapshot"] for s in verified(repo)["snapshots"]}

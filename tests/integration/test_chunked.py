"""Chunked repositories end to end: a real engine, the real CLI, a directory repository
and S3 on moto; damage, concurrent backups, and SIGKILL of backups and prunes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.corpus import differences, tree, write_corpus
from tests.integration.helpers import helpers_of, random_file
from tests.unit.chunkrepos import backup as lib_backup, volume_tar
from volbackup.repo.chunked import iter_list
from volbackup.repo.config import RepoConfig
from volbackup.repo.repository import Repository

FIXED = 1_600_000_000
TWIN_BYTES = 128 << 20


def ok(*args: str, env: dict | None = None):
    result = run_cli(*args, env=env)
    assert result.code == 0, f"volbackup {' '.join(args)}: {result.stderr}"
    return result


def init(repo, *extra: str) -> None:
    """A chunked repository (this module's subject), or the layout `extra` names."""
    layout = [] if "--layout" in extra else ["--layout", "chunked"]
    ok("init", "-r", str(repo), *layout, *extra)


def backed_up(volume: str, repo, *extra: str) -> dict:
    """Back up `volume`; its manifest."""
    (vol,) = json.loads(ok("backup", volume, "-r", str(repo), "--json", *extra).stdout)["volumes"]
    return json.loads(ok("show", vol["snapshot"], "-r", str(repo), "--json").stdout)["manifest"]


def verify_all(repo) -> tuple[int, dict[str, tuple[str, str | None]]]:
    """Exit code, and snapshot -> (status, message) of `verify --all`."""
    run = run_cli("verify", "--all", "-r", str(repo), "--json")
    assert "Traceback" not in run.stderr
    checks = json.loads(run.stdout)["snapshots"]
    return run.code, {c["snapshot"]: (c["status"], c["message"]) for c in checks}


def chunk_files(repo: Path) -> set[str]:
    """Chunks stored (not the temp files of unfinished writes)."""
    return {p.name for p in (repo / "chunks").rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def listed(repo: Path, list_file: Path | None = None) -> set[str]:
    """Chunk ids named by one chunk list, or by every chunk list (catalogues' included)
    in the repository."""
    ids = set()
    lists = [*(repo / "snapshots").rglob("*.chunks"), *(repo / "snapshots").rglob("*.catalog")]
    for path in [list_file] if list_file else lists:
        with open(path, "rb") as reader:
            ids.update(chunk_id for chunk_id, _ in iter_list(reader))
    return ids


def list_path(repo: Path, manifest: dict) -> Path:
    return repo / "snapshots" / manifest["volume"] / manifest["archive"]


def same_files(root: str, source: Path) -> None:
    """`root` (a mountpoint) holds a copy of `source` as data.bin, every mtime fixed, so
    that two volumes filled this way give the same tar stream but for their root's name."""
    shutil.copyfile(source, os.path.join(root, "data.bin"))
    Path(root, "note").write_text("twins\n")
    for name in ("data.bin", "note", ""):
        os.utime(os.path.join(root, name), (FIXED, FIXED))


def kill(proc: subprocess.Popen, client) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for helper in helpers_of(client, proc.pid):  # SIGKILL cannot remove its helper
        client.api.remove_container(helper["Id"], force=True)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "volbackup", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- round trip (through a directory: test_roundtrip.py's corpus runs on both layouts)


def test_round_trip_through_s3(make_volume, mountpoint, names, any_s3_bucket, any_s3_client):
    """On moto and on a real object store (Ceph RGW)."""
    s3_bucket, s3_client = any_s3_bucket, any_s3_client
    source = make_volume("corpus")
    write_corpus(mountpoint(source.name))
    expected = tree(mountpoint(source.name))
    repo = f"s3://{s3_bucket}/chunked"
    init(repo)
    first = backed_up(source.name, repo)
    keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket) for o in page.get("Contents", [])]
    chunks = [k for k in keys if k.startswith("chunked/chunks/")]
    catalogue = s3_client.get_object(Bucket=s3_bucket, Key=next(
        k for k in keys if k.endswith(".catalog")))["Body"].read().splitlines()
    assert len(chunks) == first["chunks"] + len(catalogue) and "chunked/config" in keys
    assert backed_up(source.name, repo)["new_chunks"] == 0
    ok("verify", "--all", "-r", repo)
    target = names("from-s3")
    ok("restore", source.name, "-r", repo, "--as", target)
    assert differences(expected, tree(mountpoint(target))) == []


def test_packed_round_trip_through_s3(make_volume, mountpoint, names, any_s3_bucket,
                                      any_s3_client):
    """A packed repository on moto and on Ceph RGW: chunks in packs read by ranged GETs;
    nothing lists packs/ but prune and repair-index; prune removes what a removed snapshot
    alone used; a lost index is rebuilt."""
    s3_bucket, s3_client = any_s3_bucket, any_s3_client
    source = make_volume("packed")
    root = mountpoint(source.name)
    write_corpus(root)
    random_file(root, "big.bin", 16 << 20)
    repo = f"s3://{s3_bucket}/packed"
    init(repo, "--layout", "packed", "--pack-size", "4M")
    # older than the files cache's settle time: the first backup records every file's stat,
    # so the second one's catalogue is the same and it writes no pack at all (a file
    # recorded only by the second would change its catalogue, a tree pack)
    time.sleep(2.1)

    def keys(prefix: str) -> list[str]:
        return [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=f"packed/{prefix}") for o in page.get("Contents", [])]

    first = backed_up(source.name, repo)
    packs = keys("packs/")
    assert 4 <= len(packs) <= 8 and len(keys("index/")) == 1 and not keys("chunks/")
    assert backed_up(source.name, repo)["new_chunks"] == 0 and keys("packs/") == packs
    os.unlink(os.path.join(root, "big.bin"))
    expected = tree(root)
    backed_up(source.name, repo)
    pruned = json.loads(ok("prune", "-r", repo, "--keep-last", "1", "--leftover-age", "0",
                           "--json").stdout)["chunks"]
    assert pruned["packs_removed"] + pruned["packs_repacked"] >= 4 and pruned["problems"] == []
    assert len(keys("packs/")) < len(packs) and len(keys("index/")) >= 1
    # the index lost: repair-index rebuilds it from the packs' trailers (ranged GETs)
    s3_client.delete_objects(Bucket=s3_bucket, Delete={
        "Objects": [{"Key": key} for key in keys("index/")]})
    repaired = json.loads(ok("repair-index", "-r", repo, "--json").stdout)
    assert repaired["from_trailers"] == repaired["packs"] == len(keys("packs/"))
    assert repaired["problems"] == [] and len(keys("index/")) == repaired["index_written"] == 1
    target = names("from-packed")
    ok("restore", source.name, "-r", repo, "--as", target)
    assert differences(expected, tree(mountpoint(target))) == []
    assert first["data"]["blobs"] > 16 and first["chunks"] is None  # a tree snapshot


# -- deduplication and damage, on one repository copied for each test


@pytest.fixture(scope="module")
def twins(client, tmp_path_factory):
    """A repository (chunks of about 640 KiB) with twin1 (two snapshots), twin2 (the same
    files as twin1) and other (files of its own)."""
    from tests.integration.conftest import PREFIX

    made = [client.volumes.create(f"{PREFIX}{name}") for name in ("twin1", "twin2", "other")]
    try:
        roots = [client.api.inspect_volume(v.name)["Mountpoint"] for v in made]
        scratch = tmp_path_factory.mktemp("twins")
        random_file(str(scratch), "data.bin", TWIN_BYTES)
        same_files(roots[0], scratch / "data.bin")
        same_files(roots[1], scratch / "data.bin")
        random_file(roots[2], "other.bin", 32 << 20)
        repo = scratch / "repo"
        repo.mkdir()
        init(repo, "--chunk-size", "512K")
        manifests = {"twin1": backed_up(made[0].name, repo),
                     "twin1-again": backed_up(made[0].name, repo),
                     "twin2": backed_up(made[1].name, repo),
                     "other": backed_up(made[2].name, repo)}
        yield repo, manifests
    finally:
        for volume in made:
            volume.remove(force=True)


@pytest.fixture
def twin_repo(twins, tmp_path):
    repo, manifests = twins
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    return copy, manifests


def test_two_volumes_with_the_same_files_share_their_chunks(twins):
    _, m = twins
    twin2 = m["twin2"]
    assert twin2["stored_bytes"] < twin2["bytes"] / 100, twin2
    assert twin2["new_chunks"] <= 2 and twin2["chunks"] > 150
    assert m["twin1-again"]["new_chunks"] == 0


@pytest.mark.parametrize("users", [("other",), ("twin1", "twin1-again", "twin2")])
def test_a_missing_chunk_fails_exactly_the_snapshots_that_use_it(twin_repo, users):
    repo, m = twin_repo
    theirs = set.intersection(*(listed(repo, list_path(repo, m[n])) for n in users))
    others = set().union(*(listed(repo, list_path(repo, m[n])) for n in m if n not in users))
    candidates = sorted(theirs - others)
    victim = candidates[len(candidates) // 2]
    (repo / "chunks" / victim[:2] / victim).unlink()
    code, checks = verify_all(repo)
    failed = {s for s, (status, _) in checks.items() if status == "failed"}
    assert failed == {m[n]["snapshot"] for n in users}
    assert all(victim in checks[s][1] and "missing" in checks[s][1] for s in failed)
    assert len(checks) == 4 and code == 3  # some failed, some not: a partial failure


def test_a_corrupt_chunk_shared_by_two_volumes_fails_both(twin_repo):
    repo, m = twin_repo
    shared = listed(repo, list_path(repo, m["twin1"])) & listed(repo, list_path(repo, m["twin2"]))
    victim = sorted(shared)[len(shared) // 2]
    path = repo / "chunks" / victim[:2] / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    code, checks = verify_all(repo)
    failed = {s: message for s, (status, message) in checks.items() if status == "failed"}
    assert set(failed) == {m[n]["snapshot"] for n in ("twin1", "twin1-again", "twin2")}
    assert all(victim in message for message in failed.values())
    assert checks[m["other"]["snapshot"]][0] == "ok" and code == 3


# -- two backups at once


@pytest.fixture
def twin_volumes(make_volume, mountpoint, tmp_path):
    random_file(str(tmp_path), "data.bin", TWIN_BYTES)
    volumes = [make_volume("twin").name for _ in range(2)]
    for volume in volumes:
        same_files(mountpoint(volume), tmp_path / "data.bin")
    (tmp_path / "data.bin").unlink()
    return volumes


def concurrent_backups(volumes: list[str], repo: str) -> list[dict]:
    procs = [start("backup", volume, "-r", repo, "--json") for volume in volumes]
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, stderr) in zip(procs, outs):
        assert proc.returncode == 0, stderr
    snapshots = [json.loads(out)["volumes"][0]["snapshot"] for out, _ in outs]
    return [json.loads(ok("show", s, "-r", repo, "--json").stdout)["manifest"]
            for s in snapshots]


def test_two_backups_at_once_share_chunks(twin_volumes, repo_dir, names, mountpoint):
    init(repo_dir, "--chunk-size", "512K")
    a, b = concurrent_backups(twin_volumes, str(repo_dir))
    assert a["chunks"] > 150 and abs(a["chunks"] - b["chunks"]) <= 2
    # Both may have written a chunk the other was writing too (each process lists what
    # is stored when it starts); what the store holds is one copy.
    assert len(chunk_files(repo_dir)) <= max(a["chunks"], b["chunks"]) + 2
    assert chunk_files(repo_dir) == listed(repo_dir)
    assert verify_all(repo_dir)[0] == 0
    target = names("restored")
    ok("restore", b["snapshot"], "-r", str(repo_dir), "--as", target)
    assert differences(tree(mountpoint(twin_volumes[1])), tree(mountpoint(target))) == []


def test_two_backups_at_once_share_chunks_in_s3(twin_volumes, any_s3_bucket, any_s3_client):
    """On moto and on a real object store (Ceph RGW)."""
    s3_bucket, s3_client = any_s3_bucket, any_s3_client
    repo = f"s3://{s3_bucket}/r"
    init(repo, "--chunk-size", "512K")
    a, b = concurrent_backups(twin_volumes, repo)
    keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket, Prefix="r/chunks/") for o in page.get("Contents", [])]
    assert a["chunks"] > 150 and len(keys) <= max(a["chunks"], b["chunks"]) + 2
    assert verify_all(repo)[0] == 0


# -- SIGKILL


def test_backups_killed_at_random_times_leave_a_repository_that_verifies_and_is_swept(
        make_volume, mountpoint, repo_dir, client):
    """Each killed run reuses what the ones before stored; none leaves a snapshot that
    does not verify, and prune then sweeps every chunk no snapshot names."""
    big = make_volume("big")
    small = make_volume("small")
    random_file(mountpoint(small.name), size=16 << 20)
    init(repo_dir, "--chunk-size", "512K")
    kept = backed_up(small.name, repo_dir)
    rnd = random.Random(os.getpid())
    counts = [len(chunk_files(repo_dir))]
    # Twice as soon as chunks are being written, then at random times; the data changes
    # each time, so that what a killed run wrote is never named by a later snapshot.
    finished = 0
    for delay in [None, None] + [rnd.uniform(0.2, 2) for _ in range(4)]:
        random_file(mountpoint(big.name), size=128 << 20)
        proc = start("backup", big.name, "-r", str(repo_dir), "--no-direct")
        if delay is None:
            while len(chunk_files(repo_dir)) < counts[-1] + 10 and proc.poll() is None:
                time.sleep(0.01)
        else:
            time.sleep(delay)
        if proc.poll() is not None:
            finished += 1  # too late: a complete snapshot, which must verify too
            continue
        kill(proc, client)
        counts.append(len(chunk_files(repo_dir)))
    assert counts[1] >= counts[0] + 10 and len(counts) >= 4, (counts, finished)
    # Last, a kill as soon as the chunk list appears (the manifest is written right after:
    # the kill may come too late, and then the snapshot must verify like any other).
    random_file(mountpoint(big.name), size=128 << 20)
    proc = start("backup", big.name, "-r", str(repo_dir), "--no-direct")
    lists = repo_dir / "snapshots" / big.name
    while not list(lists.glob("*.chunks")) and proc.poll() is None:
        time.sleep(0.001)
    if proc.poll() is None:
        kill(proc, client)
    orphan_lists = [p for p in lists.glob("*.chunks") if not p.with_suffix(".json").exists()]
    print(f"chunks after each kill: {counts}; runs that finished first: {finished}; chunk "
          f"lists without a manifest: {len(orphan_lists)}")
    code, checks = verify_all(repo_dir)
    assert code == 0 and kept["snapshot"] in checks, checks
    assert all(status == "ok" for status, _ in checks.values())

    before = chunk_files(repo_dir)
    pruned = ok("prune", "-r", str(repo_dir), "--keep-last", "10", "--leftover-age", "0s",
                "--json")
    out = json.loads(pruned.stdout)
    sweep = out["chunks"]
    removed = {o["key"] for o in out["leftovers"] if o["status"] == "removed"}
    assert {p.relative_to(repo_dir).as_posix() for p in orphan_lists} <= removed
    after = chunk_files(repo_dir)
    assert after == listed(repo_dir) and after < before
    assert sweep["removed"] == len(before - after) >= 10 and sweep["problems"] == []
    assert not [p for p in repo_dir.rglob(".*") if ".tmp-" in p.name]
    assert verify_all(repo_dir)[0] == 0


def many_snapshots(repo: Path, count: int) -> list:
    """`count` snapshots of one volume, each with 1 MiB of its own (about 200 chunks)."""
    Repository.init(str(repo), config=RepoConfig.new(avg_size=4096))
    repository = Repository.open(str(repo), writable=True)
    start_at = datetime.now(timezone.utc) - timedelta(days=count)
    return [lib_backup(repository, volume_tar(seed=i, size=1 << 20), "many",
                       start_at + timedelta(days=i)) for i in range(count)]


def manifests(repo: Path) -> int:
    return len(list((repo / "snapshots").rglob("*.json")))


def kill_when(proc: subprocess.Popen, going, timeout: float = 60) -> bool:
    """SIGKILL `proc` as soon as `going()` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not going():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the prune never got there"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def test_prunes_killed_while_deleting_leave_a_repository_that_verifies(tmp_path):
    """Kill a prune while it removes snapshots, then one while it sweeps chunks: after
    each, every snapshot left verifies (never a manifest whose chunks are gone), and the
    next prune finishes the job: exactly the chunks of the snapshot kept are left. (One
    kill per phase: a second kill in the sweep raced the sweep's end on a fast machine.)"""
    repo = tmp_path / "repo"
    repo.mkdir()
    made = many_snapshots(repo, 12)
    total = len(chunk_files(repo))
    assert total > 2000
    prune = ("prune", "-r", str(repo), "--keep-last", "1", "--leftover-age", "0s")
    states = []
    for phase in ("snapshots", "chunks"):
        chunks_before = len(chunk_files(repo))
        going = (lambda: manifests(repo) < 12) if phase == "snapshots" else \
            (lambda: len(chunk_files(repo)) < chunks_before - 100)
        if not kill_when(start(*prune), going):
            break
        states.append((phase, manifests(repo), len(chunk_files(repo))))
        code, checks = verify_all(repo)
        assert code == 0 and len(checks) == manifests(repo), checks
    assert [phase for phase, _, _ in states] == ["snapshots", "chunks"], states
    assert states[-1][2] > len(listed(repo)), f"the sweep was done before the kill: {states}"
    ok(*prune)
    (kept,) = (repo / "snapshots").rglob("*.json")
    assert kept.name == made[-1].snapshot.split("@")[1] + ".json"
    assert chunk_files(repo) == listed(repo)
    assert verify_all(repo)[0] == 0

"""Scheduled runs against the real engine: concurrent runs, locks, prune, metrics, S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import fill
from volbackup.repo import locking
from volbackup.repo.backends import open_backend


def write_config(path: Path, repo: str, volumes: list[str], **extra) -> str:
    lines = ["[jobs.main]", f'repository = "{repo}"', f"volumes = {json.dumps(volumes)}"]
    lines += [f"{k} = {json.dumps(v) if not k == 'keep' else v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "volbackup", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def big_volume(make_volume, mountpoint, mib: int):
    vol = make_volume("big")
    fill(mountpoint(vol.name), {f"f{i}.bin": os.urandom(1 << 20) for i in range(mib)})
    return vol.name


def test_two_concurrent_runs_both_succeed_and_nothing_is_corrupt(cli, repo_dir, tmp_path,
                                                                 make_volume, mountpoint):
    name = big_volume(make_volume, mountpoint, 64)
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name])
    first, second = start_cli("run", "--config", config), start_cli("run", "--config", config)
    results = [(p.wait(300), p.communicate()) for p in (first, second)]
    for code, (out, err) in results:
        assert code == 0, err
    assert len(json.loads(cli("list", "-r", str(repo_dir), "--json").stdout)["snapshots"]) == 2
    verified = cli("verify", "--all", "-r", str(repo_dir))
    assert verified.code == 0, verified.stderr
    assert list((repo_dir / "locks").iterdir()) == []


def test_prune_waits_for_a_running_backup_then_fails_with_exit_11(cli, repo_dir, tmp_path,
                                                                  make_volume, mountpoint):
    name = big_volume(make_volume, mountpoint, 48)
    assert cli("run", "--config", write_config(tmp_path / "fast.toml", str(repo_dir), [name])).code == 0
    slow = write_config(tmp_path / "slow.toml", str(repo_dir), [name], level=19)  # seconds
    running = start_cli("run", "--config", slow)
    try:
        assert wait_for(lambda: any((repo_dir / "locks").glob("*.json")))
        blocked = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--lock-wait", "0.5")
        assert blocked.code == 11, blocked.stderr
        assert "is locked: shared lock of pid" in blocked.stderr and "(backup)" in blocked.stderr
    finally:
        assert running.wait(300) == 0, running.communicate()[1]
    pruned = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--json")
    assert pruned.code == 0, pruned.stderr
    statuses = sorted(s["status"] for s in json.loads(pruned.stdout)["snapshots"])
    assert statuses == ["kept", "removed"]
    assert cli("verify", "--all", "-r", str(repo_dir)).code == 0


HOLD_LOCK = """
import sys, time
from volbackup.repo import locking
from volbackup.repo.backends import open_backend
locking.acquire(open_backend(sys.argv[1]), locking.EXCLUSIVE, 0, "prune")
print("locked", flush=True)
time.sleep(600)
"""


def test_stale_lock_of_a_killed_process_is_broken(cli, repo_dir, tmp_path, make_volume, mountpoint):
    name = make_volume("v").name
    fill(mountpoint(name), {"a.txt": b"hello"})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(repo_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name], lock_wait="1s")
    blocked = cli("run", "--config", config)
    assert blocked.code == 11 and "exclusive lock of pid" in blocked.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    done = cli("run", "--config", config)
    assert done.code == 0, done.stderr
    assert f"broke a stale lock (exclusive lock of pid {holder.pid}" in done.stderr
    assert "is not running on this host" in done.stderr
    assert list((repo_dir / "locks").iterdir()) == []


def test_prune_dry_run_deletes_nothing(cli, repo_dir, tmp_path, make_volume, mountpoint):
    name = make_volume("v").name
    fill(mountpoint(name), {"a.txt": b"hello"})
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name])
    for _ in range(3):
        assert cli("run", "--config", config).code == 0
    before = sorted(p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file())
    dry = cli("prune", "-r", str(repo_dir), "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    assert [s["status"] for s in json.loads(dry.stdout)["snapshots"]].count("would remove") == 2
    after = sorted(p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file())
    assert after == before


def test_run_prunes_and_writes_metrics(cli, repo_dir, tmp_path, make_volume, mountpoint):
    name = make_volume("v").name
    fill(mountpoint(name), {"a.txt": b"hello" * 1000})
    metrics = tmp_path / "volbackup.prom"
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name], metrics_file=str(metrics),
                          keep="{ last = 2 }")
    for _ in range(3):
        run = cli("run", "--config", config, "--json")
        assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)["jobs"][0]
    assert summary["status"] == "ok" and summary["prune"]["removed"] == 1
    assert summary["volumes"][0]["via"] == "direct"   # the default for an idle local volume
    assert len(json.loads(cli("list", "-r", str(repo_dir), "--json").stdout)["snapshots"]) == 2
    samples = {(s.name, s.labels.get("volume")): s.value
               for family in text_string_to_metric_families(metrics.read_text())
               for s in family.samples}
    assert samples[("volbackup_run_success", None)] == 1
    assert samples[("volbackup_volume_bytes", name)] == summary["volumes"][0]["bytes"]
    assert samples[("volbackup_prune_kept_snapshots", None)] == 2
    assert abs(samples[("volbackup_last_success_timestamp_seconds", None)] - time.time()) < 120


def test_run_into_s3_takes_and_releases_the_lock(cli, s3_bucket, s3_client, tmp_path,
                                                 make_volume, mountpoint):
    name = make_volume("v").name
    fill(mountpoint(name), {"a.txt": b"hello"})
    repo = f"s3://{s3_bucket}/prod"
    config = write_config(tmp_path / "c.toml", repo, [name], lock_wait="0s", keep="{ last = 1 }",
                          direct=False)
    held = locking.acquire(open_backend(repo), locking.EXCLUSIVE, 0, "prune")
    blocked = cli("run", "--config", config)
    assert blocked.code == 11, blocked.stderr
    held.release()
    for _ in range(2):
        done = cli("run", "--config", config, "--json")
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout)["jobs"][0]["volumes"][0]["via"] == "engine"  # direct = false
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not any(k.startswith("prod/locks/") for k in keys)
    assert len([k for k in keys if k.endswith(".json")]) == 1  # pruned to one snapshot


def test_backup_command_prunes_and_writes_metrics(cli, repo_dir, tmp_path, make_volume,
                                                   mountpoint):
    volume = make_volume("pruned")
    fill(mountpoint(volume.name), {"f": b"data\n"})
    metrics = tmp_path / "volbackup.prom"
    for _ in range(3):
        result = cli("backup", volume.name, "-r", str(repo_dir), "--prune", "--keep-last", "2",
                     "--metrics-file", str(metrics))
        assert result.code == 0, result.stderr
    listed = json.loads(cli("list", volume.name, "-r", str(repo_dir), "--json").stdout)
    assert len(listed["snapshots"]) == 2
    families = {f.name for f in text_string_to_metric_families(metrics.read_text())}
    assert any("volbackup" in name for name in families)
    assert cli("backup", volume.name, "-r", str(repo_dir), "--keep-last", "2").code == 2


def test_run_with_parallel_backs_up_each_volume_into_s3(cli, s3_bucket, tmp_path, make_volume,
                                                        mountpoint):
    """`parallel = 2` (as --jobs 2): volumes go up side by side through one S3 client."""
    names = []
    for i in range(3):
        name = make_volume(f"p{i}").name
        fill(mountpoint(name), {"own.bin": os.urandom(300_000 + i)})
        names.append(name)
    repo = f"s3://{s3_bucket}/par"
    config = write_config(tmp_path / "c.toml", repo, names, parallel=2)
    done = cli("run", "--config", config, "--json")
    assert done.code == 0, done.stderr
    assert [v["volume"] for v in json.loads(done.stdout)["jobs"][0]["volumes"]] == names
    listed = json.loads(cli("list", "-r", repo, "--json").stdout)["snapshots"]
    assert sorted(s["volume"] for s in listed) == sorted(names)
    verified = cli("verify", "--all", "-r", repo)
    assert verified.code == 0, verified.stderr

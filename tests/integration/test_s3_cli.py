"""volbackup against S3 end to end: a real engine, moto's server on 127.0.0.1, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.conftest import LAYOUTS, S3_ENV, make_layout
from tests.integration.corpus import SMALL_FILES, differences, tree, write_corpus
from tests.integration.helpers import helpers_of, one_line_error, random_file


def test_corpus_round_trip_through_s3(make_volume, mountpoint, names, s3_bucket, s3_client, cli):
    source = make_volume("corpus")
    write_corpus(mountpoint(source.name))
    expected = tree(mountpoint(source.name))
    repo = f"s3://{s3_bucket}/team/prod"
    backup = cli("backup", source.name, "-r", repo, "--json")
    assert backup.code == 0, backup.stderr
    (vol,) = json.loads(backup.stdout)["volumes"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(k.split(".", 1)[-1] for k in keys) == ["catalog.zst", "json", "tar.zst"]
    assert all(k.startswith(f"team/prod/snapshots/{source.name}/") for k in keys)

    listed = cli("list", "-r", repo, "--json")
    assert [s["snapshot"] for s in json.loads(listed.stdout)["snapshots"]] == [vol["snapshot"]]
    verified = cli("verify", vol["snapshot"], "-r", repo)
    assert verified.code == 0, verified.stderr

    target = names("from-s3")
    restored = cli("restore", source.name, "-r", repo, "--as", target)
    assert restored.code == 0, restored.stderr
    actual = tree(mountpoint(target))
    assert len(actual) > SMALL_FILES and differences(expected, actual) == []


def test_killed_backup_leaves_an_upload_that_cleanup_removes(
        make_volume, mountpoint, s3_bucket, s3_client, cli, client):
    volume = make_volume("big")
    random_file(mountpoint(volume.name))
    repo = f"s3://{s3_bucket}/r"
    proc = subprocess.Popen([sys.executable, "-m", "volbackup", "backup", volume.name, "-r", repo],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
        assert proc.poll() is None and time.monotonic() < deadline, "no upload started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for helper in helpers_of(client, proc.pid):  # SIGKILL cannot remove its helper
        client.api.remove_container(helper["Id"], force=True)

    listing = cli("list", "-r", repo, "--json")
    assert listing.code == 0 and json.loads(listing.stdout)["snapshots"] == []
    # (moto reports every upload as started in 2010, so the default --older-than 24h
    # cannot be seen keeping a young one here: tests/unit/test_cleanup.py checks that.)
    dry = cli("cleanup", "-r", repo, "--older-than", "0", "--dry-run", "--json")
    (left,) = json.loads(dry.stdout)["leftovers"]
    assert left["status"] == "would remove" and left["key"].startswith(f"snapshots/{volume.name}/")
    assert len(s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 1

    done = cli("cleanup", "-r", repo, "--older-than", "0")
    assert done.code == 0, done.stderr
    assert f"{left['key']}: removed" in done.stdout and "freed" in done.stderr
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_snapshots_of_two_hosts_in_one_bucket(make_volume, mountpoint, names, s3_bucket, cli,
                                              layout):
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed to give a backup another host name")
    volume = make_volume("shared")
    repo = f"s3://{s3_bucket}"
    make_layout(repo, layout)
    ids = {}
    for host in ("vbtest-host-a", "vbtest-host-b"):
        with open(os.path.join(mountpoint(volume.name), "who"), "w") as f:
            f.write(host)
        run = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "-",
                              sys.executable, "-m", "volbackup", "backup", volume.name, "-r", repo,
                              "--json"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        ids[host] = json.loads(run.stdout)["volumes"][0]["snapshot"]
    every = json.loads(cli("list", "-r", repo, "--json").stdout)["snapshots"]
    assert {(s["snapshot"], s["host"]) for s in every} == {(i, h) for h, i in ids.items()}
    only_a = cli("list", "-r", repo, "--host", "vbtest-host-a")
    assert ids["vbtest-host-a"] in only_a.stdout and ids["vbtest-host-b"] not in only_a.stdout
    assert "vbtest-host-a" in only_a.stdout

    target = names("from-a")
    restored = cli("restore", volume.name, "--host", "vbtest-host-a", "--as", target, "-r", repo)
    assert restored.code == 0 and ids["vbtest-host-a"] in restored.stdout, restored.stderr
    with open(os.path.join(mountpoint(target), "who")) as f:
        assert f.read() == "vbtest-host-a"
    missing = cli("restore", volume.name, "--host", "nowhere", "--as", names("x"), "-r", repo)
    assert missing.code == 4 and "from host nowhere" in one_line_error(missing.stderr)


# -- errors: one line, the right exit code, and never a secret ---------------------------

SECRET = "vbtest-SECRET-do-not-print-9f3a"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(cli, args, env, code, words):
    plain = cli(*args, env=env)
    assert plain.code == code, plain.stderr
    assert words in one_line_error(plain.stderr)
    debug = cli("--debug", *args, env=env)
    assert debug.code == code
    for out in (plain.stdout, plain.stderr, debug.stdout, debug.stderr):
        assert SECRET not in out


@pytest.fixture
def secret_env(s3_endpoint):
    return {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AKIAVBTESTKEY0000000"}


@pytest.mark.parametrize("command", [["list"], ["backup", "vbtest-any"], ["cleanup"], ["init"]])
def test_missing_bucket(cli, secret_env, command):
    _check(cli, [*command, "-r", "s3://vbtest-no-such-bucket/x"], secret_env, 5,
           "bucket vbtest-no-such-bucket does not exist")


def test_unreachable_endpoint(cli, secret_env):
    env = {**secret_env, "AWS_ENDPOINT_URL": f"http://user:{SECRET}@127.0.0.1:{_closed_port()}",
           "AWS_MAX_ATTEMPTS": "2"}
    _check(cli, ["list", "-r", "s3://vbtest-any"], env, 10, "cannot reach the S3 endpoint")


def test_no_credentials(cli, s3_endpoint, tmp_path):
    env = {k: "" for k in S3_ENV if k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    _check(cli, ["list", "-r", "s3://vbtest-any"], env, 9, "no usable AWS credentials")


@pytest.fixture
def moto_auth(s3_endpoint, s3_bucket, s3_client):
    """Make moto check credentials (against its IAM) for the duration of one test."""
    import boto3

    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    user = f"{s3_bucket}-user"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def reset(count: str) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{s3_endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
            headers={"Content-Type": "text/plain"})).read()

    reset("0")
    try:
        yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        reset("inf")
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName=user)


@pytest.mark.parametrize("command", ["list", "init"])
def test_bad_credentials(cli, secret_env, moto_auth, s3_bucket, command):
    _check(cli, [command, "-r", f"s3://{s3_bucket}"], secret_env, 9, "rejected the AWS credentials")


def test_access_denied(cli, moto_auth, s3_bucket):
    """A real user without any policy: every request is denied."""
    _check(cli, ["list", "-r", f"s3://{s3_bucket}"], moto_auth, 9, "access denied")
    assert moto_auth["AWS_SECRET_ACCESS_KEY"] not in cli("--debug", "list", "-r", f"s3://{s3_bucket}",
                                                         env=moto_auth).stderr

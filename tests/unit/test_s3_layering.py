"""S3 support keeps to the house layering; --host filters snapshots by the host that made them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.unit.manifests import make_manifest
from volbackup.cli.options import _STORAGE_CLASSES, Duration
from volbackup.errors import NotFound
from volbackup.repo.backends import LocalBackend
from volbackup.repo.backends.s3 import STORAGE_CLASSES
from volbackup.repo.repository import Repository

PACKAGE = Path(__file__).parents[2] / "volbackup"


def test_only_the_s3_backend_imports_boto3():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if any(w in p.read_text() for w in ("import boto3", "import botocore",
                                                            "from botocore", "from boto3")))
    assert importers == ["repo/backends/s3.py"]


def test_a_local_repository_never_loads_boto3():
    code = ("import sys; from volbackup.cli import cli; from volbackup.repo.repository import Repository;"
            "Repository.open('/tmp'); print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_storage_classes_match_the_backend():
    assert _STORAGE_CLASSES == STORAGE_CLASSES


@pytest.mark.parametrize("text, seconds", [("0", 0), ("90s", 90), ("30m", 1800), ("12h", 43200),
                                           ("7d", 604800), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert Duration().convert(text, None, None) == seconds


def test_bad_duration():
    with pytest.raises(click.BadParameter):
        Duration().convert("soon", None, None)


@pytest.fixture
def two_hosts(tmp_path):
    repo = Repository(LocalBackend(tmp_path))
    for sid, created, host in (("db@20260101T000000Z-000a", "2026-01-01T00:00:00.000Z", "a"),
                               ("db@20260102T000000Z-000b", "2026-01-02T00:00:00.000Z", "b"),
                               ("web@20260103T000000Z-000b", "2026-01-03T00:00:00.000Z", "b")):
        repo.commit(make_manifest(sid, created, host=host))
    return repo


def test_host_filters_listing_newest_and_volumes(two_hosts):
    assert [m.snapshot for m in two_hosts.snapshots(host="a").snapshots] == ["db@20260101T000000Z-000a"]
    assert len(two_hosts.snapshots().snapshots) == 3
    assert two_hosts.resolve("db").host == "b"
    assert two_hosts.resolve("db", host="a").snapshot == "db@20260101T000000Z-000a"
    assert two_hosts.volumes(host="a") == ["db"] and two_hosts.volumes(host="b") == ["db", "web"]
    with pytest.raises(NotFound, match="no snapshots of volume web from host a"):
        two_hosts.resolve("web", host="a")
    with pytest.raises(NotFound, match="was made on host b, not a"):
        two_hosts.resolve("web@20260103T000000Z-000b", host="a")

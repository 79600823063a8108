"""`doctor` judges what it finds: with a fake engine (our own interface) and real directory
repositories. tests/integration/test_doctor.py runs it against the real engine and S3."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from volbackup.docker import direct
from volbackup.docker.facts import EngineFacts
from volbackup.errors import EngineError, NotReady
from volbackup.ops import doctor as ops
from volbackup.repo.backends import LocalBackend

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


class FakeEngine:
    where = "unix:///fake.sock"

    def __init__(self, sizes=None, helpers=(), local=None, rootless=False, userns=False,
                 product="Docker"):
        self.sizes, self.helpers, self.local = sizes or {}, list(helpers), local
        self.rootless, self.userns, self.product = rootless, userns, product

    def facts(self):
        return EngineFacts(self.product, "99.0", "1.99", self.rootless, self.userns,
                           "/fake/docker")

    def volume_sizes(self):
        return self.sizes

    def helpers_left(self):
        return self.helpers

    def local_directory(self, path):
        return self.local


def _run(repo_url, engine=None, **kwargs):
    report = ops.doctor(repo_url, lambda: engine or FakeEngine(), NOW, **kwargs)
    return report, {c.name: c for c in report.checks}


def test_an_unreachable_engine_is_a_problem_with_exit_18(tmp_path):
    def connect():
        raise EngineError("cannot reach the Docker engine at unix:///x (gone)")

    report = ops.doctor(str(tmp_path), connect, NOW)
    checks = {c.name: c for c in report.checks}
    assert checks["engine"].status == ops.PROBLEM and "gone" in checks["engine"].reason
    assert checks["repository"].status == ops.OK  # the repository is still checked
    with pytest.raises(NotReady) as raised:
        report.raise_for_problems()
    assert raised.value.exit_code == 18 and "engine: cannot reach" in str(raised.value)


def test_warnings_alone_do_not_raise(tmp_path):
    report, checks = _run(str(tmp_path), FakeEngine(helpers=[("volbackup-helper-1", True)]))
    assert checks["helpers"].status == ops.WARNING
    report.raise_for_problems()


def test_rootless_and_userns_are_named(tmp_path):
    _, checks = _run(None, FakeEngine(rootless=True))
    assert "rootless" in checks["engine"].reason and checks["engine"].details["rootless"]
    _, checks = _run(None, FakeEngine(userns=True))
    assert "user-namespace remapping" in checks["engine"].reason


def test_the_engine_is_named_docker_or_podman(tmp_path):
    _, checks = _run(None, FakeEngine())
    assert checks["engine"].reason.startswith("Docker 99.0")
    assert checks["engine"].details["product"] == "Docker"
    _, checks = _run(None, FakeEngine(product="Podman", rootless=True))
    assert checks["engine"].reason.startswith("Podman 99.0") and "rootless" in checks["engine"].reason


def test_podman_without_the_direct_path_is_a_problem(tmp_path):
    """Podman's archive endpoint loses owners: without the direct path nothing can be read."""
    report, checks = _run(None, FakeEngine(product="Podman"))
    assert checks["direct path"].status == ops.PROBLEM
    assert "podman unshare" in checks["direct path"].action
    with pytest.raises(NotReady):
        report.raise_for_problems()
    _, checks = _run(None, FakeEngine())  # Docker: reads through the engine, slower
    assert checks["direct path"].status == ops.OK


def test_space_against_the_largest_volume(tmp_path, monkeypatch):
    engine = FakeEngine(sizes={"small": 1 << 20, "big": 1 << 50, "remote": None})
    report, checks = _run(str(tmp_path), engine)
    space = checks["repository space"]
    assert space.status == ops.WARNING and "volume big" in space.reason
    assert space.details["largest_volume"] == "big"
    assert checks["volume area space"].reason.startswith("not measured")
    monkeypatch.setattr(LocalBackend, "free_space", lambda self: 1 << 20)
    _, checks = _run(str(tmp_path), engine)
    assert checks["repository space"].status == ops.PROBLEM
    assert "full" in checks["repository space"].reason


def test_the_volume_area_is_measured_when_it_is_this_hosts(tmp_path):
    engine = FakeEngine(sizes={"big": 1 << 50}, local=str(tmp_path))
    _, checks = _run(None, engine)
    area = checks["volume area space"]
    assert area.status == ops.WARNING and area.details["path"] == str(tmp_path)
    engine.sizes = {"small": 1}
    _, checks = _run(None, engine)
    assert checks["volume area space"].status == ops.OK


def test_direct_path_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(direct.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(direct, "gnu_tar", lambda: None)
    assert direct.missing(FakeEngine(local=None), "/x") == ["root", "GNU tar", "a local engine"]
    monkeypatch.setattr(direct.os, "geteuid", lambda: 0)
    monkeypatch.setattr(direct, "gnu_tar", lambda: "/bin/tar")
    assert direct.missing(FakeEngine(local="/x"), "/x") == []
    assert direct.missing(FakeEngine(local="/x"), None) == ["a local engine"]


def test_a_directory_of_other_things_skips_the_repository_checks(tmp_path):
    (tmp_path / "passwd").write_text("x")
    report, checks = _run(str(tmp_path))
    assert checks["repository"].status == ops.PROBLEM
    assert "clock" not in checks and "locks" not in checks


def test_the_json_shape():
    report, checks = _run(None)
    assert set(checks["engine"].as_dict()) == {"name", "status", "reason", "action", "details"}
    assert report.repository is None

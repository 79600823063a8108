"""Volume selection, container stop order and grouping: pure logic over our own types."""

from __future__ import annotations

from volbackup.docker.containers import ContainerInfo
from volbackup.docker.volumes import VolumeInfo
from volbackup.ops.quiesce import groups, stop_order
from volbackup.ops.select import Selection, Source

ANON = "a" * 64


class FakeEngine:
    """Our Engine's `volumes()` and nothing else."""

    def __init__(self, volumes: dict[str, dict]):
        self._volumes = [VolumeInfo(n, "local", {}, labels, "") for n, labels in volumes.items()]

    def volumes(self):
        return self._volumes


HOST = FakeEngine({
    "shop_db": {"com.docker.compose.project": "shop", "backup": "nightly"},
    "shop_cache": {"com.docker.compose.project": "shop"},
    "blog_data": {"com.docker.compose.project": "blog", "backup": "weekly"},
    "loose": {},
    ANON: {},
    "anon-new": {"com.docker.volume.anonymous": ""},
})


def test_all_leaves_out_anonymous_volumes_unless_asked():
    assert Selection(all=True).resolve(HOST) == ["blog_data", "loose", "shop_cache", "shop_db"]
    assert set(Selection(all=True, include_anonymous=True).resolve(HOST)) == {
        "blog_data", "loose", "shop_cache", "shop_db", ANON, "anon-new"}


def test_project_label_and_exclude():
    assert Selection(project="shop").resolve(HOST) == ["shop_cache", "shop_db"]
    assert Selection(project="shop", exclude=["shop_cache"]).resolve(HOST) == ["shop_db"]
    assert Selection(labels=["backup"]).resolve(HOST) == ["blog_data", "shop_db"]
    assert Selection(labels=["backup=weekly"]).resolve(HOST) == ["blog_data"]
    assert Selection(labels=["backup", "com.docker.compose.project=shop"]).resolve(HOST) == [
        "shop_db"]
    assert Selection(project="nope").resolve(HOST) == []


def test_named_volumes_come_first_once_and_need_no_match():
    chosen = Selection(names=["loose", ANON, "loose"], project="blog").resolve(HOST)
    assert chosen == ["loose", ANON, "blog_data"]
    assert Selection(names=["x"]).resolve(HOST) == ["x"]  # existence is checked later
    assert not Selection(names=["x"]).matches_host


def ctr(name: str, service: str = "", depends: str = "", project: str = "p",
        volumes: tuple = ()) -> ContainerInfo:
    labels = {"com.docker.compose.project": project}
    if service:
        labels["com.docker.compose.service"] = service
    if depends:
        labels["com.docker.compose.depends_on"] = depends
    return ContainerInfo(name, name, "running", labels, volumes)


def test_dependents_stop_first():
    db, cache = ctr("db", "db"), ctr("cache", "cache")
    web = ctr("web", "web", "db:service_started:false,cache:service_started:false")
    worker = ctr("worker", "worker", "web:service_started")
    order = [c.name for c in stop_order([db, cache, web, worker])]
    assert order.index("worker") < order.index("web") < order.index("db")
    assert order.index("web") < order.index("cache")


def test_depends_on_other_projects_and_cycles_do_not_hang():
    a = ctr("a", "a", "b:service_started", project="one")
    b = ctr("b", "b", "a:service_started", project="one")
    other = ctr("c", "db", project="two")
    stranger = ctr("d", "d", "db:service_started", project="one")  # db of another project
    assert sorted(c.name for c in stop_order([a, b, other, stranger])) == ["a", "b", "c", "d"]
    assert stop_order([]) == []


def source(name: str) -> Source:
    return Source(name, "/data", {"volume": name})


def test_volumes_sharing_a_container_are_grouped():
    db = ctr("db", volumes=("data", "wal"))
    web = ctr("web", volumes=("uploads", "wal"))
    lone = ctr("lone", volumes=("other",))
    users = {"data": [db], "wal": [db, web], "uploads": [web], "other": [lone], "free": []}
    found = groups([source(n) for n in ["data", "other", "uploads", "wal", "free"]], users)
    as_names = sorted((sorted(c.name for c in cs), [s.volume for s in ss]) for cs, ss in found)
    assert as_names == [([], ["free"]), (["db", "web"], ["data", "uploads", "wal"]),
                        (["lone"], ["other"])]

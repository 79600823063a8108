"""The retention policy, table-driven: which snapshots each rule keeps, and why."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from volbackup.repo.retention import Rules, Snap, decide, format_duration

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=timezone.utc)


def t(stamp: str) -> datetime:
    """'2026-12-31 23:59' -> aware UTC datetime."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)


def snaps(*stamps: str, volume: str = "v", host: str = "h") -> list[Snap]:
    return [Snap(f"{volume}@{s}", volume, t(s), host) for s in stamps]


def kept(decisions) -> list[str]:
    return sorted(d.snap.id.split("@")[1] for d in decisions if d.keep)


CASES = [
    # (name, stamps, rules, stamps kept)
    ("last keeps the newest N",
     ["2027-01-01 00:00", "2027-01-02 00:00", "2027-01-03 00:00"], Rules(last=2),
     ["2027-01-02 00:00", "2027-01-03 00:00"]),
    ("daily keeps the newest of each day",
     ["2027-01-01 01:00", "2027-01-01 23:00", "2027-01-02 03:00", "2027-01-02 04:00"],
     Rules(daily=2), ["2027-01-01 23:00", "2027-01-02 04:00"]),
    ("a missed day does not cost an older snapshot",
     ["2027-01-01 03:00", "2027-01-02 03:00", "2027-01-04 03:00", "2027-01-05 03:00"],
     Rules(daily=3), ["2027-01-02 03:00", "2027-01-04 03:00", "2027-01-05 03:00"]),
    ("day boundary at midnight UTC",
     ["2027-01-01 23:59", "2027-01-02 00:00"], Rules(daily=1), ["2027-01-02 00:00"]),
    ("hourly",
     ["2027-01-01 03:05", "2027-01-01 03:55", "2027-01-01 04:10"], Rules(hourly=5),
     ["2027-01-01 03:55", "2027-01-01 04:10"]),
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) is ISO week 2026-W53; 2027-01-04 starts 2027-W01.
    ("weekly uses ISO weeks across the year boundary",
     ["2026-12-27 12:00", "2026-12-28 12:00", "2027-01-03 12:00", "2027-01-04 12:00"],
     Rules(weekly=2), ["2027-01-03 12:00", "2027-01-04 12:00"]),
    ("weekly: Sunday and the next Monday are different weeks",
     ["2027-01-03 23:00", "2027-01-04 00:30"], Rules(weekly=1), ["2027-01-04 00:30"]),
    ("monthly keeps month ends",
     ["2026-10-31 23:00", "2026-11-01 00:00", "2026-11-30 23:59", "2026-12-31 22:00",
      "2027-01-01 01:00"],
     Rules(monthly=3), ["2026-11-30 23:59", "2026-12-31 22:00", "2027-01-01 01:00"]),
    ("monthly across February in a leap year",
     ["2024-02-28 10:00", "2024-02-29 10:00", "2024-03-01 10:00"], Rules(monthly=2),
     ["2024-02-29 10:00", "2024-03-01 10:00"]),
    ("yearly keeps the last snapshot of each year",
     ["2025-06-01 00:00", "2025-12-31 23:59", "2026-12-31 23:59", "2027-01-01 00:00"],
     Rules(yearly=2), ["2026-12-31 23:59", "2027-01-01 00:00"]),
    ("more rules than snapshots keeps everything",
     ["2027-01-01 00:00", "2027-01-02 00:00"],
     Rules(last=10, daily=30, weekly=10, monthly=12, yearly=5), ["2027-01-01 00:00", "2027-01-02 00:00"]),
    ("rules add up",
     ["2026-11-15 00:00", "2026-12-20 00:00", "2027-01-08 00:00", "2027-01-09 00:00",
      "2027-01-10 00:00"],
     Rules(last=1, daily=2, monthly=2),
     ["2026-12-20 00:00", "2027-01-09 00:00", "2027-01-10 00:00"]),
    ("within counts back from now, inclusive",
     ["2027-01-03 11:59", "2027-01-03 12:00", "2027-01-09 00:00"],
     Rules(within=timedelta(days=7)), ["2027-01-03 12:00", "2027-01-09 00:00"]),
    ("within alone still keeps the newest of an abandoned volume",
     ["2026-01-01 00:00", "2026-02-01 00:00"], Rules(within=timedelta(days=1)),
     ["2026-02-01 00:00"]),
]


@pytest.mark.parametrize("name,stamps,rules,expected", CASES, ids=[c[0] for c in CASES])
def test_policy(name, stamps, rules, expected):
    assert kept(decide(snaps(*stamps), rules, NOW)) == expected


def test_reasons_name_every_rule_that_keeps():
    decisions = decide(snaps("2027-01-09 00:00", "2027-01-10 00:00"),
                       Rules(last=1, daily=7, within=timedelta(hours=48)), NOW)
    by_stamp = {d.snap.id: d.reasons for d in decisions}
    assert by_stamp["v@2027-01-10 00:00"] == ["last 1", "daily 2027-01-10", "within 2d"]
    assert by_stamp["v@2027-01-09 00:00"] == ["daily 2027-01-09", "within 2d"]


def test_removed_snapshots_have_no_reasons():
    decisions = decide(snaps("2027-01-08 00:00", "2027-01-09 00:00"), Rules(last=1), NOW)
    removed = [d for d in decisions if not d.keep]
    assert [d.snap.id for d in removed] == ["v@2027-01-08 00:00"] and removed[0].reasons == []


def test_newest_is_kept_unless_allowed():
    old = snaps("2026-01-01 00:00")
    assert decide(old, Rules(within=timedelta(days=1)), NOW)[0].reasons == ["newest"]
    assert not decide(old, Rules(within=timedelta(days=1)), NOW, allow_remove_newest=True)[0].keep


def test_groups_are_decided_apart():
    mixed = (snaps("2027-01-01 00:00", "2027-01-02 00:00", volume="a")
             + snaps("2027-01-03 00:00", volume="b")
             + snaps("2027-01-04 00:00", volume="a", host="other"))
    decisions = decide(mixed, Rules(last=1), NOW)
    assert sorted((d.snap.host, d.snap.id) for d in decisions if d.keep) == [
        ("h", "a@2027-01-02 00:00"), ("h", "b@2027-01-03 00:00"), ("other", "a@2027-01-04 00:00")]
    merged = decide(mixed, Rules(last=1), NOW, by_host=False)
    assert sorted(d.snap.id for d in merged if d.keep) == ["a@2027-01-04 00:00", "b@2027-01-03 00:00"]


def test_ties_are_broken_by_id():
    same = t("2027-01-05 00:00")
    decisions = decide([Snap("v@x-aaaa", "v", same), Snap("v@x-bbbb", "v", same)],
                       Rules(last=1), NOW)
    assert [d.snap.id for d in decisions if d.keep] == ["v@x-bbbb"]
    assert [d.snap.id for d in decisions] == ["v@x-bbbb", "v@x-aaaa"]  # newest first


def test_no_rule_is_refused():
    with pytest.raises(ValueError, match="no keep rule"):
        decide(snaps("2027-01-01 00:00"), Rules(), NOW)


@pytest.mark.parametrize("bad", [dict(last=-1), dict(daily=True), dict(weekly=1.5),
                                 dict(within=timedelta(seconds=-1))])
def test_invalid_rules(bad):
    with pytest.raises(ValueError):
        Rules(**bad)


@pytest.mark.parametrize("seconds,text", [(86400 * 7, "7d"), (7200, "2h"), (90, "90s"), (60, "1m")])
def test_format_duration(seconds, text):
    assert format_duration(timedelta(seconds=seconds)) == text


def test_a_future_dated_snapshot_is_kept_and_not_counted():
    """Clock skew: a snapshot dated after now (beyond the tolerance) never pushes a present
    one out of `last N`; it is kept itself, flagged `future`."""
    decisions = decide(snaps("2027-01-09 00:00", "2027-01-10 11:00", "2027-03-01 00:00"),
                       Rules(last=1), NOW)
    by_stamp = {d.snap.id.split("@")[1]: d for d in decisions}
    assert by_stamp["2027-03-01 00:00"].keep and by_stamp["2027-03-01 00:00"].future
    assert by_stamp["2027-03-01 00:00"].reasons == ["dated in the future"]
    assert by_stamp["2027-01-10 11:00"].reasons == ["last 1"]
    assert not by_stamp["2027-01-09 00:00"].keep
    # every rule and "newest" ignore it: only a present snapshot is the group's newest
    old = decide(snaps("2026-12-01 00:00", "2027-03-01 00:00"), Rules(within=timedelta(days=1)),
                 NOW)
    assert [d.reasons for d in old] == [["dated in the future"], ["newest"]]


def test_within_the_tolerance_a_snapshot_counts_as_present():
    ahead = NOW + timedelta(minutes=4)   # clocks a few minutes apart are not skewed
    decisions = decide([Snap("v@ahead", "v", ahead, "h")] + snaps("2027-01-10 11:00"),
                       Rules(last=1), NOW)
    assert [(d.snap.id, d.keep, d.future) for d in decisions] == [
        ("v@ahead", True, False), ("v@2027-01-10 11:00", False, False)]


def test_protected_snapshots_are_kept_with_a_reason():
    decisions = decide(snaps("2027-01-08 00:00", "2027-01-09 00:00", "2027-01-10 00:00"),
                       Rules(last=1), NOW, protected={"v@2027-01-08 00:00"})
    assert [(d.keep, d.reasons) for d in decisions] == [
        (True, ["last 1"]), (False, []), (True, ["made by this run"])]

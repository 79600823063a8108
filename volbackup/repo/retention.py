"""The retention policy: which snapshots to keep, and why. A pure function, no I/O.

Semantics follow restic's `forget`. Snapshots are grouped (by volume, and by host unless
told otherwise) and each group is decided on its own, newest first:

- `last N`: the N newest snapshots.
- `hourly/daily/weekly/monthly/yearly N`: the newest snapshot of each of the N newest
  calendar periods (UTC; weeks are ISO weeks, Monday to Sunday) that *have* a snapshot.
  A missed day is not a period, so it does not cost an older snapshot.
- `within D`: every snapshot created at most D before `now`.

A snapshot is kept when at least one rule keeps it; `reasons` names every rule that does.
The newest snapshot of each group is always kept unless `allow_remove_newest` is set (a
volume whose backups stopped would otherwise lose everything to `within` alone).
Ties (the same `created`) are broken by the snapshot id, the larger id counting as newer.

Clock skew: a snapshot created more than FUTURE_TOLERANCE after `now` (another host's clock
ahead, or a manifest written with a future date) is kept, with the reason "dated in the
future", and is *not counted* by the rules: the rules, and "newest", apply to the present
snapshots only, so a future date can never push a present snapshot out of `last N` or a
period. Once `now` catches up with it, it is decided like any other. `protected` ids (the
snapshots the calling run just made) are always kept, with the reason "made by this run".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Callable, Collection

FUTURE_TOLERANCE = timedelta(minutes=5)   # clocks that agree this closely are not skewed
FUTURE_REASON = "dated in the future"
PROTECTED_REASON = "made by this run"

# rule name -> period key of a UTC datetime
PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "%04d-W%02d" % t.isocalendar()[:2],
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class Rules:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    def __post_init__(self):
        for name in ("last", *PERIODS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"keep {name} must be a whole number >= 0, not {value!r}")
        if self.within is not None and self.within < timedelta(0):
            raise ValueError("keep within must not be negative")

    @property
    def empty(self) -> bool:
        return not any(getattr(self, n) for n in ("last", *PERIODS)) and not self.within

    def describe(self) -> str:
        parts = [f"{n} {getattr(self, n)}" for n in ("last", *PERIODS) if getattr(self, n)]
        if self.within:
            parts.append(f"within {format_duration(self.within)}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Snap:
    id: str
    volume: str
    created: datetime   # aware, UTC
    host: str = ""


@dataclass
class Decision:
    snap: Snap
    keep: bool = False
    reasons: list[str] = field(default_factory=list)
    future: bool = False      # created after now + FUTURE_TOLERANCE: kept, not counted


def decide(snaps: list[Snap], rules: Rules, now: datetime, by_host: bool = True,
           allow_remove_newest: bool = False, protected: Collection[str] = (),
           tolerance: timedelta = FUTURE_TOLERANCE) -> list[Decision]:
    """One decision per snapshot, grouped by (host, volume) then newest first."""
    if rules.empty:
        raise ValueError("no keep rule: refusing to decide (everything would be removed)")

    def group(s: Snap):
        return (s.host if by_host else "", s.volume)

    ordered = sorted(snaps, key=lambda s: (group(s), s.created, s.id), reverse=True)
    out: list[Decision] = []
    for _, members in groupby(ordered, key=group):
        members = list(members)
        future = [Decision(s, True, [FUTURE_REASON], True) for s in members
                  if s.created > now + tolerance]
        present = [s for s in members if s.created <= now + tolerance]
        out.extend(future)
        out.extend(_decide_group(present, rules, now, allow_remove_newest))
    for d in out:
        if d.snap.id in protected:
            d.keep = True
            d.reasons.append(PROTECTED_REASON)
    return out


def _decide_group(snaps: list[Snap], rules: Rules, now: datetime,
                  allow_remove_newest: bool) -> list[Decision]:
    decisions = [Decision(s) for s in snaps]   # newest first
    for i, d in enumerate(decisions[:rules.last]):
        d.reasons.append(f"last {i + 1}")
    for name, key_of in PERIODS.items():
        left, seen = getattr(rules, name), None
        for d in decisions:
            if not left:
                break
            key = key_of(d.snap.created)
            if key != seen:
                d.reasons.append(f"{name} {key}")
                seen, left = key, left - 1
    if rules.within is not None:
        for d in decisions:
            if now - d.snap.created <= rules.within:
                d.reasons.append(f"within {format_duration(rules.within)}")
    if decisions and not decisions[0].reasons and not allow_remove_newest:
        decisions[0].reasons.append("newest")
    for d in decisions:
        d.keep = bool(d.reasons)
    return decisions


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

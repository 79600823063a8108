"""The one form of every time volbackup writes (manifests, locks, summaries, messages)."""

from __future__ import annotations

from datetime import datetime


def utc_iso(t: datetime, timespec: str = "seconds") -> str:
    """A UTC time as ISO 8601 with `Z`, the form of every time volbackup writes."""
    return t.isoformat(timespec=timespec).replace("+00:00", "Z")

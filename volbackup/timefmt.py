"""The one form of every time volbackup writes (manifests, locks, summaries, messages),
and of sizes in messages."""

from __future__ import annotations

from datetime import datetime


def utc_iso(t: datetime, timespec: str = "seconds") -> str:
    """A UTC time as ISO 8601 with `Z`, the form of every time volbackup writes."""
    return t.isoformat(timespec=timespec).replace("+00:00", "Z")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': sizes in messages, for people."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")

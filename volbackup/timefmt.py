"""The one form of every time volbackup writes (manifests, locks, summaries, messages),
and of sizes in messages."""

from __future__ import annotations

import math
import re
from datetime import datetime

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def utc_iso(t: datetime, timespec: str = "seconds") -> str:
    """A UTC time as ISO 8601 with `Z`, the form of every time volbackup writes."""
    return t.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_utc_iso(text: str) -> datetime:
    """A time as volbackup writes it (`utc_iso`: `...Z`) back; ValueError if it is not
    ISO 8601."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_duration(value) -> float | None:
    """`90`, `"90s"`, `"5m"`, `"1.5h"`, `"2d"` -> seconds (a job's lock_wait, --lock-wait);
    None for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    return float(match[1]) * _UNITS[match[2]] if match else None


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': sizes in messages, for people."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def utc_text(seconds: float) -> str:
    """A time in seconds since 1970 as `YYYY-MM-DD HH:MM:SS` (UTC, proleptic Gregorian),
    for any time a file system holds: datetime stops at the year 9999, a file's mtime
    does not (Howard Hinnant's civil_from_days, in exact integers)."""
    days, secs = divmod(math.floor(seconds), 86400)
    era, doe = divmod(days + 719468, 146097)   # 400-year eras from 0000-03-01
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day, month = doy - (153 * mp + 2) // 5 + 1, mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    hours, rest = divmod(secs, 3600)
    return f"{year:04d}-{month:02d}-{day:02d} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"

"""Run reports: Prometheus text-format metrics written atomically, and a JSON POST.

The metrics file is written to a temp file in the same directory, fsynced and renamed, so
a node exporter's textfile collector never reads half a file. Last-success timestamps are
carried over from the previous file, so a failed run does not erase when things last went
well. The notification never raises: a failure comes back as a message for stderr.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from volbackup.urls import safe_url, scrub

NOTIFY_TIMEOUT = 10.0

_HELP = {
    "volbackup_run_success": ("gauge", "1 if the last run succeeded in full, else 0."),
    "volbackup_run_timestamp_seconds": ("gauge", "When the last run ended (Unix time)."),
    "volbackup_run_duration_seconds": ("gauge", "How long the last run took."),
    "volbackup_last_success_timestamp_seconds": ("gauge", "When a run last succeeded in full."),
    "volbackup_volume_success": ("gauge", "1 if the volume's last backup succeeded, else 0."),
    "volbackup_volume_last_success_timestamp_seconds": (
        "gauge", "When the volume was last backed up successfully (Unix time)."),
    "volbackup_volume_bytes": ("gauge", "Uncompressed tar bytes of the volume's last snapshot."),
    "volbackup_volume_stored_bytes": ("gauge", "Archive bytes of the volume's last snapshot."),
    "volbackup_volume_previous_stored_bytes": (
        "gauge", "Archive bytes of the volume's last snapshot before this run."),
    "volbackup_volume_duration_seconds": ("gauge", "How long the volume's last backup took."),
    "volbackup_volume_files_read": (
        "gauge", "Regular files the volume's last backup read (files cache: changed or new)."),
    "volbackup_volume_read_bytes": ("gauge", "Bytes of the files the last backup read."),
    "volbackup_volume_files_reused": (
        "gauge", "Regular files the last backup took unread from its parent snapshot."),
    "volbackup_volume_reused_bytes": ("gauge", "Bytes of the files taken from the parent."),
    "volbackup_prune_removed_snapshots": ("gauge", "Snapshots the last prune removed."),
    "volbackup_prune_kept_snapshots": ("gauge", "Snapshots the last prune kept."),
    "volbackup_repository_locks": ("gauge", "Locks in the repository when the last run ended."),
    "volbackup_repository_oldest_lock_age_seconds": (
        "gauge", "Age of the oldest lock in the repository when the last run ended (0: none)."),
}
_CARRIED = re.compile(r'^(volbackup_(?:volume_)?last_success_timestamp_seconds)\{([^}]*)\} (\S+)$')
_STORED = re.compile(r'^volbackup_volume_(previous_)?stored_bytes\{([^}]*)\} (\S+)$')


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return ",".join(f'{k}="{esc(v)}"' for k, v in labels.items())


def metrics_text(summary: dict, previous: str = "") -> str:
    """The metrics of one run summary (see `runner.run.summary`), in Prometheus text format."""
    job = summary["job"]
    ended = summary["finished_unix"]
    samples: dict[str, dict[str, float]] = {name: {} for name in _HELP}
    stored_before: dict[str, float] = {}
    for line in previous.splitlines():   # last successes of earlier runs of the same job
        match = _CARRIED.match(line) or _STORED.match(line)
        if not match or not (match[2] + ",").startswith(_labels(backup_job=job) + ","):
            continue
        try:
            value = float(match[3])
        except ValueError:
            continue
        if match.re is _CARRIED:
            samples[match[1]][match[2]] = value
        elif not match[1] or match[2] not in stored_before:  # the last snapshot's size wins
            stored_before[match[2]] = value
    run = _labels(backup_job=job)
    ok = summary["status"] == "ok"
    samples["volbackup_run_success"][run] = 1 if ok else 0
    samples["volbackup_run_timestamp_seconds"][run] = ended
    samples["volbackup_run_duration_seconds"][run] = summary["seconds"]
    if ok:
        samples["volbackup_last_success_timestamp_seconds"][run] = ended
    for v in summary["volumes"]:
        if v["status"] == "skipped":  # a socket or device bind: nothing was backed up
            continue
        labels = _labels(backup_job=job, volume=v["volume"])
        good = v["status"] != "failed"
        samples["volbackup_volume_success"][labels] = 1 if good else 0
        if labels in stored_before:  # for a "stored size jumped" alert; kept across failures
            samples["volbackup_volume_previous_stored_bytes"][labels] = stored_before[labels]
        if good:
            samples["volbackup_volume_last_success_timestamp_seconds"][labels] = ended
            samples["volbackup_volume_bytes"][labels] = v.get("bytes", 0)
            samples["volbackup_volume_stored_bytes"][labels] = v.get("stored_bytes", 0)
            samples["volbackup_volume_duration_seconds"][labels] = v.get("seconds", 0)
            cache = v.get("files_cache")
            if cache:       # a direct backup into a packed repository
                for name, key in (("files_read", "files_read"), ("read_bytes", "bytes_read"),
                                  ("files_reused", "files_reused"),
                                  ("reused_bytes", "bytes_reused")):
                    samples[f"volbackup_volume_{name}"][labels] = cache[key]
    if summary.get("prune"):
        samples["volbackup_prune_removed_snapshots"][run] = summary["prune"]["removed"]
        samples["volbackup_prune_kept_snapshots"][run] = summary["prune"]["kept"]
    if summary.get("locks"):
        samples["volbackup_repository_locks"][run] = summary["locks"]["count"]
        samples["volbackup_repository_oldest_lock_age_seconds"][run] = (
            summary["locks"]["oldest_age_seconds"])
    lines = []
    for name, (kind, text) in _HELP.items():
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{{{labels}}} {_number(value)}"
                      for labels, value in sorted(samples[name].items())]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Full precision (a `:g` format would round Unix times to 6 digits)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def write_metrics(path: str, summary: dict) -> None:
    """Write the metrics file atomically (temp file in the same directory, then rename)."""
    target = Path(path)
    try:
        previous = target.read_text()
    except (OSError, UnicodeDecodeError):
        previous = ""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with temp.open("x") as out:
            out.write(metrics_text(summary, previous))
            out.flush()
            os.fsync(out.fileno())
        temp.chmod(0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def notify(url: str, summary: dict, timeout: float = NOTIFY_TIMEOUT) -> str | None:
    """POST the summary as JSON; None when the server took it, else why not (never raises).

    The URL often holds a token (Slack, Discord): messages show its scheme and host only.
    """
    where = safe_url(url)
    try:
        request = urllib.request.Request(
            url, data=json.dumps(summary).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "volbackup"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
        return None
    except urllib.error.HTTPError as e:
        return f"the notification to {where} got HTTP {e.code}"
    except Exception as e:  # URLError, OSError, http.client's: the receiver, not the run
        return f"the notification to {where} failed: {_why(e)}"


def _why(error: Exception) -> str:
    """Why a POST failed, from the OS's own words only: the texts of urllib and http.client
    quote pieces of the URL (a bad port quotes the password, an unknown scheme the path)."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return scrub(reason.strerror)
    if isinstance(error, (ValueError, http.client.InvalidURL)):
        return "not a valid http(s) URL"
    return type(reason).__name__

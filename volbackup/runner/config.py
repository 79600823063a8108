"""The config file of `volbackup run`: TOML with one table per job.

    [defaults]                  # optional: keys every job gets unless it sets them
    repository = "/srv/backups"

    [jobs.db]
    volumes = ["pgdata"]        # or: container = "db"
    # selection, as on the command line: all = true, labels = ["backup=nightly"],
    # project = "shop", exclude = ["shop_cache"], include_anonymous = false
    exclude_path = ["cache", "*.tmp"]  # as --exclude-path: paths inside the volumes
    stop = true                 # or pause = true; stop_timeout = 10; retries = 2
    direct = false              # as --no-direct (true: --direct; absent: the default)
    parallel = 1                # as --jobs N: volumes read at once
    level = 3
    lock_wait = "5m"
    metrics_file = "/var/lib/node_exporter/textfile/volbackup-db.prom"
    notify_url = "https://alerts.example.com/hook"   # a JSON POST; or apprise URLs, one or a
                                # list: ["ntfy://ntfy.sh/backups", "mailto://..."]
    notify = "failure"          # or "always"
    keep = { daily = 7, weekly = 4, monthly = 12 }
    copy_to = "s3://offsite/prod"   # then copy the snapshots just made there
    copy_to_key_file = "/etc/volbackup/offsite.key"  # if that repository is encrypted

Errors name the file, the job, the key and, where it can be found, the line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from volbackup.errors import BadPattern, ConfigError
from volbackup.ops import notify
from volbackup.ops.select import Selection
from volbackup.repo.manifest import VOLUME_NAME
from volbackup.repo.retention import PERIODS, Rules
from volbackup.stream.exclude import parse_patterns
from volbackup.timefmt import parse_duration
from volbackup.urls import scrub

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

JOB_KEYS = {"repository", "volumes", "container", "level", "lock_wait", "metrics_file",
            "notify_url", "notify", "keep", "allow_remove_newest", "all", "labels", "project",
            "exclude", "include_anonymous", "stop", "pause", "stop_timeout", "retries", "direct",
            "parallel", "key_file", "copy_to", "copy_to_key_file", "exclude_path", "read_all"}
KEEP_KEYS = {"last", *PERIODS, "within"}


@dataclass
class Job:
    name: str
    repository: str
    volumes: list[str] = field(default_factory=list)
    container: str | None = None
    level: int = 3
    lock_wait: float = 60.0
    metrics_file: str | None = None
    notify_urls: list[str] = field(default_factory=list)
    notify: str = "failure"
    keep: Rules | None = None
    allow_remove_newest: bool = False
    selection: Selection = field(default_factory=Selection)
    quiesce: str | None = None   # "stop" or "pause"
    stop_timeout: int = 10
    retries: int = 2
    direct: bool | None = None   # --direct / --no-direct; None: the default
    parallel: int = 1            # as backup --jobs N
    key_file: str | None = None  # an encrypted repository's key (backup --key-file)
    copy_to: str | None = None   # a second repository: the snapshots made are copied there
    copy_to_key_file: str | None = None  # its key, if it is encrypted (copy --to-key-file)
    exclude_paths: list[str] = field(default_factory=list)  # as backup --exclude-path
    read_all: bool = False       # as backup --read-all (no files cache)


class _Where:
    """Builds messages that name the file, job, key and line."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()

    def line_of(self, table: str, key: str) -> int | None:
        current = ""
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", stripped)
            if header:
                current = re.sub(r"\s*\.\s*", ".", header[1]).replace('"', "")
                continue
            match = re.match(r'"?([A-Za-z0-9_.-]+)"?\s*=', stripped)
            if match:
                full = f"{current}.{match[1]}" if current else match[1]
                if full == f"{table}.{key}" or (current == table and match[1] == key):
                    return number
        return None

    def header_line(self, table: str) -> int | None:
        for number, line in enumerate(self.lines, 1):
            header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", line.strip())
            if header and re.sub(r"\s*\.\s*", ".", header[1]).replace('"', "") == table:
                return number
        return None

    def error(self, table: str, key: str | None, message: str) -> ConfigError:
        scope = ("job " + table.split(".")[1]) if table.startswith("jobs.") else table
        line = self.line_of(table, key) if key else self.header_line(table)
        if line is None and "." in table:  # inside an inline table: the line of its key
            line = self.line_of(*table.rsplit(".", 1))
        if line is None and key:  # inherited from [defaults]
            line = self.line_of("defaults", key)
        where = self.path + (f", line {line}" if line else "")
        what = f"{scope}: key {key!r}: " if key else f"{scope}: "
        return ConfigError(f"config {where}: {what}{message}")


def load(path: str) -> list[Job]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    where = _Where(path, text)
    unknown = set(data) - {"defaults", "jobs"}
    if unknown:
        key = sorted(unknown)[0]
        line = where.line_of("", key) or where.line_of(key, "")
        raise ConfigError(f"config {path}" + (f", line {line}" if line else "")
                          + f": unknown top-level key {key!r} (expected [defaults] and [jobs.NAME])")
    defaults, jobs = data.get("defaults", {}), data.get("jobs", {})
    if not isinstance(defaults, dict) or not isinstance(jobs, dict) or not jobs:
        raise ConfigError(f"config {path}: needs at least one [jobs.NAME] table")
    _check_keys(where, "defaults", defaults)
    return [_job(where, name, {**defaults, **spec} if isinstance(spec, dict) else spec)
            for name, spec in jobs.items()]


def _check_keys(where: _Where, table: str, spec: dict) -> None:
    for key in spec:
        if key not in JOB_KEYS:
            raise where.error(table, key, f"unknown key (known: {', '.join(sorted(JOB_KEYS))})")


def _job(where: _Where, name: str, spec) -> Job:
    table = f"jobs.{name}"
    if not isinstance(spec, dict):
        raise where.error("jobs", name, "a job must be a table: [jobs.NAME]")
    _check_keys(where, table, spec)

    def bad(key: str, wanted: str):
        # Never echo a notify_url (its path holds the token); any URL: scheme and host only.
        shown = "the value given" if key == "notify_url" else scrub(repr(spec[key]))
        return where.error(table, key, f"must be {wanted}, not {shown}")

    def text(key: str) -> str | None:
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            raise bad(key, "a non-empty string")
        return spec.get(key)

    job = Job(name, text("repository") or "")
    if not job.repository:
        raise where.error(table, None, "needs a repository (in the job or in [defaults])")
    if "volumes" in spec:
        vols = spec["volumes"]
        if not isinstance(vols, list) or not vols or not all(
                isinstance(v, str) and VOLUME_NAME.fullmatch(v) for v in vols):
            raise bad("volumes", "a non-empty list of volume names")
        job.volumes = list(vols)
    job.container = text("container")
    _selection(where, table, spec, job, bad)
    if bool(job.volumes or job.selection.matches_host) == bool(job.container):
        raise where.error(table, None, "needs either volumes (or all, labels, project) or "
                                       "container (not both)")
    if "level" in spec:
        level = spec["level"]
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
            raise bad("level", "an integer from 1 to 22")
        job.level = level
    if "lock_wait" in spec:
        wait = parse_duration(spec["lock_wait"])
        if wait is None:
            raise bad("lock_wait", "a duration like 60s, 5m or 1h")
        job.lock_wait = wait
    job.metrics_file = text("metrics_file")
    job.key_file = text("key_file")
    job.notify_urls = _notify_urls(where, table, spec, bad)
    job.copy_to, job.copy_to_key_file = text("copy_to"), text("copy_to_key_file")
    if job.copy_to_key_file and not job.copy_to:
        raise where.error(table, "copy_to_key_file", "goes with copy_to (the repository "
                                                     "it is the key of)")
    job.notify = text("notify") or "failure"
    if job.notify not in ("failure", "always"):
        raise bad("notify", '"failure" or "always"')
    if "allow_remove_newest" in spec:
        if not isinstance(spec["allow_remove_newest"], bool):
            raise bad("allow_remove_newest", "true or false")
        job.allow_remove_newest = spec["allow_remove_newest"]
    if "keep" in spec:
        job.keep = _keep(where, f"{table}.keep", spec["keep"])
    return job


def _notify_urls(where: _Where, table: str, spec: dict, bad) -> list[str]:
    """One URL or a list; each an https:// POST or a URL apprise understands. Errors never
    repeat a URL: its path or query holds the token."""
    value = spec.get("notify_url", [])
    urls = [value] if isinstance(value, str) else value
    if "notify_url" in spec and (not isinstance(urls, list) or not urls or not all(
            isinstance(u, str) and u for u in urls)):
        raise bad("notify_url", "a URL or a non-empty list of URLs")
    for number, url in enumerate(urls, 1):
        problem = notify.check_url(url)
        if problem:
            which = f"URL {number} of {len(urls)}" if len(urls) > 1 else "the URL"
            raise where.error(table, "notify_url", f"{which}: {problem}")
    return list(urls)


def _selection(where: _Where, table: str, spec: dict, job: Job, bad) -> None:
    """all, labels, project, exclude, include_anonymous, stop/pause, stop_timeout, retries,
    direct, parallel, exclude_path."""
    def flag(key: str) -> bool:
        if key in spec and not isinstance(spec[key], bool):
            raise bad(key, "true or false")
        return spec.get(key, False)

    def names(key: str, pattern=None) -> list[str]:
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(
                isinstance(v, str) and v and (pattern is None or pattern.fullmatch(v))
                for v in value):
            raise bad(key, "a list of " + ("volume names" if pattern else "strings"))
        return list(value)

    def count(key: str, low: int, high: int, default: int) -> int:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(key, f"an integer from {low} to {high}")
        return value

    project = spec.get("project")
    if project is not None and (not isinstance(project, str) or not project):
        raise bad("project", "a non-empty string")
    job.selection = Selection([], flag("all"), names("labels"), project,
                              names("exclude", VOLUME_NAME), flag("include_anonymous"))
    if flag("stop") and flag("pause"):
        raise where.error(table, "pause", "stop and pause exclude each other")
    job.quiesce = "stop" if flag("stop") else "pause" if flag("pause") else None
    job.stop_timeout = count("stop_timeout", 0, 3600, 10)
    job.retries = count("retries", 0, 10, 2)
    job.direct = flag("direct") if "direct" in spec else None
    job.parallel = count("parallel", 1, 32, 1)
    job.read_all = flag("read_all")
    try:
        job.exclude_paths = parse_patterns(names("exclude_path"))
    except BadPattern as e:
        raise where.error(table, "exclude_path", str(e)) from None


def _keep(where: _Where, table: str, keep) -> Rules:
    if not isinstance(keep, dict) or not keep:
        raise where.error(table.rsplit(".", 1)[0], "keep",
                          "must be a table of rules like { daily = 7, weekly = 4 }")
    values: dict = {}
    for key, value in keep.items():
        if key not in KEEP_KEYS:
            raise where.error(table, key, f"unknown keep rule (known: {', '.join(sorted(KEEP_KEYS))})")
        if key == "within":
            seconds = parse_duration(value)
            if seconds is None:
                raise where.error(table, key, f"must be a duration like 7d, not {value!r}")
            values["within"] = timedelta(seconds=seconds)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise where.error(table, key, f"must be a whole number >= 1, not {value!r}")
        else:
            values[key] = value
    return Rules(**values)

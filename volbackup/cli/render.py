"""Rendering of results: text for people, a versioned JSON envelope for scripts."""

from __future__ import annotations

import json

import click

JSON_VERSION = 1


def emit_json(command: str, **payload) -> None:
    click.echo(json.dumps({"volbackup_json": JSON_VERSION, "command": command, **payload},
                          indent=2, sort_keys=False))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def note(message: str) -> None:
    """Something the user should see before it happens, on stderr (stdout stays clean
    for --json)."""
    click.echo(f"volbackup: {message}", err=True)


def warn(message: str) -> None:
    click.echo(f"volbackup: warning: {message}", err=True)


def failures(outcomes) -> None:
    """With several volumes, name each failure on stderr before the summary error line."""
    if len(outcomes) > 1:
        for o in outcomes:
            if o.failed:
                click.echo(f"volbackup: {o.volume}: failed: {o.message}", err=True)


def hook_failures(outcomes) -> None:
    """Name every hook that failed, with the end of its output, on stderr (once each)."""
    seen = set()
    for o in outcomes:
        for hook in getattr(o, "hooks", []):
            key = (hook["container"], hook["hook"])
            if hook["exit_code"] != 0 and key not in seen:
                seen.add(key)
                tail = hook["output"].strip().splitlines()[-1:] or [""]
                click.echo(f"volbackup: {hook['container']}: {hook['hook']}-hook "
                           f"{hook['command']!r} exited {hook['exit_code']}: {tail[0]}", err=True)

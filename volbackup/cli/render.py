"""Rendering of results: text for people, a versioned JSON envelope for scripts."""

from __future__ import annotations

import json
import re
from typing import Callable

import click

from volbackup import timefmt

JSON_VERSION = 1

# C0 controls (ESC, CR, BEL, newline...), DEL, C1 controls, and the bidirectional
# overrides that make a terminal show text in another order than it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """`value` as text that is safe to print on a terminal: every control character
    escaped (`\\x1b`, `\\u202e`). Volume names, labels, hosts, paths and messages come
    from repositories, engines and lock files that others may have written, and an escape
    sequence in them could rewrite the screen or the title, or hide a line. JSON output
    needs none of this: json.dumps escapes them itself."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                       else f"\\u{ord(m[0]):04x}", str(value))


def echo(line: object, err: bool = False) -> None:
    """Print one line of text output, control characters escaped (`clean`)."""
    click.echo(clean(line), err=err)


def emit_json(command: str, **payload) -> None:
    click.echo(json.dumps({"volbackup_json": JSON_VERSION, "command": command, **payload},
                          indent=2, sort_keys=False))


human_bytes = timefmt.human_bytes


def note(message: str) -> None:
    """Something the user should see before it happens, on stderr (stdout stays clean
    for --json)."""
    echo(f"volbackup: {message}", err=True)


def warn(message: object) -> None:
    echo(f"volbackup: warning: {message}", err=True)


def results(command: str, as_json: bool, outcomes, done: Callable,
            name: Callable = lambda o: o.volume, **envelope) -> None:
    """The per-volume results on stdout: the JSON envelope (`envelope` fields and
    `volumes`), or a line per volume: `done(o)` for each that succeeded, `NAME: skipped:
    WHY` for each skipped. Failures are named by failures(), on stderr."""
    if as_json:
        emit_json(command, **envelope, volumes=[o.as_dict() for o in outcomes])
        return
    for o in outcomes:
        if o.status == "skipped":
            echo(f"{name(o)}: skipped: {o.message}")
        elif not o.failed:
            echo(done(o))


def failures(outcomes, name: Callable = lambda o: o.volume) -> None:
    """With several volumes, name each failure on stderr before the summary error line."""
    if len(outcomes) > 1:
        for o in outcomes:
            if o.failed:
                echo(f"volbackup: {name(o)}: failed: {o.message}", err=True)


def hook_failures(outcomes) -> None:
    """Name every hook that failed, with the end of its output, on stderr (once each)."""
    seen = set()
    for o in outcomes:
        for hook in getattr(o, "hooks", []):
            key = (hook["container"], hook["hook"])
            if hook["exit_code"] != 0 and key not in seen:
                seen.add(key)
                tail = hook["output"].strip().splitlines()[-1:] or [""]
                echo(f"volbackup: {hook['container']}: {hook['hook']}-hook "
                     f"{hook['command']!r} exited {hook['exit_code']}: {tail[0]}", err=True)

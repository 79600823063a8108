"""Progress (bytes, rate and, with a known total, ETA) on stderr when it is a terminal;
nothing otherwise (cron, a pipe, a log file), and nothing with -q/--quiet.

`-q/--quiet` goes before the command (`volbackup -q backup ...`, like restic's) or after it
(`volbackup backup -q ...`, where operators type it last): both set one flag on the root
context, which `terminal_progress` and `info` read.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from volbackup.cli.render import clean, echo
from volbackup.ops.outcome import ProgressFactory, no_progress

_QUIET = "volbackup.quiet"


def _set_quiet(ctx: click.Context, param, value: bool) -> bool:
    if value:
        ctx.find_root().meta[_QUIET] = True
    return value


QUIET_HELP = "No progress bars and no progress messages (warnings and errors still print)."

quiet_option = click.option("-q", "--quiet", is_flag=True, expose_value=False,
                             callback=_set_quiet, help=QUIET_HELP)


def quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().meta.get(_QUIET))


def info(message: str, prefix: str = "volbackup: ") -> None:
    """A progress message on stderr (`volbackup: prune: 5 kept, 1 removed`), not with -q."""
    if not quiet():
        echo(f"{prefix}{message}", err=True)


def terminal_progress() -> ProgressFactory:
    if quiet() or not sys.stderr.isatty():
        return no_progress

    from tqdm import tqdm  # here: only a terminal shows bars, and tqdm takes ~40 ms to import

    @contextmanager
    def bar(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with tqdm(total=total or None, desc=clean(label), unit="B", unit_scale=True,
                  unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True) as progress:
            yield progress.update

    return bar

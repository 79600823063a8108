"""A progress bar (bytes and rate) on stderr when it is a terminal; nothing otherwise."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from volbackup.cli.render import clean
from volbackup.ops.outcome import ProgressFactory, no_progress


def terminal_progress() -> ProgressFactory:
    if not sys.stderr.isatty():
        return no_progress

    @contextmanager
    def bar(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with tqdm(total=total, desc=clean(label), unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, leave=False, dynamic_ncols=True) as progress:
            yield progress.update

    return bar

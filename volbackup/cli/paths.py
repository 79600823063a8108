"""--include/--exclude PATH: which part of a snapshot `restore` and `extract` take."""

from __future__ import annotations

import functools

import click

from volbackup.stream.catalog import Selection, normal_path


class SnapshotPath(click.ParamType):
    """A path inside a volume (`/etc/x`, `etc/x/`, `./etc/x` are one path); `..` and NUL
    are usage errors (exit 2), not a way out of the volume."""
    name = "PATH"

    def convert(self, value, param, ctx):
        try:
            return normal_path(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def path_options(command):
    """--include PATH... / --exclude PATH... -> one `paths` (a catalogue Selection, or
    None when neither was given)."""

    @click.option("--include", "include", multiple=True, type=SnapshotPath(), metavar="PATH",
                  help="Take only this path inside the volume and everything under it "
                       "(repeatable; each must exist in the snapshot, else exit 4).")
    @click.option("--exclude", "exclude", multiple=True, type=SnapshotPath(), metavar="PATH",
                  help="Leave this path and everything under it out (repeatable).")
    @functools.wraps(command)
    def wrapper(*args, include, exclude, **kwargs):
        paths = Selection(tuple(include), tuple(exclude)) if include or exclude else None
        return command(*args, paths=paths, **kwargs)

    return wrapper

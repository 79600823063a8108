"""Options that choose volumes and quiet their containers, shared by backup and migrate."""

from __future__ import annotations

import functools

import click

from volbackup.cli import complete
from volbackup.ops.select import Selection


def selection_options(command):
    """--all, --label, --project, --exclude, --include-anonymous -> one `selection`."""

    @click.option("--all", "all_volumes", is_flag=True, help="Every volume on the host.")
    @click.option("--label", "labels", multiple=True, metavar="KEY[=VALUE]",
                  help="Volumes with this label (repeatable: all must match).")
    @click.option("--project", metavar="NAME", help="The volumes of a Compose project.")
    @click.option("--exclude", multiple=True, metavar="VOLUME", shell_complete=complete.volumes,
                  help="Leave this volume out (repeatable).")
    @click.option("--include-anonymous", is_flag=True,
                  help="Let --all, --label and --project match anonymous volumes too.")
    @functools.wraps(command)
    def wrapper(*args, all_volumes, labels, project, exclude, include_anonymous, **kwargs):
        selection = Selection([], all_volumes, list(labels), project, list(exclude),
                              include_anonymous)
        return command(*args, selection=selection, **kwargs)

    return wrapper


def quiesce_options(command):
    """--stop / --pause (one `quiesce` value) and --stop-timeout."""
    options = [
        click.option("--stop", "quiesce", flag_value="stop",
                     help="Stop the running containers that use a volume while it is read."),
        click.option("--pause", "quiesce", flag_value="pause",
                     help="Pause them instead (frozen, not shut down)."),
        click.option("--stop-timeout", type=click.IntRange(0), default=10, show_default=True,
                     metavar="SECONDS", help="Grace period before a stopped container is killed."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_selection(selection: Selection, container: str | None) -> None:
    """Volumes (named or selected) or a container, not both and not neither."""
    if bool(container) == (bool(selection.names) or selection.matches_host):
        raise click.UsageError("name VOLUMEs (or --all, --label, --project), or --container "
                               "NAME (not both)")
    if selection.exclude and container:
        raise click.UsageError("--exclude goes with VOLUMEs, --all, --label or --project")

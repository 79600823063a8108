"""`volbackup extract`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import host_option, json_option, repo_option, secrets_options
from volbackup.cli.paths import path_options
from volbackup.cli.progress import terminal_progress
from volbackup.ops import extract as ops
from volbackup.repo.repository import Repository


@click.command()
@click.argument("snapshot")
@repo_option
@click.option("--to", "directory", required=True, metavar="DIR",
              type=click.Path(file_okay=False),
              help="Directory on this host to extract into: created (mode 0700) if missing; "
                   "an existing one must be empty.")
@path_options
@host_option
@json_option
@secrets_options(reading=True)
def extract(snapshot, repo, directory, paths, host, as_json, secrets):
    """Extract a snapshot, or part of it, into a directory on this host.

    SNAPSHOT is a snapshot id or a volume name (its newest snapshot, as `restore`
    means it). Nothing is written outside DIR, whatever the repository holds. As root,
    files keep the snapshot's owners, modes and extended attributes; as another user
    they belong to that user. DIR keeps its own owner and mode. If the extract fails,
    DIR is left as it was found.

    \b
    Examples:
      volbackup extract pgdata --to /tmp/pg -r /srv/backups
      volbackup extract pgdata@20261129T031500Z-1a2b --include conf/pg_hba.conf --to ./old -r /srv/backups
    """
    repository = Repository.open(repo, secrets=secrets)
    result = ops.extract(repository, snapshot, directory, paths, host, terminal_progress())
    if as_json:
        render.emit_json("extract", **vars(result))
        return
    part = "part of " if result.partial else ""
    render.echo(f"{result.directory}: extracted {part}{result.snapshot}, "
                f"{render.human_bytes(result.bytes)} in {result.seconds:.1f}s")

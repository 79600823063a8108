"""`volbackup backup`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, repo_option, s3_write_options
from volbackup.cli.progress import terminal_progress
from volbackup.engine import Engine
from volbackup.ops import backup as ops
from volbackup.repository import Repository


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...")
@click.option("-c", "--container", metavar="NAME",
              help="Back up every volume and bind mount of this container.")
@repo_option
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True,
              help="zstd compression level.")
@s3_write_options
@json_option
def backup(volumes, container, repo, level, as_json, s3):
    """Back up volumes into REPO, one snapshot per volume.

    \b
    Examples:
      volbackup backup pgdata -r /srv/backups
      volbackup backup --container db -r /srv/backups --json
      volbackup backup pgdata -r s3://my-backups/prod --s3-sse aws:kms
    """
    if bool(volumes) == bool(container):
        raise click.UsageError("name one or more VOLUMEs, or --container NAME (not both)")
    repository = Repository.open(repo, writable=True, options=s3)
    engine = Engine.connect()
    result = ops.backup(engine, repository, list(volumes), container, level,
                        terminal_progress())
    if as_json:
        render.emit_json("backup", repository=result.repository,
                         volumes=[v.as_dict() for v in result.volumes])
    else:
        for v in result.volumes:
            if not v.failed:
                click.echo(f"{v.volume}: snapshot {v.snapshot}, {render.human_bytes(v.bytes)}"
                           f" -> {render.human_bytes(v.stored_bytes)} in {v.seconds:.1f}s")
    render.failures(result.volumes)
    result.raise_for_failures()

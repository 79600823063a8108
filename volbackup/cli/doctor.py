"""`volbackup doctor`."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, secrets_options
from volbackup.docker.engine import Engine
from volbackup.ops import doctor as ops

_MARK = {ops.OK: "ok", ops.WARNING: "WARNING", ops.PROBLEM: "PROBLEM"}


@click.command()
@click.option("-r", "--repo", "repo", envvar="VOLBACKUP_REPO", metavar="REPO",
              help="Repository to check: a directory path, s3://BUCKET[/PREFIX] or "
                   "sftp://[USER@]HOST[:PORT]/PATH (docs/storage.md). Default: "
                   "$VOLBACKUP_REPO; without one, only the engine is checked.")
@json_option
@secrets_options(reading=False)
def doctor(repo, as_json, secrets):
    """Say whether a backup into REPO would work now, and why not: the engine, the direct
    path, the repository, free space, clocks, locks, leftovers. Exits 18 when something
    would make a backup fail; warnings alone exit 0.

    \b
    Examples:
      volbackup doctor -r /srv/backups
      volbackup doctor -r s3://my-backups/prod --json
    """
    report = ops.doctor(repo, Engine.connect, datetime.now(timezone.utc), secrets)
    if as_json:
        render.emit_json("doctor", repository=report.repository,
                         ready=not report.problems,
                         checks=[c.as_dict() for c in report.checks])
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            render.echo(f"{_MARK[c.status]:<7}  {c.name:<{width}}  {c.reason}")
            if c.action and c.status != ops.OK:
                render.echo(f"{'':<7}  {'':<{width}}  -> {c.action}")
    report.raise_for_problems()

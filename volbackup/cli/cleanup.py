"""`volbackup cleanup`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import Duration, json_option, repo_option
from volbackup.ops import cleanup as ops
from volbackup.repo.repository import Repository


@click.command()
@repo_option
@click.option("--older-than", type=Duration(), default="24h", show_default=True,
              help="Only uploads started, and temp files last written, at least this long ago "
                   "(0, 30m, 12h, 7d); younger ones may belong to a backup that is still "
                   "running. A temp file whose writer's pid is gone goes after 10 minutes.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@json_option
def cleanup(repo, older_than, dry_run, as_json):
    """Remove the unfinished writes killed runs left in REPO: S3 multipart uploads (aborted)
    and temp files of a directory or SFTP repository (.NAME.tmp-PID-xxxx).

    \b
    Examples:
      volbackup cleanup -r s3://backups/prod --dry-run
      volbackup cleanup -r s3://backups/prod --older-than 0 --json
      volbackup cleanup -r /srv/backups
    """
    result = ops.cleanup(Repository.open(repo), older_than, dry_run)
    if as_json:
        render.emit_json("cleanup", repository=result.repository, dry_run=result.dry_run,
                         older_than_seconds=result.older_than_seconds,
                         leftovers=[o.as_dict() for o in result.leftovers])
    else:
        for o in result.leftovers:
            size = "?" if o.bytes is None else render.human_bytes(o.bytes)
            why = f" ({o.reason})" if o.status == ops.Status.KEPT else ""
            when = "started" if o.kind == "upload" else "last written"
            render.echo(f"{o.key}: {o.status}{why}, {when} {o.started}, {size}"
                        + (f": {o.message}" if o.message else ""))
        verb = "would free" if dry_run else "freed"
        render.echo(f"{len(result.leftovers)} unfinished write(s); {verb} "
                    f"{render.human_bytes(result.removed_bytes)}", err=True)
    result.raise_for_failures()

"""`volbackup init`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, repo_option, s3_write_options
from volbackup.ops.create import create_repository

_SIZES = {"512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20}


@click.command()
@repo_option
@click.option("--chunk-size", type=click.Choice(list(_SIZES)), default="1M", show_default=True,
              help="Target chunk size (content-defined: chunks vary between a quarter and four "
                   "times it). Smaller finds more duplicates and makes more objects; "
                   "docs/performance.md has the measurements.")
@s3_write_options
@json_option
def init(repo, chunk_size, s3, as_json):
    """Create a chunked repository in REPO (an empty directory, or s3://BUCKET[/PREFIX]).

    Snapshots in a chunked repository share their data: what is already stored, from
    any volume or host, is not stored again. A repository without `init` keeps one
    .tar.zst archive per snapshot. `init` on a repository that has a config refuses.

    \b
    Examples:
      volbackup init -r /srv/backups
      volbackup init -r s3://my-backups/prod
    """
    result = create_repository(repo, s3, _SIZES[chunk_size])
    if as_json:
        render.emit_json("init", **vars(result))
        return
    render.echo(f"created chunked repository {result.repository} (id {result.id}, chunks of "
                f"about {render.human_bytes(result.chunker['avg_size'] + result.chunker['min_size'])})")
    if result.existing_snapshots:
        render.echo(f"its {result.existing_snapshots} existing snapshots keep the archive "
                    f"layout and stay readable; new ones are chunked")

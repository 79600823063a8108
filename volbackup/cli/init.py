"""`volbackup init`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, repo_option, s3_write_options
from volbackup.ops.create import create_repository
from volbackup.repo.config import CHUNKER, CHUNKER_PLAIN
from volbackup.repo.crypto import recipients_from_lines

_SIZES = {"512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20}


@click.command()
@repo_option
@click.option("--chunk-size", type=click.Choice(list(_SIZES)), default="1M", show_default=True,
              help="Target chunk size (content-defined: chunks vary between a quarter and four "
                   "times it). Smaller finds more duplicates and makes more objects; "
                   "docs/performance.md has the measurements.")
@click.option("--chunker", type=click.Choice(["members", "stream"]), default="members",
              show_default=True,
              help="members: also cut where files start and end, grouping small files by "
                   "name (a changed small file rewrites its group only); stream: FastCDC over "
                   "the stream alone (fewer, larger objects: faster for volumes of large "
                   "files). docs/performance.md has the measurements.")
@click.option("--encrypt-to", "recipients", multiple=True, metavar="RECIPIENT",
              help="Encrypt to this age public key (age1...) or SSH public key (ssh-ed25519 "
                   "..., ssh-rsa ...); repeatable. Needs --key-file.")
@click.option("--recipients-file", type=click.File("r"), metavar="FILE",
              help="Encrypt to the recipients in FILE, one per line (# comments).")
@click.option("--key-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Encrypted repository: write its new key here (0600; the file must not "
                   "exist). Backup hosts need it; keep a copy with the identity.")
@s3_write_options
@json_option
def init(repo, chunk_size, chunker, recipients, recipients_file, key_file, s3, as_json):
    """Create a chunked repository in REPO (an empty directory, or s3://BUCKET[/PREFIX]).

    A directory that does not exist is created (mode 0700) if its parent exists; every
    other command refuses a directory that does not exist.

    Snapshots in a chunked repository share their data: what is already stored, from
    any volume or host, is not stored again. A repository without `init` keeps one
    .tar.zst archive per snapshot. `init` on a repository that has a config refuses.

    \b
    Examples:
      volbackup init -r /srv/backups
      volbackup init -r s3://my-backups/prod
    """
    encrypt_to = list(recipients) + (recipients_from_lines(recipients_file)
                                     if recipients_file else [])
    if (recipients or recipients_file) and not encrypt_to:
        raise click.UsageError("--recipients-file holds no recipient")
    if key_file and not encrypt_to:
        raise click.UsageError("--key-file is for an encrypted repository: give --encrypt-to")
    result = create_repository(repo, s3, _SIZES[chunk_size], encrypt_to or None, key_file,
                               CHUNKER if chunker == "members" else CHUNKER_PLAIN)
    if as_json:
        render.emit_json("init", **vars(result))
        return
    size = render.human_bytes(result.chunker['avg_size'] + result.chunker['min_size'])
    if result.created_directory:
        render.echo(f"created directory {result.repository} (mode 0700)")
    render.echo(f"created {'encrypted ' if result.recipients else ''}chunked repository "
                f"{result.repository} (id {result.id}, chunks of about {size})")
    if result.recipients:
        render.echo(f"encrypted to {len(result.recipients)} recipient(s); its key is in "
                    f"{result.key_file}: backup hosts need it (--key-file), and so does "
                    f"restore: append it to the identity file (cat {result.key_file} >> "
                    f"IDENTITY_FILE) and keep a copy offline")
    if result.existing_snapshots:
        render.echo(f"its {result.existing_snapshots} existing snapshots keep the archive "
                    f"layout and stay readable; new ones are chunked")

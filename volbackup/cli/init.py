"""`volbackup init`."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, repo_option, s3_write_options
from volbackup.ops.create import InitOptions, create_repository
from volbackup.repo.config import CHUNKED, CHUNKER_PLAIN, DEFAULT_LAYOUT, PACKED
from volbackup.repo.crypto import recipients_from_lines

_SIZES = {"256K": 256 << 10, "512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20}
_PACK_SIZES = {f"{n}M": n << 20 for n in (4, 8, 16, 32, 64, 128)}


@click.command()
@repo_option
@click.option("--chunk-size", type=click.Choice(list(_SIZES)),
              help="Target chunk size (content-defined: chunks vary between a quarter and four "
                   "times it). Smaller finds more duplicates and makes more chunks (in a "
                   "chunked repository, more objects). Default: 256K packed, 1M chunked; "
                   "docs/performance.md has the measurements.")
@click.option("--chunker", type=click.Choice(["members", "stream"]), default="members",
              show_default=True,
              help="members: also cut where files start and end, grouping small files by "
                   "name (a changed small file rewrites its group only; in a packed "
                   "repository every file of 4 KiB or more is cut on its own); stream: "
                   "FastCDC over the stream alone (fewer, larger objects: faster for volumes "
                   "of large files). docs/performance.md has the measurements.")
@click.option("--layout", type=click.Choice([PACKED, CHUNKED]), default=DEFAULT_LAYOUT,
              show_default=True,
              help="packed: chunks put into pack objects (--pack-size) found through an "
                   "index, so that no backup lists the repository's data and a million "
                   "chunks are a few thousand objects; chunked: one object per chunk (what "
                   "init made before packed; those repositories work as they did). "
                   "docs/format.md has both.")
@click.option("--pack-size", type=click.Choice(list(_PACK_SIZES)), default="16M",
              show_default=True,
              help="Packed layout: a pack is closed past this size (larger: fewer objects "
                   "and requests; smaller: less rewritten by prune).")
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
def init(repo, chunk_size, chunker, layout, pack_size, recipients, recipients_file, key_file,
         s3, as_json):
    """Create a packed repository in REPO (an empty directory, or s3://BUCKET[/PREFIX]).

    A directory that does not exist is created (mode 0700) if its parent exists; every
    other command refuses a directory that does not exist.

    Snapshots in a packed or chunked repository share their data: what is already
    stored, from any volume or host, is not stored again. A repository without `init`
    keeps one .tar.zst archive per snapshot. `init` on a repository that has a config
    refuses.

    \b
    Examples:
      volbackup init -r /srv/backups
      volbackup init -r s3://my-backups/prod
      volbackup init -r /srv/backups --layout chunked
    """
    encrypt_to = list(recipients) + (recipients_from_lines(recipients_file)
                                     if recipients_file else [])
    if (recipients or recipients_file) and not encrypt_to:
        raise click.UsageError("--recipients-file holds no recipient")
    if key_file and not encrypt_to:
        raise click.UsageError("--key-file is for an encrypted repository: give --encrypt-to")
    result = create_repository(repo, InitOptions(
        _SIZES[chunk_size] if chunk_size else None,
        None if chunker == "members" else CHUNKER_PLAIN, layout,
        _PACK_SIZES[pack_size], encrypt_to or None, key_file, s3 or {}))
    if as_json:
        render.emit_json("init", **vars(result))
        return
    size = render.human_bytes(result.chunker['avg_size'] + result.chunker['min_size'])
    if result.created_directory:
        render.echo(f"created directory {result.repository} (mode 0700)")
    packs = f", packs of {render.human_bytes(result.pack_size)}" if result.pack_size else ""
    render.echo(f"created {'encrypted ' if result.recipients else ''}{result.layout} "
                f"repository {result.repository} (id {result.id}, chunks of about {size}"
                f"{packs})")
    if result.recipients:
        render.echo(f"encrypted to {len(result.recipients)} recipient(s); its key is in "
                    f"{result.key_file}: backup hosts need it (--key-file), and so does "
                    f"restore: append it to the identity file (cat {result.key_file} >> "
                    f"IDENTITY_FILE) and keep a copy offline")
    if result.existing_snapshots:
        render.echo(f"its {result.existing_snapshots} existing snapshots keep the archive "
                    f"layout and stay readable; new ones are {result.layout}")

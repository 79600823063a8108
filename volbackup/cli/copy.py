"""`volbackup copy`: snapshots into a second repository (the 3-2-1 rule's other copy)."""

from __future__ import annotations

import click

from volbackup.cli import render
from volbackup.cli.options import (host_option, json_option, lock_wait_option, repo_option,
                                   s3_write_options, secrets_options)
from volbackup.cli.progress import terminal_progress
from volbackup.cli.prune import broke_lock
from volbackup.ops import copy as ops
from volbackup.repo.repository import Repository
from volbackup.repo.sealing import Secrets


@click.command("copy")
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--all", "copy_all", is_flag=True, help="Every snapshot in REPO.")
@click.option("--volume", "volumes", multiple=True, metavar="VOLUME",
              help="Every snapshot of this volume (repeatable).")
@host_option
@repo_option
@click.option("--to", "to", required=True, metavar="REPO2", envvar="VOLBACKUP_COPY_TO",
              help="The repository to copy into: a directory or s3://BUCKET[/PREFIX]. "
                   "$VOLBACKUP_COPY_TO.")
@click.option("--to-key-file", metavar="FILE", envvar="VOLBACKUP_TO_KEY_FILE",
              type=click.Path(dir_okay=False),
              help="REPO2 is encrypted: its key file (written by its `init --encrypt-to`). "
                   "$VOLBACKUP_TO_KEY_FILE.")
@click.option("--allow-plain-target", is_flag=True,
              help="Let snapshots of an encrypted REPO be stored in a plain REPO2 (in the "
                   "clear).")
@lock_wait_option
@s3_write_options
@json_option
@secrets_options(reading=True)
def copy(snapshots, copy_all, volumes, host, repo, to, to_key_file, allow_plain_target,
         lock_wait, s3, as_json, secrets):
    """Copy snapshots into a second repository, ids and manifests kept.

    SNAPSHOT is an id or a volume name (its newest snapshot); or --all, or --volume
    (every snapshot of it); --host keeps those made on that host. Only what REPO2 lacks
    is sent, checked on the way; a snapshot REPO2 holds already is skipped, so running
    the same copy again copies nothing. --identity and --key-file are REPO's (when it
    is encrypted), --to-key-file is REPO2's.

    \b
    Examples:
      volbackup copy --all -r /srv/backups --to s3://offsite/prod
      volbackup copy pgdata -r /srv/backups --to /mnt/usb/backups --host db1
    """
    if snapshots and (copy_all or volumes):
        raise click.UsageError("name SNAPSHOTs, or --all or --volume (not both)")
    if not (snapshots or copy_all or volumes or host is not None):
        raise click.UsageError("name one or more SNAPSHOTs, or --all, --volume or --host")
    source = Repository.open(repo, secrets=secrets)
    target = Repository.open(to, writable=True, options=s3,
                             secrets=Secrets(key_file=to_key_file))
    choice = ops.Choice(list(snapshots), copy_all, list(volumes) or None, host)
    result = ops.copy(source, target, choice, lock_wait, allow_plain_target,
                      terminal_progress(), broke_lock)
    if as_json:
        render.emit_json("copy", source=result.source, target=result.target,
                         snapshots=[o.as_dict() for o in result.snapshots])
    else:
        render.results("copy", False, result.snapshots, _done, name=lambda o: o.snapshot)
    render.failures(result.snapshots)
    result.raise_for_failures()


def _done(o: ops.CopyOutcome) -> str:
    if o.how == "blobs":
        sent = (f"{o.chunks_sent} of {o.chunks} blobs sent, {o.chunks_present} present "
                f"({render.human_bytes(o.bytes_present or 0)})")
    else:
        sent = (f"{o.chunks_sent} of {o.chunks} chunks sent" if o.chunks
                else "archive written")
    if o.chunks_replaced:
        sent += (f" ({o.chunks_replaced} of them replaced: REPO2 held them with wrong "
                 f"bytes)")
    return (f"{o.snapshot}: copied ({render.human_bytes(o.bytes)}; {sent}, "
            f"{render.human_bytes(o.bytes_sent)} stored) in {o.seconds:.1f}s")

"""`volbackup restore`."""

from __future__ import annotations

import click

from volbackup.cli import complete, render
from volbackup.cli.options import (direct_option, host_option, json_option, repo_option,
                                   secrets_options)
from volbackup.cli.paths import path_options
from volbackup.cli.progress import quiet_option, terminal_progress
from volbackup.docker.engine import Engine
from volbackup.ops import restore as ops
from volbackup.repo.repository import Repository


@click.command()
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT]...",
                shell_complete=complete.snapshots)
@repo_option
@click.option("--as", "target", metavar="NAME", help="Restore into a volume of this name.")
@click.option("--force", is_flag=True,
              help="Replace an existing, non-empty target volume (its contents are "
                   "discarded, not merged).")
@click.option("--no-safety-snapshot", "safety", is_flag=True, default=True, flag_value=False,
              help="With --force: do not back a non-empty target up into REPO before it "
                   "is removed. Faster for huge volumes, but if the restore then fails, the "
                   "target's old contents are lost.")
@click.option("--all", "restore_all", is_flag=True,
              help="Restore the newest snapshot of every volume in REPO; skip targets "
                   "that exist and are not empty.")
@click.option("--trust-driver-options", "trust_options", is_flag=True,
              help="Also create volumes whose recorded driver options keep the data outside "
                   "the engine's volume area (a host path: o=bind,device=...; a device; "
                   "NFS/CIFS; a volume plugin). Without it they are refused (skipped by "
                   "--all): anyone who can write to REPO could point them at any host "
                   "directory. They are printed on stderr before they are created.")
@click.option("--drop-driver-options", "drop_options", is_flag=True,
              help="Create plain local volumes (driver local, no options), whatever driver "
                   "and options the snapshot records.")
@path_options
@host_option
@direct_option
@quiet_option
@json_option
@secrets_options(reading=True)
def restore(snapshots, repo, target, force, safety, restore_all, trust_options, drop_options,
            paths, host, use_direct, as_json, secrets):
    """Restore snapshots into fresh volumes.

    SNAPSHOT is a snapshot id (VOLUME@STAMP, as `list` prints it) or a volume name,
    which means that volume's newest snapshot (made on --host NAME, if given; not a
    safety snapshot, unless there is no other).

    --force first backs the target's old contents up into REPO as a safety snapshot,
    named in the output; `volbackup restore ID` brings them back.

    --include/--exclude restore part of a snapshot (PATH inside the volume): the
    entries under each --include, less those under an --exclude, with the directories
    above them (their owner and mode). In a packed or chunked repository only the chunks
    holding them are read. The target must still be a fresh (or --force replaced) volume.

    \b
    Examples:
      volbackup restore pgdata -r /srv/backups
      volbackup restore pgdata@20261129T031500Z-1a2b --as pgdata-copy -r /srv/backups
      volbackup restore --all -r /srv/backups
      volbackup restore pgdata --host db1 -r s3://my-backups/prod
      volbackup restore pgdata --include /conf --exclude conf/cache --as pgconf -r /srv/backups
    """
    if bool(snapshots) == restore_all:
        raise click.UsageError("name one or more SNAPSHOTs, or --all (not both)")
    if target and (restore_all or len(snapshots) > 1):
        raise click.UsageError("--as takes exactly one SNAPSHOT")
    if paths is not None and restore_all:
        raise click.UsageError("--include/--exclude name paths of given SNAPSHOTs, not --all")
    repository = Repository.open(repo, secrets=secrets)
    engine = Engine.connect()
    if trust_options and drop_options:
        raise click.UsageError("--trust-driver-options and --drop-driver-options exclude "
                               "each other")
    options = ops.RestoreOptions(force=force, safety=safety, use_direct=use_direct,
                                 trust_options=trust_options, drop_options=drop_options,
                                 paths=paths)
    result = ops.restore(engine, repository, list(snapshots), target, restore_all=restore_all,
                         host=host, options=options, progress=terminal_progress(),
                         announce=render.note)
    render.results("restore", as_json, result.volumes, lambda v: (
        f"{v.volume}: restored {_part(v)}from {v.snapshot}{_replaced(v)}, "
        f"{render.human_bytes(v.bytes)} in {v.seconds:.1f}s"), repository=result.repository)
    render.failures(result.volumes)
    result.raise_for_failures()


def _replaced(v) -> str:
    if not v.replaced:
        return ""
    if v.safety_snapshot:
        return f" (replaced; old contents in safety snapshot {v.safety_snapshot})"
    return " (replaced)"


def _part(v) -> str:
    return "part " if v.partial else ""

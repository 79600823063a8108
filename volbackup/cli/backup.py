"""`volbackup backup`."""

from __future__ import annotations

import click

from volbackup.cli import complete, render
from volbackup.cli.options import (direct_option, exclude_patterns, json_option, repo_option,
                                   s3_write_options, secrets_options)
from volbackup.cli.progress import quiet_option, terminal_progress
from volbackup.cli.run import scheduling_options
from volbackup.cli.selection import check_selection, quiesce_options, selection_options
from volbackup.docker.engine import Engine
from volbackup.ops import backup as ops
from volbackup.repo.repository import Repository


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...", shell_complete=complete.volumes)
@click.option("-c", "--container", metavar="NAME",
              help="Back up every volume and bind mount of this container (a bind of one "
                   "file: that file; of a socket, FIFO or device: skipped, with the reason).")
@selection_options
@quiesce_options
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Read a volume again this many times when its stream breaks.")
@click.option("-j", "--jobs", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Read this many volumes at once (volumes that share containers count as "
                   "one). Faster for many small volumes and through the engine; one large "
                   "volume already keeps every core busy.")
@click.option("--exclude-path", "exclude_paths", multiple=True, metavar="GLOB",
              callback=exclude_patterns,
              help="Leave out paths inside each volume that match GLOB (repeatable): `cache` "
                   "or `*.tmp` at any depth, `/var/cache` or `logs/**` from the volume root. "
                   "Recorded in the snapshot; see the user guide.")
@click.option("--read-all", is_flag=True,
              help="Read every file. By default a direct backup into a packed repository "
                   "does not read a file whose path, size, mode, owner, mtime, ctime and "
                   "inode match the parent snapshot (the files cache).")
@click.option("--parent", metavar="SNAPSHOT", shell_complete=complete.snapshots,
              help="The snapshot the files cache compares with (default: the newest of "
                   "the same volume from this host).")
@repo_option
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True,
              help="zstd compression level.")
@direct_option
@s3_write_options
@quiet_option
@json_option
@scheduling_options
@secrets_options(reading=False)
def backup(volumes, container, selection, quiesce, stop_timeout, retries, jobs, exclude_paths,
           read_all, parent, repo, level, use_direct, as_json, s3, schedule, secrets):
    """Back up volumes into REPO, one snapshot per volume.

    Container labels: volbackup.pre / volbackup.post run a command in the container
    before / after its volumes are read; volbackup.stop=true stops it like --stop.
    volbackup.exclude (on a volume, or on a container that uses it) adds --exclude-path
    patterns, separated by commas or newlines.

    \b
    Examples:
      volbackup backup pgdata -r /srv/backups
      volbackup backup --container db --stop -r /srv/backups --json
      volbackup backup --project shop --exclude shop_cache -r s3://my-backups/prod
      volbackup backup --all --stop --prune --keep-daily 7 --metrics-file /srv/volbackup.prom
      volbackup backup --all --jobs 4 -r /srv/backups
      volbackup backup gitlab-data --exclude-path cache --exclude-path '*.tmp' -r /srv/backups
    """
    selection.names = list(volumes)
    check_selection(selection, container)
    if read_all and parent:
        raise click.UsageError("--read-all and --parent exclude each other")
    repository = Repository.open(repo, writable=True, options=s3, secrets=secrets)
    engine = Engine.connect()
    options = ops.BackupOptions(level=level, quiesce=quiesce, stop_timeout=stop_timeout,
                                retries=retries, use_direct=use_direct, jobs=jobs,
                                exclude_paths=exclude_paths, read_all=read_all,
                                parent=parent)
    result = schedule.run(repository, lambda: ops.backup(
        engine, repository, container=container, selection=selection, options=options,
        progress=terminal_progress()))
    render.results("backup", as_json, result.volumes, lambda v: (
        f"{v.volume}: snapshot {v.snapshot}, {render.human_bytes(v.bytes)} -> "
        + (f"{render.human_bytes(v.stored_bytes)}" if v.chunks is None else
           f"{render.human_bytes(v.stored_bytes)} new ({v.new_chunks} of {v.chunks} chunks)")
        + f" in {v.seconds:.1f}s"
        + (f", {v.files_cache['files_reused']} unchanged files not read"
           if v.files_cache and v.files_cache["files_reused"] else "")
        + (f" ({v.message})" if v.message else "")), repository=result.repository)
    render.hook_failures(result.volumes)
    render.failures(result.volumes)
    schedule.raise_for_failures(result)

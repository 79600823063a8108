"""`volbackup migrate`."""

from __future__ import annotations

import click

from volbackup.cli import complete, render
from volbackup.cli.options import json_option
from volbackup.cli.progress import quiet_option, terminal_progress
from volbackup.cli.selection import check_selection, quiesce_options, selection_options
from volbackup.docker.engine import Engine
from volbackup.ops import migrate as ops


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...", shell_complete=complete.volumes)
@click.option("-c", "--container", metavar="NAME",
              help="Migrate every volume and bind mount of this container.")
@selection_options
@quiesce_options
@click.option("--to-host", metavar="URL",
              help="Target engine: unix:///path, tcp://HOST:PORT or ssh://USER@HOST.")
@click.option("--to-context", metavar="NAME", help="Target engine from a Docker context.")
@click.option("--from-host", metavar="URL",
              help="Source engine. Default: $DOCKER_HOST, else the local socket.")
@click.option("--from-context", metavar="NAME", help="Source engine from a Docker context.")
@click.option("--as", "target_name", metavar="NAME",
              help="Name of the volume on the target (one VOLUME only).")
@click.option("--force", is_flag=True,
              help="Replace an existing, non-empty target volume (removed and created "
                   "again: its contents are discarded, not merged).")
@click.option("--verify", is_flag=True,
              help="Read the new volume back and compare every entry with the source.")
@click.option("--wire-compression", type=click.Choice(ops.WIRE_CHOICES), default="auto",
              show_default=True,
              help="gzip the stream on the wire: auto does it only for a remote engine.")
@click.option("--trust-driver-options", "trust_options", is_flag=True,
              help="Also create volumes whose driver options keep the data outside the "
                   "target engine's volume area (o=bind,device=PATH; a device; NFS/CIFS; a "
                   "volume plugin). They are printed on stderr before they are created.")
@quiet_option
@json_option
def migrate(volumes, container, selection, quiesce, stop_timeout, to_host, to_context,
            from_host, from_context, target_name, force, verify, wire_compression,
            trust_options, as_json):
    """Copy volumes to another Docker engine, as fresh volumes with the same driver,
    options and labels. Nothing is written to disk on the way.

    \b
    Examples:
      volbackup migrate pgdata --to-host ssh://admin@new-host --verify
      volbackup migrate --container db --to-context new-host
    """
    selection.names = list(volumes)
    check_selection(selection, container)
    if bool(to_host) == bool(to_context):
        raise click.UsageError("name the target with --to-host URL or --to-context NAME")
    if from_host and from_context:
        raise click.UsageError("--from-host and --from-context exclude each other")
    if target_name and (container or len(volumes) != 1 or selection.matches_host):
        raise click.UsageError("--as takes exactly one VOLUME")
    source = Engine.connect(from_host, from_context)
    target = Engine.connect(to_host, to_context)
    options = ops.MigrateOptions(force=force, verify=verify, wire=wire_compression,
                                 quiesce=quiesce, stop_timeout=stop_timeout,
                                 trust_options=trust_options)
    result = ops.migrate(source, target, [], container, target_name, selection=selection,
                         options=options, progress=terminal_progress(), announce=render.note)
    render.results("migrate", as_json, result.volumes, lambda v: (
        f"{v.source_volume} -> {v.volume}: migrated{' (replaced)' if v.replaced else ''}"
        f"{', verified' if v.verified else ''}, {render.human_bytes(v.bytes)} in "
        f"{v.seconds:.1f}s"), name=lambda v: v.source_volume,
        source=result.source, target=result.target)
    render.failures(result.volumes)
    result.raise_for_failures()

"""`volbackup export` and `volbackup import`."""

from __future__ import annotations

import sys

import click

from volbackup.cli import complete, render
from volbackup.cli.options import (host_option, json_option, lock_wait_option, repo_option,
                                   s3_write_options, secrets_options)
from volbackup.cli.progress import quiet_option, terminal_progress
from volbackup.ops import transfer as ops
from volbackup.repo.manifest import VOLUME_NAME
from volbackup.repo.repository import Repository


@click.command("export")
@click.argument("snapshot", shell_complete=complete.snapshots)
@repo_option
@click.option("-o", "--output", "output", required=True, metavar="FILE",
              help="Where the .tar.zst goes; - is stdout (not a terminal).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True,
              help="zstd compression level.")
@host_option
@quiet_option
@json_option
@secrets_options(reading=True)
def export(snapshot, repo, output, force, level, host, as_json, secrets):
    """Write a snapshot as one .tar.zst that stock zstd and tar extract.

    SNAPSHOT is a snapshot id or a volume name (its newest snapshot, as `restore`
    means it). The archive is checked while it is written and FILE appears only when
    every check passed: `zstd -dc FILE | tar -C DIR -x` (or `tar --zstd -xf FILE`)
    gives the volume's contents.

    \b
    Examples:
      volbackup export pgdata -r /srv/backups -o pgdata.tar.zst
      volbackup export pgdata@20261129T031500Z-1a2b -r s3://my-backups/prod -o - | ssh far 'cat > pg.tar.zst'
    """
    if output == "-":
        if as_json:
            raise click.UsageError("--json prints on stdout, where -o - writes the archive")
        if sys.stdout.isatty():
            raise click.UsageError("refusing to write an archive to a terminal (-o FILE, or "
                                   "redirect stdout)")
    repository = Repository.open(repo, secrets=secrets)
    target = sys.stdout.buffer if output == "-" else output
    result = ops.export_snapshot(repository, snapshot, target, force, level, host,
                                 terminal_progress())
    if as_json:
        render.emit_json("export", **vars(result))
        return
    render.echo(f"{result.file or 'stdout'}: exported {result.snapshot}, "
                f"{render.human_bytes(result.bytes)} (tar {render.human_bytes(result.tar_bytes)}),"
                f" sha256 {result.sha256}", err=output == "-")


class _Label(click.ParamType):
    name = "k=v"

    def convert(self, value, param, ctx):
        key, sep, val = value.partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key, val


def _volume_name(ctx, param, value):
    if value is not None and not VOLUME_NAME.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a volume name ([A-Za-z0-9][A-Za-z0-9_.-]*)")
    return value


@click.command("import")
@click.argument("file", type=click.File("rb", lazy=False))
@repo_option
@click.option("--volume", required=True, metavar="NAME", callback=_volume_name,
              shell_complete=complete.volumes,
              help="The volume the snapshot is of (restore creates it under this name).")
@click.option("--strip-components", "strip", type=click.IntRange(0, 64), default=0,
              show_default=True, metavar="N",
              help="Drop the first N components of every member's name, as GNU tar does "
                   "(2 for offen/docker-volume-backup's backup/NAME/...).")
@click.option("--label", "labels", type=_Label(), multiple=True, metavar="KEY=VALUE",
              help="A label of the volume (repeatable); restore creates it with them.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True,
              help="zstd compression level.")
@lock_wait_option
@s3_write_options
@quiet_option
@json_option
@secrets_options(reading=False)
def import_(file, repo, volume, strip, labels, level, lock_wait, s3, as_json, secrets):
    """Make a snapshot of a tar archive another tool wrote (plain, gzip, bzip2, xz, zstd).

    FILE (- reads stdin) is told apart by its first bytes, not its name. Its members
    become the volume's contents: the first is the volume root `./` (one is made, 0755,
    if FILE has none). Anything else than a whole tar with members inside the volume is
    refused (exit 16) and no snapshot is made.

    \b
    Examples:
      volbackup import pgdata.tar.zst --volume pgdata -r /srv/backups
      volbackup import backup-2026-11-29.tar.gz --volume app_data --strip-components 2 -r /srv/backups
      docker run --rm -v data:/volume loomchild/volume-backup backup - \
        | volbackup import - --volume data -r /srv/backups
    """
    if file.isatty():
        raise click.UsageError("refusing to read an archive from a terminal (give FILE, or "
                               "redirect stdin)")
    repository = Repository.open(repo, writable=True, options=s3, secrets=secrets)
    name = "stdin" if file.name == "<stdin>" else file.name
    with file:
        result = ops.import_archive(repository, file, volume, strip, dict(labels), level,
                                    lock_wait, terminal_progress(), name=name)
    if as_json:
        render.emit_json("import", **vars(result))
        return
    added = ", root ./ added" if result.root_added else ""
    render.echo(f"{result.volume}: snapshot {result.snapshot} from a {result.format} archive "
                f"of {result.members} members ({result.entries} entries{added}), "
                f"{render.human_bytes(result.bytes)} -> {render.human_bytes(result.stored_bytes)}"
                f" in {result.seconds:.1f}s")

"""`volbackup ls`, `volbackup dump` and `volbackup diff`."""

from __future__ import annotations

import json
import stat
import sys

import click

from volbackup.cli import render
from volbackup.cli.options import host_option, json_option, repo_option, secrets_options
from volbackup.ops import browse as ops
from volbackup.repo.repository import Repository
from volbackup.stream.catalog import CatalogEntry, normal_path
from volbackup.timefmt import utc_text

_TYPE_CHAR = {"file": "-", "dir": "d", "symlink": "l", "hardlink": "h", "char": "c",
              "block": "b", "fifo": "p", "other": "?"}


def _path(ctx, param, value):
    """A path inside the volume; `..` or a NUL is a usage error (exit 2)."""
    if value is None:
        return value
    try:
        return normal_path(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def shown(path: str) -> str:
    """A catalogue path as text output shows it: from the volume's root, `/` the root."""
    return "/" if path == "." else f"/{path}"


def _json_line(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")


def _envelope(command: str, **fields) -> dict:
    return {"volbackup_json": render.JSON_VERSION, "command": command, **fields}


def long_line(e: CatalogEntry) -> str:
    mode = stat.filemode(e.mode)[1:]
    mtime = utc_text(e.mtime)
    link = f" -> {e.link}" if e.link else ""
    return (f"{_TYPE_CHAR.get(e.type, '?')}{mode} {e.uid:>5}/{e.gid:<5} {e.size:>12} "
            f"{mtime} {shown(e.path)}{link}")


@click.command("ls")
@click.argument("snapshot")
@click.argument("path", required=False, default=".", callback=_path)
@repo_option
@click.option("-l", "--long", "long_format", is_flag=True,
              help="Type and mode, uid/gid, size, mtime (UTC), path, and `-> TARGET` of a "
                   "link.")
@host_option
@json_option
@secrets_options(reading=True)
def ls_cmd(snapshot, path, repo, long_format, host, as_json, secrets):
    """List the entries of a snapshot, at and under PATH (default: all).

    SNAPSHOT is a snapshot id or a volume name (its newest snapshot). PATH is a path
    inside the volume (`/etc/app.conf`, `etc`); a file lists just itself. Entries come in
    the order the snapshot holds them, read from its catalogue (no data is read).
    --json prints JSON lines: the envelope first, then one entry a line.

    \b
    Examples:
      volbackup ls pgdata -r /srv/backups
      volbackup ls pgdata@20261129T031500Z-1a2b /etc --long -r /srv/backups
    """
    repository = Repository.open(repo, secrets=secrets)
    listing = ops.ls(repository, snapshot, path, host)
    first = True
    for entry in listing.entries:
        if as_json and first:  # not before: an unknown PATH prints nothing on stdout
            _json_line(_envelope("ls", snapshot=listing.snapshot, volume=listing.volume,
                                 path=listing.path))
        first = False
        if as_json:
            _json_line({k: v for k, v in entry.as_dict().items() if k not in ("at", "data")})
        else:
            render.echo(long_line(entry) if long_format else shown(entry.path))


@click.command("dump")
@click.argument("snapshot")
@click.argument("path", callback=_path)
@repo_option
@click.option("-o", "--output", "output", default="-", show_default=True, metavar="FILE",
              help="Where the bytes go; - is stdout. FILE appears only whole and checked.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@host_option
@secrets_options(reading=True)
def dump(snapshot, path, repo, output, force, host, secrets):
    """Write one file of a snapshot, or a directory as a tar stream.

    A regular file gives its bytes (a hard link: its target's); a directory, or `/` (the
    whole volume), a tar stream of it, with the directories above it. A symbolic link,
    a device or a fifo is refused (exit 1; the message says where a link points).
    Everything is checked against the snapshot as it is read; on stdout the last piece
    is held back until it was: a reader of a failed dump sees a short output and a
    non-zero exit code. In a packed or chunked repository only the chunks holding PATH
    are read.

    \b
    Examples:
      volbackup dump pgdata /etc/app.conf -r /srv/backups > app.conf
      volbackup dump pgdata /etc -r /srv/backups | tar -t
      volbackup dump pgdata@20261129T031500Z-1a2b / -r /srv/backups -o pgdata.tar
    """
    repository = Repository.open(repo, secrets=secrets)
    target = sys.stdout.buffer if output == "-" else output
    result = ops.dump(repository, snapshot, path, target, force, host)
    if result.file is not None:
        render.echo(f"{result.file}: {shown(result.path)} of {result.snapshot}, "
                    f"{render.human_bytes(result.bytes)}"
                    f"{' (tar)' if result.type == 'dir' else ''}")


@click.command("diff")
@click.argument("old")
@click.argument("new")
@repo_option
@host_option
@json_option
@secrets_options(reading=True)
def diff(old, new, repo, host, as_json, secrets):
    """Show what changed from snapshot OLD to snapshot NEW.

    One line an entry: `+` added, `-` removed, `M` modified (what changed: type, content
    (sha256), mode, owner, link; sizes old -> new), then a summary. The mtime alone is no
    change. OLD and NEW may be of different volumes. --json prints JSON lines: the
    envelope, one change a line, then the summary.

    \b
    Examples:
      volbackup diff pgdata@20261128T031500Z-9f8e pgdata -r /srv/backups
    """
    repository = Repository.open(repo, secrets=secrets)
    result = ops.diff(repository, old, new, host)
    if as_json:
        _json_line(_envelope("diff", old=result.old, new=result.new))
    for change in result.changes:
        if as_json:
            _json_line(change.as_dict())
        else:
            render.echo(_change_line(change))
    s = result.summary
    if as_json:
        _json_line({"summary": vars(s)})
        return
    render.echo(f"{s.added} added, {s.removed} removed, {s.modified} modified; "
                f"{render.human_bytes(s.bytes_added)} added, "
                f"{render.human_bytes(s.bytes_removed)} removed")


def _change_line(c: ops.Change) -> str:
    if c.kind == "+":
        return f"+    {shown(c.path)}"
    if c.kind == "-":
        return f"-    {shown(c.path)}"
    sizes = (f"; {render.human_bytes(c.old_size or 0)} -> {render.human_bytes(c.new_size or 0)}"
             if c.old_size != c.new_size else "")
    return f"M    {shown(c.path)} ({', '.join(c.what)}{sizes})"

"""`volbackup prune`, `volbackup unlock` and `volbackup repair-index`: repository
maintenance."""

from __future__ import annotations

import click

from volbackup.cli import complete, render
from volbackup.cli.progress import info, quiet_option, terminal_progress
from volbackup.cli.options import (
    Duration,
    host_option,
    json_option,
    keep_options,
    lock_wait_option,
    repo_option,
    secrets_options,
)
from volbackup.errors import IntegrityError
from volbackup.ops import prune as ops
from volbackup.ops.repair import RepairIndexOptions, repair_index as rebuild
from volbackup.repo.repository import Repository


def broke_lock(lock, why) -> None:
    render.warn(f"broke a stale lock ({lock.describe()}): {why}")


@click.command()
@repo_option
@keep_options
@click.option("--volume", "volumes", multiple=True, metavar="VOLUME",
              shell_complete=complete.repo_volumes,
              help="Only this volume's snapshots (repeatable). Default: every volume.")
@host_option
@click.option("--group-by-volume-only", is_flag=True,
              help="Decide per volume across hosts, not per (host, volume).")
@click.option("--allow-remove-newest", is_flag=True,
              help="Let the rules remove even the newest snapshot of a volume.")
@click.option("--leftover-age", type=Duration(), default="6h", show_default=True,
              metavar="DURATION",
              help="Remove archives without a manifest, and unfinished writes of killed runs "
                   "(temp files, S3 multipart uploads; see `cleanup`), once this old.")
@click.option("--wait-for-backups", type=Duration(), default="10m", show_default=True,
              metavar="DURATION",
              help="Packed repositories: how long to wait for the backups that were running "
                   "when prune planned its deletions; past it, prune stops (exit 0) and the "
                   "next prune finishes the plan.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@lock_wait_option
@quiet_option
@json_option
@secrets_options(reading=False)
def prune(repo, rules, volumes, host, group_by_volume_only, allow_remove_newest, leftover_age,
          wait_for_backups, dry_run, lock_wait, as_json, secrets):
    """Remove the snapshots that no --keep-* rule keeps, per volume and host.

    A snapshot dated in the future (clock skew) is kept, with a warning, and not counted
    by the rules. In a packed repository backups go on while prune runs: prune waits for
    those that were running when it planned what to delete (--wait-for-backups). An
    encrypted repository needs its --key-file: only snapshots whose MAC checks out are
    counted; a manifest that fails is reported, left alone, and makes prune exit 6.

    \b
    Examples:
      volbackup prune -r /srv/backups --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      volbackup prune -r s3://backups/prod --keep-within 14d --dry-run --json
    """
    if rules.empty:
        raise click.UsageError("give at least one --keep-* rule (prune never removes "
                               "everything)")
    options = ops.PruneOptions(rules, volumes=list(volumes), host=host,
                               by_host=not group_by_volume_only,
                               allow_remove_newest=allow_remove_newest, dry_run=dry_run,
                               leftover_age=leftover_age, lock_wait=lock_wait,
                               wait_for_backups=wait_for_backups)
    result = ops.prune(Repository.open(repo, writable=not dry_run, secrets=secrets), options,
                       broke_lock,
                       progress=terminal_progress())
    sweep = result.chunks
    for problem in result.problems + result.warnings + (sweep.problems if sweep else []):
        render.warn(problem)
    if as_json:
        render.emit_json("prune", repository=result.repository, dry_run=result.dry_run,
                         rules=result.rules, snapshots=[d.as_dict() for d in result.snapshots],
                         leftovers=[o.as_dict() for o in result.leftovers],
                         problems=result.problems, future_dated=result.future_dated,
                         unauthentic=result.unauthentic,
                         chunks=sweep.as_dict() if sweep else None)
    else:
        for d in result.snapshots:
            render.echo(f"{d.snapshot}: {d.status} ({d.reason})"
                        + (f": {d.message}" if d.message else ""))
        for o in result.leftovers:
            why = f" ({o.reason})" if o.status == ops.Status.KEPT else ""
            size = "?" if o.bytes is None else render.human_bytes(o.bytes)
            render.echo(f"{o.key}: {o.status}{why} ({o.kind} left by an interrupted run, "
                        f"{size})" + (f": {o.message}" if o.message else ""))
        if sweep is not None:
            render.echo(f"chunks: {sweep.stored} stored, {sweep.referenced} in use, "
                        f"{sweep.removed} {'to remove' if dry_run else 'removed'}"
                        + (f", {sweep.too_young} unused kept (younger than --leftover-age)"
                           if sweep.too_young else "")
                        + (f", {sweep.failed} failed" if sweep.failed else ""))
            packs = getattr(sweep, "packs_removed", None)
            if packs is not None:
                render.echo(f"packs: {sweep.packs} stored, {packs} "
                            f"{'to remove' if dry_run else 'removed'}, "
                            f"{sweep.packs_repacked} {'to repack' if dry_run else 'repacked'}"
                            f" into {sweep.packs_written}, {sweep.unindexed_removed} "
                            f"unindexed {'to remove' if dry_run else 'removed'}")
        verb = "would free" if dry_run else "freed"
        info(f"{len(result.snapshots) - len(result.removed)} kept, {len(result.removed)} "
             f"{'to remove' if dry_run else 'removed'}; {verb} "
             f"{render.human_bytes(result.freed_bytes)}", prefix="")
    result.raise_for_failures()


@click.command()
@repo_option
@click.option("--all", "remove_all", is_flag=True,
              help="Remove every lock, also those of runs that may still be going.")
@json_option
def unlock(repo, remove_all, as_json):
    """Remove the stale locks of REPO (of runs that died), and list the live ones.

    \b
    Examples:
      volbackup unlock -r /srv/backups
      volbackup unlock -r s3://backups/prod --all
    """
    repository = Repository.open(repo, writable=True)
    result = repository.unlock(remove_all)
    if as_json:
        render.emit_json("unlock", repository=repository.describe(), locks=[
            {**lock.__dict__, "removed": why is not None, "reason": why} for lock, why in result])
        return
    for lock, why in result:
        render.echo(f"{lock.key}: " + (f"removed ({why})" if why else "kept (its run may "
                                       "still be going; --all removes it)") + f": {lock.describe()}")
    if not result:
        render.echo("no locks", err=True)


@click.command("repair-index")
@repo_option
@click.option("--read-all-packs", is_flag=True,
              help="Ignore the index there is and read the trailer of every pack (slower: "
                   "one or two ranged reads a pack).")
@click.option("--dry-run", is_flag=True,
              help="Only say what the new index would name; write and remove nothing.")
@lock_wait_option
@quiet_option
@json_option
@secrets_options(reading=False)
def repair_index(repo, read_all_packs, dry_run, lock_wait, as_json, secrets):
    """Rebuild a packed repository's index from its packs: index objects lost, damaged
    or naming packs that are gone. Takes the exclusive lock, as prune does.

    \b
    Examples:
      volbackup repair-index -r s3://backups/prod --dry-run
      volbackup repair-index -r /srv/backups --read-all-packs
    """
    options = RepairIndexOptions(read_all_packs=read_all_packs, dry_run=dry_run,
                                 lock_wait=lock_wait)
    repository = Repository.open(repo, writable=not dry_run, secrets=secrets)
    result = rebuild(repository, options, broke_lock, progress=terminal_progress())
    for found in result.damaged_index:
        render.warn(f"{found} ({'would be' if dry_run else 'now'} rebuilt from the packs)")
    for problem in result.problems:
        render.warn(problem)
    if as_json:
        render.emit_json("repair-index", repository=repository.describe(), **result.as_dict())
    else:
        verb = "would name" if dry_run else "names"
        render.echo(f"the index {verb} {result.blobs:,} blobs in {result.packs:,} packs "
                    f"({result.from_index:,} packs as indexed, {result.from_trailers:,} read "
                    f"from their trailers); {result.index_written} index objects written, "
                    f"{result.index_removed} removed")
        if result.plans_dropped:
            render.echo(f"{result.plans_dropped} plan(s) of killed prunes dropped: the next "
                        f"prune judges their packs again")
        if result.lost_packs:
            render.warn(f"{result.lost_packs} packs the old index named are gone "
                        f"({result.lost_blobs:,} blobs): the snapshots that used them are "
                        f"damaged; `volbackup verify --all` names them")
    if result.problems:
        raise IntegrityError(f"repair-index: {len(result.problems)} problem(s), the first: "
                             f"{result.problems[0]}")
    if result.lost_packs:
        raise IntegrityError(f"repair-index: {result.lost_packs} packs are gone; the index "
                             f"no longer names them")

"""`volbackup list`, `show` and `verify`: read-only commands on a repository."""

from __future__ import annotations

import click

from volbackup.cli import complete, render
from volbackup.cli.options import host_option, json_option, repo_option, secrets_options
from volbackup.cli.progress import quiet_option, terminal_progress
from volbackup.errors import IntegrityError
from volbackup.ops import snapshots as ops
from volbackup.repo.repository import Repository

LIST_FIELDS = ("snapshot", "volume", "created", "host", "bytes", "stored_bytes", "sha256")


@click.command("list")
@click.argument("volume", required=False, shell_complete=complete.repo_volumes)
@repo_option
@host_option
@json_option
@secrets_options(reading=False)
def list_cmd(volume, repo, host, as_json, secrets):
    """List snapshots, oldest first (of one VOLUME, or of all; of one --host, or of all).

    An encrypted repository with --key-file: only the snapshots whose MAC checks out;
    the other manifests are reported (decide on this listing only with the key).
    """
    repository = Repository.open(repo, secrets=secrets, refuse_plain=False)
    listing = ops.list_snapshots(repository, volume, host)
    for problem in listing.problems + listing.unauthentic:
        render.warn(problem)
    if as_json:
        rows = [{k: m.to_dict()[k] for k in LIST_FIELDS} for m in listing.snapshots]
        render.emit_json("list", snapshots=rows,
                         problems=[{"volume": p.volume, "message": p.message}
                                   for p in listing.problems],
                         authenticated=listing.authenticated,
                         unauthentic=[{"volume": p.volume, "snapshot": p.snapshot,
                                       "message": p.message} for p in listing.unauthentic])
        return
    if not listing.snapshots:
        render.echo(("no snapshots" if volume or host is not None or listing.problems
                      else "no snapshots yet")
                     + (f" of volume {volume}" if volume else "")
                     + (f" from host {host}" if host is not None else "")
                     + f" in repository {repository.describe()}", err=True)
        return
    width = max(len(m.snapshot) for m in listing.snapshots)
    render.echo(f"{'SNAPSHOT':<{width}}  {'CREATED (UTC)':<24}  {'HOST':<16}  {'SIZE':>10}  {'STORED':>10}")
    for m in listing.snapshots:
        render.echo(f"{m.snapshot:<{width}}  {m.created:<24}  {m.host[:16]:<16}  "
                    f"{render.human_bytes(m.bytes):>10}  {render.human_bytes(m.stored_bytes):>10}")


@click.command()
@click.argument("snapshot", shell_complete=complete.snapshots)
@repo_option
@json_option
def show(snapshot, repo, as_json):
    """Show a snapshot's manifest (SNAPSHOT: an id, or a volume name for its newest)."""
    manifest = ops.show(Repository.open(repo), snapshot)
    if as_json:
        render.emit_json("show", manifest=manifest.to_dict())
        return
    for key, value in manifest.to_dict().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):  # excluded: the patterns (--json gives them exactly)
            value = "  ".join(value) or "-"
        render.echo(f"{key + ':':<18}{'-' if value is None else value}")


@click.command()
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT]...",
                shell_complete=complete.snapshots)
@click.option("--all", "verify_all", is_flag=True, help="Verify every snapshot in REPO.")
@click.option("--packs", "check_packs", is_flag=True,
              help="Packed repository: read every pack and check it against its name, its "
                   "trailer and the index, and the index against the packs (no identity "
                   "needed); alone, or before the snapshots named.")
@repo_option
@quiet_option
@json_option
@secrets_options(reading=True)
def verify(snapshots, verify_all, check_packs, repo, as_json, secrets):
    """Read archives in full and check sha256, zstd checksum and tar structure."""
    if snapshots and verify_all or not (snapshots or verify_all or check_packs):
        raise click.UsageError("name one or more SNAPSHOTs, or --all (not both), or --packs")
    repository = Repository.open(repo, secrets=secrets)
    packs = ops.verify_packs(repository, terminal_progress()) if check_packs else None
    if packs is not None and not (snapshots or verify_all):
        _report_packs(packs, as_json, repository.describe())
        return
    result = ops.verify(repository, list(snapshots), verify_all, terminal_progress())
    if packs is not None and not as_json:   # in the JSON below otherwise
        _report_packs(packs, False, repository.describe(), fail=False)
    if as_json:
        render.emit_json("verify", repository=result.repository,
                         snapshots=[c.as_dict() for c in result.snapshots],
                         **({"packs": packs.as_dict()} if packs is not None else {}))
    else:
        for c in result.snapshots:
            if not c.failed:
                render.echo(f"{c.snapshot}: ok ({render.human_bytes(c.bytes)}, "
                            f"{c.entries} entries)")
    render.failures(result.snapshots, ops.snapshot_name)
    result.raise_for_failures()
    if packs is not None and packs.problems:
        raise IntegrityError(f"{len(packs.problems)} problems with the packs and index of "
                             f"{repository.describe()}")


def _report_packs(packs, as_json: bool, repository: str, fail: bool = True) -> None:
    """What `verify --packs` found; with `fail`, exit 6 if anything is wrong."""
    if as_json:
        render.emit_json("verify", repository=repository, packs=packs.as_dict())
    else:
        for problem in packs.problems:
            render.warn(problem)
        render.echo(f"packs: {packs.packs} checked ({render.human_bytes(packs.bytes)}), "
                    f"{packs.blobs} blobs indexed, {packs.duplicated} stored twice, "
                    f"{packs.unindexed} packs unindexed (prune removes them), "
                    f"{len(packs.prune_plans)} prune plans pending"
                    + (f" ({packs.doomed_packs} packs to delete: a later prune finishes "
                       f"them)" if packs.prune_plans else "")
                    + f", {len(packs.problems)} problems")
    if fail and packs.problems:
        raise IntegrityError(f"{len(packs.problems)} problems with the packs and index of "
                             f"{repository}")

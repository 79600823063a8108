"""`volbackup run --config FILE`, and the scheduling options that `backup` shares with it."""

from __future__ import annotations

import functools

import click

from volbackup.cli import render
from volbackup.cli.options import json_option, keep_options, lock_wait_option
from volbackup.cli.progress import info, quiet_option, terminal_progress
from volbackup.docker.engine import Engine
from volbackup.ops import notify
from volbackup.runner import config
from volbackup.runner import run as ops


def _say(message: str) -> None:
    info(message)


def _check_notify_urls(ctx, param, values):
    """https:// (a JSON POST) or a URL apprise understands; the message never repeats the URL
    (its path or query often holds a token)."""
    for url in values:
        problem = notify.check_url(url)
        if problem:
            raise click.BadParameter(problem, param=param)
    return list(values)


def scheduling_options(command):
    """--prune with --keep-*, --lock-wait, --metrics-file, --notify-url, --notify.

    The command gets one `schedule` (volbackup.runner.run.Schedule); it calls
    `result = schedule.run(repository, lambda: ops.backup(...))` instead of `ops.backup(...)`
    and, after rendering, `schedule.raise_for_failures(result)`.
    """

    @click.option("--prune", "prune_after", is_flag=True,
                  help="After a fully successful backup, apply the --keep-* rules to the "
                       "volumes backed up (their snapshots from this host; never the ones "
                       "this run made, and future-dated ones are kept with a warning).")
    @keep_options
    @lock_wait_option
    @click.option("--metrics-file", metavar="PATH",
                  help="Write Prometheus text-format metrics of the run to PATH (atomically).")
    @click.option("--notify-url", "notify_urls", metavar="URL", multiple=True,
                  callback=_check_notify_urls,
                  help="Report the run (on failure, or always with --notify always) to URL: "
                       "https://... gets the JSON summary POSTed; ntfy://, slack://, "
                       "discord://, tgram://, mailto://, gotify://, json:// ... (any apprise "
                       "URL) get a message. Repeatable. Messages show only its scheme and host.")
    @click.option("--notify", type=click.Choice(["failure", "always"]), default="failure",
                  show_default=True, help="When to notify --notify-url.")
    @functools.wraps(command)
    def wrapper(*args, prune_after, rules, lock_wait, metrics_file, notify_urls, notify,
                **kw):
        if prune_after and rules.empty:
            raise click.UsageError("--prune needs at least one --keep-* rule")
        if not prune_after and not rules.empty:
            raise click.UsageError("--keep-* rules go with --prune")
        schedule = ops.Schedule("backup", rules if prune_after else None, False, lock_wait,
                                metrics_file, notify_urls, notify, render.warn, _say,
                                terminal_progress())
        return command(*args, schedule=schedule, **kw)

    return wrapper


@click.command()
@click.option("--config", "config_file", required=True, metavar="FILE",
              type=click.Path(dir_okay=False), help="The TOML file describing the jobs.")
@click.option("--job", "job_names", multiple=True, metavar="NAME",
              help="Run only this job (repeatable). Default: every job, in file order.")
@click.option("--check", is_flag=True, help="Only read and check the config file.")
@quiet_option
@json_option
def run(config_file, job_names, check, as_json):
    """Run the backup jobs of a config file: lock, back up, prune, report.

    \b
    Examples:
      volbackup run --config /etc/volbackup.toml
      volbackup run --config /etc/volbackup.toml --job db --json
      volbackup run --config /etc/volbackup.toml --check
    """
    jobs = config.load(config_file)
    known = [j.name for j in jobs]
    missing = [n for n in job_names if n not in known]
    if missing:
        raise click.BadParameter(f"no job {missing[0]!r} in {config_file} (jobs: "
                                 f"{', '.join(known)})", param_hint="--job")
    if job_names:
        jobs = [j for j in jobs if j.name in job_names]
    if check:
        for j in jobs:
            what = ", ".join(j.volumes) if j.volumes else f"container {j.container}"
            render.echo(f"{j.name}: {what} -> {j.repository}; keep: "
                        f"{j.keep.describe() if j.keep else 'everything (no prune)'}")
        return
    result = ops.run_jobs(Engine.connect, jobs, terminal_progress(), render.warn, _say)
    if as_json:
        render.emit_json("run", jobs=result.jobs)
    else:
        for summary in result.jobs:
            for v in summary["volumes"]:
                if v["status"] == "skipped":
                    render.echo(f"{summary['job']}: {v['volume']}: skipped: {v['message']}")
                elif v["status"] != "failed":
                    render.echo(f"{summary['job']}: {v['volume']}: snapshot {v['snapshot']}, "
                                f"{render.human_bytes(v['bytes'])} -> "
                                f"{render.human_bytes(v['stored_bytes'])} in {v['seconds']:.1f}s")
    for name, error in result.errors:
        if len(result.jobs) > 1:
            render.echo(f"volbackup: job {name}: failed: {error}", err=True)
    result.raise_for_failures()

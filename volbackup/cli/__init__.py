"""The command line: `main()` parses, dispatches, and turns errors into exit codes.

Commands are thin (options, one call into volbackup.ops, render). No command catches
exceptions: this module maps every VolbackupError to its one-line message and exit code.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
from click.utils import PacifyFlushWrapper

from volbackup import __version__
from volbackup.cli import backup as backup_cmd
from volbackup.cli import browse as browse_cmd
from volbackup.cli import cleanup as cleanup_cmd
from volbackup.cli import doctor as doctor_cmd
from volbackup.cli import copy as copy_cmd
from volbackup.cli import extract as extract_cmd
from volbackup.cli import init as init_cmd
from volbackup.cli import migrate as migrate_cmd
from volbackup.cli import prune as prune_cmd
from volbackup.cli import render
from volbackup.cli import restore as restore_cmd
from volbackup.cli import run as run_cmd
from volbackup.cli import snapshots as snapshots_cmd
from volbackup.cli import transfer as transfer_cmd
from volbackup.cli.progress import quiet_option
from volbackup.errors import USAGE_EXIT_CODE, Interrupted, VolbackupError
from volbackup.malloc import use_one_arena
from volbackup.signals import Terminated, handled
from volbackup.urls import scrub


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Print a traceback with errors.")
@quiet_option
@click.version_option(__version__, prog_name="volbackup")
def cli(debug: bool) -> None:
    """Back up, restore, verify and migrate Docker volumes (zstd-compressed tar archives).

    Exit codes: 0 ok, 1 failure, 2 usage, 3 some volumes failed; docs/exit-codes.md
    lists them all.
    """


cli.add_command(init_cmd.init)
cli.add_command(backup_cmd.backup)
cli.add_command(restore_cmd.restore)
cli.add_command(migrate_cmd.migrate)
for command in (snapshots_cmd.list_cmd, snapshots_cmd.show, snapshots_cmd.verify,
                cleanup_cmd.cleanup, prune_cmd.prune, prune_cmd.unlock, run_cmd.run,
                transfer_cmd.export, transfer_cmd.import_, doctor_cmd.doctor,
                copy_cmd.copy, browse_cmd.ls_cmd, browse_cmd.dump, browse_cmd.diff,
                extract_cmd.extract):
    cli.add_command(command)


PIPE_CLOSED_EXIT_CODE = 141


def _error(message: str) -> None:
    render.echo(f"volbackup: error: {message}", err=True)  # control characters escaped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    use_one_arena()  # before zstd starts its threads: keeps peak RSS flat (volbackup.malloc)
    debug = "--debug" in argv or os.environ.get("VOLBACKUP_DEBUG") == "1"
    with handled():  # SIGTERM unwinds like Ctrl-C (volbackup.signals)
        return _main(argv, debug)


def _main(argv: list[str], debug: bool) -> int:
    try:
        result = cli.main(args=argv, prog_name="volbackup", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.ClickException as e:
        e.show()
        return e.exit_code if e.exit_code else USAGE_EXIT_CODE
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        cause = e if isinstance(e, KeyboardInterrupt) else e.__context__
        if debug:
            traceback.print_exc()
        _error("interrupted by SIGTERM" if isinstance(cause, Terminated) else "interrupted")
        return Interrupted.exit_code
    except VolbackupError as e:
        if debug:
            traceback.print_exc()
        _error(str(e))
        return e.exit_code
    except SystemExit:
        # click met EPIPE, the reader having gone away (`volbackup ls ... | head`), and
        # quietened stdout: end as the shell's own commands do (SIGPIPE: 128 + 13)
        if isinstance(sys.stdout, PacifyFlushWrapper):
            return PIPE_CLOSED_EXIT_CODE
        raise
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        _error(f"unexpected {type(e).__name__}: {scrub(str(e))} (run with --debug for a "
               "traceback)")
        return 1

"""The command line: `main()` parses, dispatches, and turns errors into exit codes.

Commands are thin (options, one call into volbackup.ops, render). No command catches
exceptions: this module maps every VolbackupError to its one-line message and exit code.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click
from click.utils import PacifyFlushWrapper

from volbackup import __version__
from volbackup.cli import render
from volbackup.cli.progress import quiet_option
from volbackup.errors import USAGE_EXIT_CODE, Interrupted, VolbackupError
from volbackup.malloc import use_one_arena
from volbackup.signals import Terminated, handled
from volbackup.urls import scrub


# Each command's module, imported only when that command runs (or help lists them all): a
# `volbackup list` need not load the engine's client, nor `--version` anything.
COMMAND_MODULES = {
    "init": "init:init", "backup": "backup:backup", "restore": "restore:restore",
    "migrate": "migrate:migrate", "list": "snapshots:list_cmd", "show": "snapshots:show",
    "verify": "snapshots:verify", "cleanup": "cleanup:cleanup", "prune": "prune:prune",
    "unlock": "prune:unlock", "repair-index": "prune:repair_index", "run": "run:run",
    "export": "transfer:export",
    "import": "transfer:import_", "doctor": "doctor:doctor", "copy": "copy:copy",
    "ls": "browse:ls_cmd", "dump": "browse:dump", "diff": "browse:diff",
    "extract": "extract:extract",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name when asked for (COMMAND_MODULES)."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx, cmd_name: str) -> click.Command | None:
        where = COMMAND_MODULES.get(cmd_name)
        if where is None:
            return None
        module_name, attribute = where.split(":")
        return getattr(importlib.import_module(f"volbackup.cli.{module_name}"), attribute)


def all_commands() -> dict[str, click.Command]:
    """Every command by name, each module imported (for docs checks and help)."""
    return {name: cli.get_command(None, name) for name in cli.list_commands(None)}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Print a traceback with errors.")
@quiet_option
@click.version_option(__version__, prog_name="volbackup")
def cli(debug: bool) -> None:
    """Back up, restore, verify and migrate Docker volumes (zstd-compressed tar archives).

    Exit codes: 0 ok, 1 failure, 2 usage, 3 some volumes failed; docs/exit-codes.md
    lists them all.
    """


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

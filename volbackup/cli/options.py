"""Options shared by several commands, as decorators."""

from __future__ import annotations

import click

repo_option = click.option(
    "-r", "--repo", "repo", envvar="VOLBACKUP_REPO", required=True, metavar="REPO",
    help="Repository: a directory path. Default: $VOLBACKUP_REPO.")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")

"""Options shared by several commands, as decorators."""

from __future__ import annotations

import functools

import click

from volbackup.errors import BadPattern
from volbackup.timefmt import parse_duration
from volbackup.stream.exclude import parse_patterns


class _RepoOption(click.Option):
    """-r/--repo: a missing one says that $VOLBACKUP_REPO would do too."""

    def get_error_hint(self, ctx) -> str:
        return f"{super().get_error_hint(ctx)} (or set VOLBACKUP_REPO)"


repo_option = click.option(
    "-r", "--repo", "repo", cls=_RepoOption, envvar="VOLBACKUP_REPO", required=True,
    metavar="REPO",
    help="Repository: a directory path, s3://BUCKET[/PREFIX] or sftp://[USER@]HOST[:PORT]/PATH "
         "(docs/storage.md). Default: $VOLBACKUP_REPO.")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")

direct_option = click.option(
    "--direct/--no-direct", "use_direct", default=None,
    help="How plain local volumes and binds are read and written. Default: with GNU tar on "
         "this host when it can (root, local engine, GNU tar) and, for a backup, no running "
         "container uses the volume; otherwise through the engine. --direct: GNU tar also "
         "while containers run (a file that changes while read fails that read). "
         "--no-direct: always through the engine.")

host_option = click.option(
    "--host", metavar="NAME", help="Only snapshots made on this host (as `list` shows it).")

# Kept in step with volbackup/repo/backends/s3.py, which click modules do not import (boto3).
_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                    "GLACIER_IR", "REDUCED_REDUNDANCY")


def s3_write_options(command):
    """--s3-storage-class, --s3-sse, --s3-sse-kms-key-id, handed on as one `s3` dict."""

    @click.option("--s3-storage-class", type=click.Choice(_STORAGE_CLASSES),
                  envvar="VOLBACKUP_S3_STORAGE_CLASS",
                  help="S3 storage class of the objects written. Default: the bucket's "
                       "(STANDARD). $VOLBACKUP_S3_STORAGE_CLASS.")
    @click.option("--s3-sse", type=click.Choice(["AES256", "aws:kms"]), envvar="VOLBACKUP_S3_SSE",
                  help="S3 server-side encryption of the objects written. $VOLBACKUP_S3_SSE.")
    @click.option("--s3-sse-kms-key-id", metavar="KEY", envvar="VOLBACKUP_S3_SSE_KMS_KEY_ID",
                  help="KMS key (id, ARN or alias) for --s3-sse aws:kms (implies it). "
                       "$VOLBACKUP_S3_SSE_KMS_KEY_ID.")
    @functools.wraps(command)
    def wrapper(*args, s3_storage_class, s3_sse, s3_sse_kms_key_id, **kwargs):
        s3 = {"storage_class": s3_storage_class,
              "sse": s3_sse, "sse_kms_key_id": s3_sse_kms_key_id}
        return command(*args, s3=s3, **kwargs)

    return wrapper


class Duration(click.ParamType):
    """`0`, `90s`, `30m`, `12h`, `7d` -> seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        seconds = parse_duration(value)
        if seconds is None:
            self.fail(f"{value!r} is not a duration like 0, 30m, 12h or 7d", param, ctx)
        return seconds


def keep_options(command):
    """--keep-last ... --keep-within, handed on as one `rules` (volbackup.repo.retention.Rules)."""
    from datetime import timedelta

    from volbackup.repo.retention import Rules

    counts = [("last", "the N newest snapshots")] + [
        (rule, f"the newest snapshot of each of the N latest {period} that have one (UTC)")
        for rule, period in (("hourly", "hours"), ("daily", "days"), ("weekly", "ISO weeks"),
                             ("monthly", "months"), ("yearly", "years"))]

    @functools.wraps(command)
    def wrapper(*args, keep_within, **kwargs):
        values = {name: kwargs.pop(f"keep_{name}") or 0 for name, _ in counts}
        within = timedelta(seconds=keep_within) if keep_within else None
        return command(*args, rules=Rules(**values, within=within), **kwargs)

    wrapper = click.option(
        "--keep-within", type=Duration(), metavar="DURATION",
        help="Keep every snapshot made within DURATION of now (30m, 12h, 7d).")(wrapper)
    for name, text in reversed(counts):
        wrapper = click.option(f"--keep-{name}", type=click.IntRange(1), metavar="N",
                               help=f"Keep {text}.")(wrapper)
    return wrapper


lock_wait_option = click.option(
    "--lock-wait", type=Duration(), default="60s", show_default=True, metavar="DURATION",
    help="Wait this long for a conflicting repository lock, then fail with exit 11.")


def secrets_options(reading: bool):
    """--key-file (and, for commands that read data, --identity, --trust-repository-key),
    handed on as one `secrets` (volbackup.repo.sealing.Secrets). Only an encrypted
    repository uses them."""
    from volbackup.repo.sealing import Secrets

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, key_file, identity_file=None, trust_repository_key=False, **kwargs):
            return command(*args, secrets=Secrets(key_file, identity_file,
                                                  trust_repository_key), **kwargs)

        if reading:
            wrapper = click.option(
                "--trust-repository-key", is_flag=True,
                help="Encrypted repository whose key file is lost: take the key sealed in the "
                     "repository's config (a writer to the bucket could have replaced it; "
                     "docs/security.md).")(wrapper)
            wrapper = click.option(
                "--identity", "identity_file", metavar="FILE", envvar="VOLBACKUP_IDENTITY_FILE",
                type=click.Path(dir_okay=False),
                help="Encrypted repository: the age identity file (or SSH private key) to "
                     "decrypt with. $VOLBACKUP_IDENTITY_FILE.")(wrapper)
        return click.option(
            "--key-file", metavar="FILE", envvar="VOLBACKUP_KEY_FILE",
            type=click.Path(dir_okay=False),
            help="Encrypted repository: its key file (written by `init --encrypt-to`). "
                 "$VOLBACKUP_KEY_FILE.")(wrapper)
    return decorate


def exclude_patterns(ctx, param, value):
    """--exclude-path: every pattern checked before anything is read or written."""
    try:
        return parse_patterns(value)
    except BadPattern as e:
        raise click.BadParameter(str(e)) from None

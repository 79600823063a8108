"""The exception tree. Each class carries the exit code the CLI returns for it.

The table in docs/exit-codes.md is checked against these classes by a test, so the
documented codes cannot drift from the real ones.
"""

from __future__ import annotations

from volbackup.urls import scrub


class VolbackupError(Exception):
    """Base of every error volbackup reports as a one-line message."""

    exit_code = 1
    title = "failure"
    summary = "Any other failure: the message says what went wrong."


class Unexpected(VolbackupError):
    """An error from outside this tree (an OSError no layer translated, a bug), carried as
    one volume's failure so that the run goes on and is reported as failed. Exit code 1."""

    def __init__(self, error: BaseException):
        super().__init__(f"unexpected {type(error).__name__}: {scrub(str(error))}")
        self.__cause__ = error  # --debug prints the original traceback too


def reworded(error: VolbackupError, message: str) -> VolbackupError:
    """`error` (same class, same exit code) saying `message` instead: for adding what the
    caller knows. `type(error)(message)` would not do: not every class takes a message."""
    again = type(error).__new__(type(error), message)  # not __init__: it may not take one
    again.__dict__.update(error.__dict__)
    again.args, again.__cause__ = (message,), error.__cause__
    return again


def as_error(error: BaseException) -> VolbackupError:
    """`error` itself if it is one of ours, else wrapped in `Unexpected`."""
    return error if isinstance(error, VolbackupError) else Unexpected(error)


class NotFound(VolbackupError):
    exit_code = 4
    title = "not found"
    summary = ("A volume, container or snapshot named on the command line does not exist; "
               "or a path given with --include is not in the snapshot.")


class RepositoryError(VolbackupError):
    exit_code = 5
    title = "repository error"
    summary = ("The repository is missing (no such directory or bucket), not a directory, "
               "not a volbackup repository (other files and no snapshots/), not writable "
               "or full, or holds a manifest or entry that cannot be read.")


class RepositoryDenied(RepositoryError):
    exit_code = 9
    title = "access denied"
    summary = ("The repository's store rejected the credentials or denied access (S3: no, "
               "wrong or expired keys, or a missing permission; SFTP: no key the server "
               "accepts, or an unknown or changed host key).")


class RepositoryUnreachable(RepositoryError):
    exit_code = 10
    title = "store unreachable"
    summary = ("The repository's store (an S3 endpoint, an SFTP server) could not be reached "
               "or kept failing, even after retries with backoff.")


class IntegrityError(VolbackupError):
    exit_code = 6
    title = "integrity error"
    summary = ("An archive failed a check: sha256, zstd frame checksum, truncation, tar "
               "structure, or a member that would land outside the volume (an absolute name, "
               "`..`, a path through a symlink). Nothing was restored from it.")


class ChunkMissing(IntegrityError):
    """A chunk a chunk list names is not in the repository: damage (exit 6), unless the
    snapshot was removed while it was read (Repository says so: RemovedWhileRead)."""


class BlobMissing(RepositoryError):
    """A snapshot's archive, chunk list or catalogue is not in the repository (exit 5),
    unless the snapshot was removed while it was read (RemovedWhileRead)."""


class RemovedWhileRead(VolbackupError):
    exit_code = 20
    title = "removed while read"
    summary = ("A snapshot was removed from the repository while it was being read (by a "
               "prune: the restore, verify, export, ls, dump or extract found a chunk, "
               "chunk list or archive gone, and the snapshot's manifest gone too). Not "
               "damage: nothing of it was restored; read another snapshot.")


class EngineError(VolbackupError):
    exit_code = 7
    title = "engine error"
    summary = "The Docker engine cannot be reached or refused a request."


class StreamBroken(EngineError):
    """The engine's archive stream ended early: often files that changed while read."""


class OwnersLost(EngineError):
    """The engine's archive stream cannot carry the files' owners (Podman's gives every
    entry the helper's): refused rather than read into a snapshot that loses them."""


class TargetNotEmpty(VolbackupError):
    exit_code = 8
    title = "target refused"
    summary = ("A restore target volume exists and is not empty (use --force to replace "
               "it), or it is in use by a container; or the file `export` or `dump -o` would "
               "write exists (use --force); or the repository `copy` would write into is the "
               "source itself, holds another snapshot with the same id, or is plain while "
               "the source is encrypted (use --allow-plain-target); or the directory "
               "`extract` would write into is not empty (or not a directory).")


class PartialFailure(VolbackupError):
    """Raised after a multi-volume run in which some volumes failed and others succeeded."""

    exit_code = 3
    title = "partial failure"
    summary = "Some volumes succeeded and others failed; the summary names each outcome."

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class RepositoryLocked(VolbackupError):
    exit_code = 11
    title = "repository locked"
    summary = ("Another run holds a conflicting lock on the repository and did not release "
               "it within --lock-wait (`volbackup unlock` lists and breaks stale locks).")


class LockLost(VolbackupError):
    """This run's lock is gone from the repository (broken as stale by another run while
    this one was suspended): what it writes now may rest on packs a prune has judged
    unused, so it stops. Exit code 1: run again."""


class ConfigError(VolbackupError):
    exit_code = 12
    title = "invalid config"
    summary = ("The config file of `volbackup run` cannot be read, is not valid TOML, or has "
               "an unknown key or a bad value (the message names the key, job and line).")


class UntrustedStorage(VolbackupError):
    exit_code = 13
    title = "driver options refused"
    summary = ("A snapshot (or a migrated volume) asks for a volume whose driver options "
               "keep its data outside the engine's volume area (a host path, a device, NFS, "
               "CIFS, a volume plugin); give --trust-driver-options to create it.")


class TargetBusy(VolbackupError):
    exit_code = 14
    title = "target busy"
    summary = ("Another volbackup run is restoring or migrating into the same target volume "
               "on this engine right now; nothing was changed.")


class InsufficientSpace(VolbackupError):
    exit_code = 15
    title = "not enough space"
    summary = ("restore --force refused before removing anything: the filesystem that would "
               "hold the restored volume has less free space than the snapshot needs.")


class InputRefused(VolbackupError):
    exit_code = 16
    title = "input refused"
    summary = ("The file given to `import` is not a whole tar archive (plain, or compressed "
               "with gzip, bzip2, xz or zstd): empty, of another format, truncated or "
               "corrupt, a member that would land outside the volume (an absolute name, "
               "`..`, a path through a symlink), or nothing left after --strip-components. "
               "No snapshot was made.")


class BadPattern(VolbackupError):
    exit_code = 19
    title = "bad exclude pattern"
    summary = ("A volbackup.exclude label holds a bad pattern (empty, a `.` or `..` "
               "component, an empty component, a NUL, an invalid character class), or "
               "more than 100000 hard-linked files lost their first name to the patterns: "
               "that volume's backup failed and no snapshot of it was written. A bad "
               "--exclude-path is a usage error (exit 2), a bad exclude_path in a `run` "
               "config an invalid config (exit 12).")


class KeyProblem(VolbackupError):
    exit_code = 17
    title = "key or identity missing or wrong"
    summary = ("An encrypted repository needs a key that was not given or does not fit: "
               "restore, verify and export need an identity (--identity, "
               "$VOLBACKUP_IDENTITY_FILE) that the snapshot is encrypted to; backup and "
               "import need the repository's key file (--key-file, $VOLBACKUP_KEY_FILE); "
               "or a recipient given to init is not an age or SSH public key. Nothing was "
               "created or changed.")


class NotReady(VolbackupError):
    exit_code = 18
    title = "backup would fail"
    summary = ("`volbackup doctor` found a problem that would make a backup fail (the engine "
               "or the repository cannot be reached, the repository is not writable, full or "
               "not a repository, a lock no run can break); warnings alone exit 0.")


class Interrupted(VolbackupError):
    exit_code = 130
    title = "interrupted"
    summary = ("Stopped by Ctrl-C (SIGINT) or SIGTERM; helpers and partial files were "
               "cleaned up.")


USAGE_EXIT_CODE = 2
USAGE_SUMMARY = "Bad command-line usage: unknown option, missing argument, invalid value."


def exit_code_table() -> list[tuple[int, str, str]]:
    """(code, title, summary) for every documented exit code, in code order."""
    rows = [(0, "ok", "Everything asked for was done."),
            (USAGE_EXIT_CODE, "usage", USAGE_SUMMARY)]
    pending = [VolbackupError]
    while pending:
        cls = pending.pop()
        rows.append((cls.exit_code, cls.title, cls.summary))
        pending.extend(cls.__subclasses__())
    return sorted(set(rows))

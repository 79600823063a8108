"""The option objects of ops.backup, ops.restore and ops.migrate: their defaults (the same as
the CLI's and a `run` job's), the values they refuse, and that they cannot change."""

from __future__ import annotations

import dataclasses

import pytest

from volbackup.cli import all_commands
from volbackup.ops.backup import BackupOptions
from volbackup.ops.migrate import WIRE_CHOICES, MigrateOptions
from volbackup.ops.restore import RestoreOptions
from volbackup.runner.config import Job
from volbackup.stream.catalog import Selection


def test_backup_defaults():
    assert BackupOptions() == BackupOptions(
        level=3, quiesce=None, stop_timeout=10, retries=2, use_direct=None, jobs=1,
        exclude_paths=(), safety_for=None, read_all=False, parent=None, settle=2.0)


def test_restore_defaults():
    assert RestoreOptions() == RestoreOptions(
        force=False, safety=True, use_direct=None, trust_options=False, drop_options=False,
        paths=None)


def test_migrate_defaults():
    assert MigrateOptions() == MigrateOptions(
        force=False, verify=False, wire="auto", quiesce=None, stop_timeout=10,
        trust_options=False)


def _cli_defaults(command: str) -> dict:
    """What click hands the command when no option is given."""
    return all_commands()[command].make_context(command, [], resilient_parsing=True).params


@pytest.mark.parametrize("command, options, names", [
    ("backup", BackupOptions(), {"level": "level", "quiesce": "quiesce",
                                 "stop_timeout": "stop_timeout", "retries": "retries",
                                 "jobs": "jobs", "use_direct": "use_direct",
                                 "exclude_paths": "exclude_paths", "read_all": "read_all",
                                 "parent": "parent"}),
    ("restore", RestoreOptions(), {"force": "force", "safety": "safety",
                                   "use_direct": "use_direct",
                                   "trust_options": "trust_options",
                                   "drop_options": "drop_options"}),
    ("migrate", MigrateOptions(), {"force": "force", "verify": "verify",
                                   "wire": "wire_compression", "quiesce": "quiesce",
                                   "stop_timeout": "stop_timeout",
                                   "trust_options": "trust_options"}),
])
def test_defaults_agree_with_the_command_line(command, options, names):
    """A command that passes its options unchanged does what the library does unasked."""
    defaults = _cli_defaults(command)
    for field, param in names.items():
        given = defaults[param]
        assert (tuple(given) if isinstance(given, list) else given) == getattr(options, field), \
            (command, field)


def test_backup_defaults_agree_with_a_run_job():
    job, options = Job("j", "/r"), BackupOptions()
    assert (job.level, job.quiesce, job.stop_timeout, job.retries, job.direct, job.parallel,
            tuple(job.exclude_paths), job.read_all) == (
        options.level, options.quiesce, options.stop_timeout, options.retries,
        options.use_direct, options.jobs, options.exclude_paths, options.read_all)


@pytest.mark.parametrize("given", [
    {"level": 0}, {"level": 22}, {"retries": 0}, {"jobs": 1}, {"jobs": 64},
    {"stop_timeout": 0}, {"quiesce": "stop"}, {"quiesce": "pause"}, {"use_direct": True},
    {"use_direct": False},
])
def test_backup_takes_the_edges(given):
    assert dataclasses.asdict(BackupOptions(**given)).items() >= given.items()


@pytest.mark.parametrize("given, message", [
    ({"level": -1}, "level must be a whole number from 0 to 22, not -1"),
    ({"level": 23}, "level must be a whole number from 0 to 22, not 23"),
    ({"level": 3.0}, "level must be a whole number from 0 to 22, not 3.0"),
    ({"level": "3"}, "level must be a whole number from 0 to 22, not '3'"),
    ({"level": True}, "level must be a whole number from 0 to 22, not True"),
    ({"retries": -1}, "retries must be a whole number >= 0, not -1"),
    ({"jobs": 0}, "jobs must be a whole number >= 1, not 0"),
    ({"jobs": None}, "jobs must be a whole number >= 1, not None"),
    ({"stop_timeout": -1}, "stop_timeout must be a whole number >= 0, not -1"),
    ({"quiesce": "Stop"}, "quiesce must be None, 'stop' or 'pause', not 'Stop'"),
    ({"quiesce": ""}, "quiesce must be None, 'stop' or 'pause', not ''"),
    ({"use_direct": "no"}, "use_direct must be None, True or False, not 'no'"),
    ({"use_direct": 0}, "use_direct must be None, True or False, not 0"),
    ({"settle": -1}, "settle must be 0 or more, not -1"),
    ({"read_all": True, "parent": "v@x"}, "parent and read_all exclude each other"),
])
def test_backup_refuses(given, message):
    with pytest.raises(ValueError) as e:
        BackupOptions(**given)
    assert str(e.value) == message


@pytest.mark.parametrize("given, message", [
    ({"trust_options": True, "drop_options": True},
     "trust_options and drop_options exclude each other"),
    ({"use_direct": "yes"}, "use_direct must be None, True or False, not 'yes'"),
])
def test_restore_refuses(given, message):
    with pytest.raises(ValueError) as e:
        RestoreOptions(**given)
    assert str(e.value) == message


def test_restore_takes_either_way_with_driver_options():
    assert RestoreOptions(trust_options=True).trust_options
    assert RestoreOptions(drop_options=True).drop_options


@pytest.mark.parametrize("wire", WIRE_CHOICES)
def test_migrate_takes_every_wire_choice(wire):
    assert MigrateOptions(wire=wire).wire == wire


@pytest.mark.parametrize("given, message", [
    ({"wire": "zstd"}, "wire must be one of auto, gzip, none, not 'zstd'"),
    ({"wire": None}, "wire must be one of auto, gzip, none, not None"),
    ({"quiesce": "kill"}, "quiesce must be None, 'stop' or 'pause', not 'kill'"),
    ({"stop_timeout": -5}, "stop_timeout must be a whole number >= 0, not -5"),
    ({"stop_timeout": 1.5}, "stop_timeout must be a whole number >= 0, not 1.5"),
])
def test_migrate_refuses(given, message):
    with pytest.raises(ValueError) as e:
        MigrateOptions(**given)
    assert str(e.value) == message


@pytest.mark.parametrize("options, field, value", [
    (BackupOptions(), "level", 9),
    (BackupOptions(), "exclude_paths", ("cache",)),
    (RestoreOptions(), "force", True),
    (MigrateOptions(), "wire", "gzip"),
])
def test_options_cannot_change(options, field, value):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, value)


def test_exclude_paths_are_copied_so_the_callers_list_cannot_change_them():
    patterns = ["cache"]
    options = BackupOptions(exclude_paths=patterns)
    patterns.append("*.tmp")
    assert options.exclude_paths == ("cache",)


def test_options_are_hashable_values():
    """Immutable all the way down: usable as keys, equal when their values are."""
    restore = RestoreOptions(paths=Selection(include=("conf",)))
    assert len({BackupOptions(exclude_paths=["a"]), BackupOptions(exclude_paths=("a",)),
                restore, RestoreOptions(paths=Selection(include=("conf",))),
                MigrateOptions(), MigrateOptions()}) == 3


def test_replace_checks_again():
    with pytest.raises(ValueError, match="jobs must be"):
        dataclasses.replace(BackupOptions(jobs=4), jobs=0)
    with pytest.raises(ValueError, match="exclude each other"):
        dataclasses.replace(RestoreOptions(trust_options=True), drop_options=True)

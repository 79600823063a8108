"""The docs stay true: exit codes, commands, and the README's first commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from volbackup.cli import all_commands
from volbackup.errors import exit_code_table

ROOT = Path(__file__).parents[1]


def test_exit_code_table_matches_the_exception_classes():
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| ([^|]+) \|$", text, re.M)
    documented = [(int(c), t.strip(), s.strip()) for c, t, s in rows]
    assert documented == exit_code_table()


@pytest.mark.parametrize("command", sorted(all_commands()))
def test_every_command_is_in_the_user_guide(command):
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    assert f"volbackup {command}" in guide


def test_every_option_is_in_the_user_guide():
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    checked = 0
    for name, command in all_commands().items():
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert opt in guide, f"{name} {opt} is not documented"
                    checked += 1
    assert len(all_commands()) > 10 and checked > 50, "the CLI's commands were not found"


def test_readme_opens_with_install_and_test_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    first_block = []
    in_block = False
    for line in lines:
        if line.startswith("```"):
            if in_block:
                break
            in_block = True
            continue
        if in_block:
            first_block.append(line.strip())
    assert first_block == ["pip install -e '.[test]'", "python -m pytest"]
    assert "\npython -m pytest\n" in (ROOT / ".ci" / "run").read_text()

"""Small helpers for integration tests: fill volumes, read them back, find leftovers."""

from __future__ import annotations

import os
from pathlib import Path


def fill(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def contents(root: str) -> dict[str, bytes]:
    """Relative path -> bytes of every regular file under root."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath, name)
            out[str(full.relative_to(root))] = full.read_bytes()
    return out


def repo_files(repo: Path) -> list[str]:
    """Every file in a repository directory, temp files included."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got: {stderr!r}"
    assert lines[0].startswith("volbackup: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]

"""The layers of README's picture: runner above ops; cli -> ops -> docker | stream | repo.
Imports go down, never up or sideways, so growth lands where a newcomer looks for it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "volbackup"

# What each layer may import of volbackup (leaf modules at the root are open to all).
LEAVES = {"volbackup", "volbackup.errors", "volbackup.urls", "volbackup.signals",
          "volbackup.processes", "volbackup.malloc", "volbackup.timefmt",
          "volbackup.pauses"}
ALLOWED = {
    "stream": {"stream"},
    "repo": {"repo", "stream"},
    "docker": {"docker", "stream"},
    "ops": {"ops", "docker", "stream", "repo"},
    "runner": {"runner", "ops", "docker", "stream", "repo"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if node.module == "volbackup":  # from volbackup import x: x may be a package
                found |= {f"volbackup.{alias.name}" for alias in node.names
                          if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").exists()}
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "volbackup" or module in LEAVES:
        return None
    return parts[1]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    wrong = sorted(f"{path.relative_to(PACKAGE)}: {module}"
                   for path in (PACKAGE / layer).rglob("*.py") for module in imports(path)
                   if layer_of(module) not in (None, *ALLOWED[layer])
                   or module.split(".")[0] == "click")
    assert wrong == []


def test_only_the_docker_package_imports_the_docker_sdk():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if any(m == "docker" or m.startswith("docker.") for m in imports(path)))
    assert importers and all(name.startswith("docker/") for name in importers), importers


@pytest.mark.parametrize("library, owner", [("boto3", "repo/backends/s3.py"),
                                            ("paramiko", "repo/backends/sftp.py"),
                                            ("opendal", "repo/backends/opendal.py")])
def test_only_its_backend_imports_a_storage_client(library, owner):
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if any(m == library or m.startswith(f"{library}.") for m in imports(path)))
    assert importers == [owner]

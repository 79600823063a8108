"""Every distribution the code imports is declared in pyproject.toml.

A module that arrives only because another package happens to pull it in, or because someone
installed it by hand, makes an install that works here and fails on a fresh machine. So:
`volbackup/` may import only what `[project].dependencies` declares; `tests/` and
`benchmarks/` may also use the `test` extra. Imports are read with `ast` (also those inside
functions), and each top-level module is mapped to its distribution by
importlib.metadata.packages_distributions(), so this runs where the test extra is installed.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the `tomli` backport, declared for Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def imported_modules(tree: Path) -> dict[str, set[str]]:
    """Top-level module -> the files under `tree` that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted(tree.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(tree.parent)))
    return found


def undeclared(trees: list[Path], declared: set[str], own: set[str]) -> dict[str, set[str]]:
    """Distribution (or unknown module) -> files importing it, for what `declared` lacks.

    `own`: modules of the project itself (its package, and scripts that import each other
    by their file name, as benchmarks/ does)."""
    distributions = metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for tree in trees:
        for module, files in imported_modules(tree).items():
            if module in sys.stdlib_module_names or module in own or module == "__future__":
                continue
            candidates = [normalized(d) for d in distributions.get(module, [module])]
            if not declared.intersection(candidates):
                missing.setdefault(candidates[0], set()).update(files)
    return missing


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def local_modules(*trees: Path) -> set[str]:
    """Packages and script stems in `trees` (benchmarks import each other as top-level)."""
    return {"volbackup", "tests", "benchmarks"} | {p.stem for t in trees for p in t.rglob("*.py")}


def report(missing: dict[str, set[str]]) -> str:
    return "; ".join(f"{dist} (imported by {', '.join(sorted(files)[:3])})"
                     for dist, files in sorted(missing.items()))


def test_the_package_imports_only_declared_distributions():
    declared = {requirement_name(r) for r in project()["dependencies"]}
    missing = undeclared([ROOT / "volbackup"], declared, {"volbackup"})
    assert not missing, f"imported by volbackup/ but not in [project].dependencies: {report(missing)}"


def test_tests_and_benchmarks_import_only_declared_distributions():
    meta = project()
    declared = {requirement_name(r) for r in [*meta["dependencies"],
                                              *meta["optional-dependencies"]["test"]]}
    trees = [ROOT / "tests", ROOT / "benchmarks"]
    missing = undeclared(trees, declared, local_modules(*trees))
    assert not missing, f"imported by tests/ or benchmarks/ but not declared: {report(missing)}"


def test_the_check_finds_an_undeclared_import(tmp_path):
    """The checker itself: an import of a distribution that is installed (PyYAML, with the
    test extra) but not declared is named, also inside a function; a declared one is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import os\nimport zstandard\n")
    (package / "late.py").write_text("def f():\n    import yaml.constructor\n")
    missing = undeclared([package], {"zstandard"}, {"pkg"})
    assert missing == {"pyyaml": {"pkg/late.py"}}
    assert undeclared([package], {"zstandard", "pyyaml"}, {"pkg"}) == {}


def test_a_module_no_installed_distribution_provides_is_reported(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from vbtest_nowhere_module import thing\n")
    assert undeclared([package], set(), {"pkg"}) == {"vbtest-nowhere-module": {"pkg/__init__.py"}}


@pytest.mark.parametrize("requirement, name", [
    ("docker[ssh]>=7.1", "docker"), ("moto[server]>=5", "moto"), ("PyYAML>=6", "pyyaml"),
    ("tomli>=2.0; python_version < '3.11'", "tomli"), ("prometheus_client>=0.20", "prometheus-client"),
])
def test_requirement_names(requirement, name):
    assert requirement_name(requirement) == name

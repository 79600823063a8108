"""The README's user path on a clean install: the wheel, built from this tree, installed into a
fresh virtualenv with its dependencies from the package index, then run as a user would.

This is what catches a dependency that is imported but not declared: nothing installed on
this machine by hand can reach that virtualenv. It needs the package index, so it runs where
the suite is required to be complete (CI, VOLBACKUP_REQUIRE_ENGINE=1) or when asked for with
VOLBACKUP_TEST_INSTALL=1, and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_ENGINE
from volbackup import __version__

ROOT = Path(__file__).resolve().parents[2]
WANTED = REQUIRE_ENGINE or bool(os.environ.get("CI")) or os.environ.get("VOLBACKUP_TEST_INSTALL") == "1"

pytestmark = pytest.mark.skipif(not WANTED, reason="needs the package index: set "
                                "VOLBACKUP_TEST_INSTALL=1 (CI runs it)")


def clean_env() -> dict:
    """This process's environment without what would let the virtualenv see this tree or
    this interpreter's packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtualenv that has the wheel of this tree and its dependencies."""
    work = tmp_path_factory.mktemp("install")
    source = work / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "volbackup", source / "volbackup",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source],
        cwd=work)
    (wheel,) = (work / "dist").glob("volbackup-*.whl")
    run([sys.executable, "-m", "venv", work / "venv"], cwd=work)
    bin_dir = work / "venv" / "bin"
    run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], cwd=work)
    return bin_dir


def test_the_wheel_installs_and_runs(installed, tmp_path):
    out = run([installed / "volbackup", "--version"], cwd=tmp_path).stdout
    assert __version__ in out
    # the virtualenv imports its own copy, not this tree
    where = run([installed / "python", "-c", "import volbackup; print(volbackup.__file__)"],
                cwd=tmp_path).stdout
    assert str(installed.parent) in where and str(ROOT) not in where
    # no system site-packages: a module installed on this machine only is not importable
    proc = subprocess.run([installed / "python", "-c", "import pytest"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "No module named 'pytest'" in proc.stderr


def test_the_quickstart_in_the_fresh_install(installed, tmp_path, make_volume, mountpoint):
    """`init -r DIR` (DIR made), then backup and list, as the README's quickstart."""
    volume = make_volume("install")
    Path(mountpoint(volume.name), "hello.txt").write_text("hello\n")
    repo = tmp_path / "r"
    out = run([installed / "volbackup", "init", "-r", repo], cwd=tmp_path).stdout
    assert f"created directory {repo} (mode 0700)" in out
    assert f"created packed repository {repo} (id " in out
    assert (repo / "config").is_file()
    out = run([installed / "volbackup", "backup", volume.name, "-r", repo], cwd=tmp_path).stdout
    assert f"{volume.name}: snapshot {volume.name}@" in out
    listed = run([installed / "volbackup", "list", "-r", repo], cwd=tmp_path).stdout
    assert listed.splitlines()[0].startswith("SNAPSHOT")
    assert [line.split()[0].split("@")[0] for line in listed.splitlines()[1:]] == [volume.name]

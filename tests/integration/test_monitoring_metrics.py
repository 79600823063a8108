"""docs/monitoring/ against a metrics file written by a real `volbackup run` of a real engine
volume: every metric the alert rules and the dashboard query is in it, and the promtool test
file's series have its names and labels (plus the scrape's `instance` and `job`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.integration.helpers import fill
from tests.integration.test_scheduling import write_config
from tests.monitoring import (SCRAPE_LABELS, dashboard_exprs, file_series, metric_names,
                              rule_exprs, rules_test_series)
from tests.integration.conftest import make_layout
from volbackup.ops.report import _HELP as WRITTEN


@pytest.fixture
def real_metrics(cli, repo_dir, tmp_path, make_volume, mountpoint) -> dict:
    """Two runs of a job with keep rules: the second has a previous stored size and a prune.
    A packed repository read directly: the files cache's metrics are written too."""
    make_layout(str(repo_dir), "packed")
    name = make_volume("mon").name
    metrics = tmp_path / "volbackup.prom"
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name], metrics_file=str(metrics),
                          keep="{ last = 1 }")
    for size in (100_000, 300_000):
        fill(mountpoint(name), {"data.bin": os.urandom(size)})
        done = cli("run", "--config", config)
        assert done.code == 0, done.stderr
    text = metrics.read_text()
    promtool = shutil.which("promtool")
    if promtool:   # its linter: names, HELP and TYPE lines
        linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                                text=True)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    return file_series(text)


def test_the_real_file_holds_every_metric_volbackup_documents(real_metrics):
    assert set(real_metrics) == set(WRITTEN)


def test_every_query_names_a_metric_of_the_real_file(real_metrics):
    exprs = rule_exprs() + dashboard_exprs()
    assert len(exprs) >= 16
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        missing = names - set(real_metrics)
        assert not missing, f"{expr!r} names {sorted(missing)}, not in a real metrics file"


def test_promtool_test_series_have_the_real_names_and_labels(real_metrics):
    series = rules_test_series()
    assert len(series) >= 10
    for name, labels in series:
        assert name in real_metrics, f"{name} is not in a real metrics file"
        written = set(labels) - SCRAPE_LABELS
        assert frozenset(written) in real_metrics[name], (
            f"{name}{sorted(labels)}: a real file labels it {sorted(map(sorted, real_metrics[name]))}")


def test_the_summary_reports_the_locks_and_sizes(cli, repo_dir, tmp_path, make_volume,
                                                 mountpoint):
    """What the lock and size metrics are made from, in `run --json`."""
    name = make_volume("mon").name
    fill(mountpoint(name), {"a.bin": os.urandom(50_000)})
    config = write_config(tmp_path / "c.toml", str(repo_dir), [name])
    done = cli("run", "--config", config, "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["jobs"][0]["locks"] == {"count": 0, "oldest_age_seconds": 0}

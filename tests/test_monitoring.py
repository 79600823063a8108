"""docs/monitoring/: the alert rules pass their promtool tests, and every query of the rules
and the dashboard names a metric volbackup writes.

Without promtool (Debian's `prometheus` package) the promtool tests skip, or fail in CI
(CI or VOLBACKUP_REQUIRE_ENGINE set). tests/integration/test_monitoring_metrics.py checks
the same names and labels against a metrics file written by a real backup.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.monitoring import (DASHBOARD, RULES, RULES_TEST, SCRAPE_LABELS, dashboard_exprs,
                              metric_names, rule_exprs, rules_test_series)
from volbackup.ops.report import _HELP as WRITTEN

IN_CI = bool(os.environ.get("CI") or os.environ.get("VOLBACKUP_REQUIRE_ENGINE"))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if IN_CI:
            pytest.fail("promtool is required in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def test_rules_pass_their_promtool_tests(promtool):
    checked = subprocess.run([promtool, "check", "rules", str(RULES)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_fails_a_rule_that_does_not_fire(promtool, tmp_path):
    """The test file can fail: with the stale threshold raised, its expectations break."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 26 * 3600", "> 48 * 3600"))
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    tested = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=tmp_path,
                            capture_output=True, text=True)
    assert tested.returncode != 0 and "VolbackupVolumeStale" in tested.stdout + tested.stderr


READS = [
    ("time() - volbackup_volume_last_success_timestamp_seconds > 26 * 3600",
     {"volbackup_volume_last_success_timestamp_seconds"}),
    ('sum by (backup_job) (rate(volbackup_a{volume=~"x|y", job="node"}[5m] offset 1d))',
     {"volbackup_a"}),
    ("volbackup_a > 2 * volbackup_b and on (volume, instance) volbackup_c > 1e6",
     {"volbackup_a", "volbackup_b", "volbackup_c"}),
    ('count((time() - volbackup_a{instance=~"$instance"}) > 3600) or vector(0)', {"volbackup_a"}),
    ("avg_over_time(volbackup_a[$__rate_interval]) / ignoring(x) group_left volbackup_b",
     {"volbackup_a", "volbackup_b"}),
    ('label_values(volbackup_a{instance=~"$instance"}, backup_job)', {"volbackup_a"}),
    ("absent(volbackup_a)", {"volbackup_a"}),
    ('node_load1 unless {__name__="volbackup_hidden"}', {"node_load1", "volbackup_hidden"}),
]


@pytest.mark.parametrize("expr,names", READS)
def test_metric_names_reads_promql(expr, names):
    assert metric_names(expr) == names


def test_every_query_names_only_metrics_volbackup_writes():
    """The same check as against a real file (the integration test), from the code's own
    list: fails on a typo, or on a metric the code stopped writing."""
    exprs = rule_exprs() + dashboard_exprs()
    assert len(rule_exprs()) >= 6 and len(dashboard_exprs()) >= 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= set(WRITTEN), f"{expr!r} names {sorted(names - set(WRITTEN))}"


def test_dashboard_has_every_alert_subject():
    """Each metric the alerts use is on the dashboard too, to look at when one fires."""
    on_dashboard = set().union(*map(metric_names, dashboard_exprs()))
    alerting = set().union(*map(metric_names, rule_exprs()))
    assert alerting <= on_dashboard
    assert DASHBOARD.read_text().count('"expr"') >= 10


def test_test_series_are_volbackups_with_scrape_labels():
    series = rules_test_series()
    assert len(series) >= 10
    for name, labels in series:
        assert name in WRITTEN, name
        assert SCRAPE_LABELS <= set(labels), (name, labels)
        assert "backup_job" in labels, (name, labels)

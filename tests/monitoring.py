"""The files of docs/monitoring/ read for tests: the metric names each PromQL expression
names, and the series of the promtool test file.

`metric_names` is a small reader of PromQL, not a parser: it drops strings, label matchers,
ranges, grouping clauses, Grafana variables and numbers, then takes every name that is not
a function call or a keyword, and the names of `{__name__="..."}` matchers. Its own tests
(tests/test_monitoring.py) show what it reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

DOCS = Path(__file__).resolve().parent.parent / "docs" / "monitoring"
RULES = DOCS / "volbackup.rules.yml"
RULES_TEST = DOCS / "volbackup.rules.test.yml"
DASHBOARD = DOCS / "grafana-dashboard.json"
SCRAPE_LABELS = {"instance", "job"}   # added by the scrape, not written by volbackup

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "offset", "bool", "inf", "nan"}
_DROP = [
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`',                 # strings
    r"\{[^}]*\}",                                                     # label matchers
    r"\[[^\]]*\]",                                                    # ranges, subqueries
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",  # grouping
    r"\$\{[^}]*\}|\$\w+",                                             # Grafana variables
    r"(?<![\w:])\d[\d.]*(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?![\w:])",   # numbers, durations
]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression (or a Grafana `label_values(...)` query) selects."""
    named = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))  # {__name__="..."}
    text = re.sub(r"\blabel_values\s*\(([^,()]*(?:\{[^}]*\})?)\s*,[^)]*\)", r"(\1)", expr)
    for pattern in _DROP:
        text = re.sub(pattern, " ", text)
    names = named
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match[0].lower() in _KEYWORDS:
            continue   # a function or an aggregation, or a keyword
        names.add(match[0])
    return names


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every query of the dashboard: the panels' targets and the query variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels += panel.get("panels", [])   # rows that hold panels
    exprs = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rules_test_series() -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every input series of the promtool test file."""
    found = []
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for series in case.get("input_series") or []:
            (family,) = text_string_to_metric_families(series["series"] + " 0\n")
            (sample,) = family.samples
            found.append((sample.name, dict(sample.labels)))
    return found


def file_series(text: str) -> dict[str, set[frozenset[str]]]:
    """Metric name -> the label-name sets of its samples, in a Prometheus text file."""
    found: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return found

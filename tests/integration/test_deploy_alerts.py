"""The chart's SLA alerts under ``promtool``: they load, and each fires when it should.

The PrometheusRule is rendered by Helm (``helm-python-sdk``), its groups written as a plain
rules file, then ``promtool check rules`` and ``promtool test rules`` run with the unit tests
in tests/unit/deploy/alerts_test.yaml. The Grafana dashboard's queries are checked by the same
PromQL parser (as recording rules, Grafana's variables filled in).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..unit.deploy.chart_render import CHART, Chart, merge

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
    ),
]

ALERT_TESTS = Path(__file__).resolve().parents[1] / "unit" / "deploy" / "alerts_test.yaml"
MONITORING = {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def _rules(values: dict[str, Any] | None = None) -> dict[str, Any]:
    chart = Chart()
    try:
        rule = chart.render(merge(MONITORING, values or {})).one("PrometheusRule")
    finally:
        chart.close()
    return {"groups": rule["spec"]["groups"]}


def _write_suite(directory: Path, rules: dict[str, Any]) -> None:
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(ALERT_TESTS, directory / ALERT_TESTS.name)


def test_rules_load_and_every_alert_unit_test_passes(tmp_path: Path) -> None:
    _write_suite(tmp_path, _rules())
    check = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    test = _promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {r["alert"] for g in _rules()["groups"] for r in g["rules"] if "alert" in r}
    cases = [
        case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == alerts
    assert silent == alerts


def test_the_unit_tests_notice_a_wrong_threshold(tmp_path: Path) -> None:
    """A rule file with another latency target fails the same suite: the tests check the rules."""
    _write_suite(tmp_path, _rules({"prometheusRule": {"defaultRules": {"latencyTarget": 0.05}}}))
    test = _promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert test.returncode != 0
    assert "OtelaiPipelineLatencyHigh" in test.stdout + test.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads((CHART / "dashboards" / "otelai.json").read_text())
    grafana = {"$__rate_interval": "1m", "$namespace": "observability", "$pod": ".+"}
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in grafana.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId'].lower()}", "expr": expr})
    assert len(rules) >= 20
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    check = _promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(rf"SUCCESS: {len(rules)} rules found", check.stdout)

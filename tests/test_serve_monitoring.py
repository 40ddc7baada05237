"""The monitoring files (cluster/monitoring/): alert rules checked and unit-tested with promtool, the
Grafana dashboard's queries valid PromQL over series the server exports, and the status page's alerts
using the rules' thresholds. No Ray: seconds.

promtool is Debian's ``prometheus`` package (``.ci/run`` installs it); these tests skip only when it is
absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from serve import metrics, status

REPO = Path(__file__).resolve().parents[1]
MON = REPO / "cluster" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool absent (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = MON) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> dict[str, dict]:
    doc = yaml.safe_load((MON / "alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load((MON / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}  # fmt: skip
    assert tested == set(_rules()) == set(status.ALERTS), "every rule fires in a unit test"


@needs_promtool
def test_the_rule_tests_can_fail(tmp_path):
    """A rule with another threshold fails its unit test: the tests pin the thresholds."""
    text = (MON / "alerts.yml").read_text().replace("> 1.10 *", "> 1.30 *")
    (tmp_path / "alerts.yml").write_text(text)
    shutil.copy(MON / "alerts_test.yml", tmp_path)
    r = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "GridrlExportAboveBaseline" in r.stdout + r.stderr


def test_status_page_alerts_use_the_rules_thresholds():
    rules = _rules()
    export = rules["GridrlExportAboveBaseline"]["expr"]
    a = status.ALERTS
    assert f"> {a['GridrlExportAboveBaseline']['ratio']:.2f} *" in export
    assert "[1h]" in export and f">= {a['GridrlExportAboveBaseline']['min_decisions']}" in export
    assert f"[{a['GridrlSafetyViolation']['window_min']}m]" in rules["GridrlSafetyViolation"]["expr"]
    assert f">= {a['GridrlRepeatedAnomalies']['min_count']}" in rules["GridrlRepeatedAnomalies"]["expr"]
    assert f"> {int(a['GridrlFallbackOver24h']['seconds'])}" in rules["GridrlFallbackOver24h"]["expr"]
    # and the page's evaluation fires on the same cases as the unit tests
    f = {name: i for i, name in enumerate(status.FIELDS)}
    hour = np.zeros((status.MINUTES, len(status.FIELDS)))
    hour[:, f["decisions"]] = 60
    hour[:, f["export_pi_wh"]] = 1.0
    hour[:, f["export_policy_wh"]] = 1.2
    assert status.site_alerts(hour, 0.0) == ["GridrlExportAboveBaseline"]
    hour[:, f["export_policy_wh"]] = 1.05
    assert status.site_alerts(hour, 0.0) == []
    hour[-3, f["violations"]] = 1
    hour[-10:, f["anomalies"]] = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert status.site_alerts(hour, 86_600.0) == [
        "GridrlSafetyViolation",
        "GridrlRepeatedAnomalies",
        "GridrlFallbackOver24h",
    ]


def _exported_metrics() -> set[str]:
    names = set(re.findall(r'"(gridrl_[a-z_]+)"', Path(metrics.__file__).read_text()))
    return {n + "_total" if n not in {"gridrl_act_latency_seconds"} and _is_counter(n) else n for n in names}


def _is_counter(name: str) -> bool:
    text = Path(metrics.__file__).read_text()
    return bool(re.search(r'Counter\(\s*"' + name + '"', text))


@needs_promtool
def test_dashboard_queries_are_valid_promql_over_exported_series(tmp_path):
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12 and dash["uid"] == "gridrl-fleet"
    exported = _exported_metrics() | {"gridrl_act_latency_seconds_bucket"}
    for e in exprs:
        used = set(re.findall(r"\b(gridrl_[a-z_]+)", e))
        assert used <= exported, (used - exported, e)
    # every query as a recording rule: promtool parses each expression
    rules = [
        {"record": f"gridrl:dashboard:{i}", "expr": e.replace("$site", ".*")} for i, e in enumerate(exprs)
    ]
    (tmp_path / "dash.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", "dash.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("latency", "source", "violations", "fallback", "export", "alerts"):
        assert word in titles, word

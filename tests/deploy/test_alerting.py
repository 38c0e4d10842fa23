"""Prometheus configuration, recording and alerting rules, and Alertmanager, checked with the real tools.

- ``promtool check config``/``check rules`` pass and ``promtool test rules`` passes, and fails when an
  alert breaks; every alert has a promtool case where it fires and one where it does not, a severity and
  annotations; the best-effort alert matches the router's reasons;
- ``amtool check-config`` passes, alerts route by severity, and inhibitions name real alerts.

Tools: promtool and amtool (Debian ``prometheus``, ``prometheus-alertmanager``). A missing tool skips its
test, except under ``CI`` where it fails. The PromQL in these rules is checked against the exported
metric names in tests/deploy/test_observability.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_tooling import RULE_FILES, alert_rules, recording_rules, require_tool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERT_TESTS = PROMETHEUS / "tests/alerts.test.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# ------------------------------------------------------------------ Prometheus config, rules, alert tests


def test_prometheus_config_loads_every_rule_file() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    loaded = {(PROMETHEUS / p).resolve() for p in config["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"gateway", "vllm"} <= jobs, "alerts select job=gateway and job=vllm"


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])  # checks the rule files too
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([promtool, "check", "rules", *(str(p) for p in RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_fail_when_an_alert_breaks(tmp_path: Path) -> None:
    """The promtool tests notice a broken threshold (here: the error-ratio alert made unreachable)."""
    promtool = require_tool("promtool", "apt-get install prometheus")
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    shutil.copytree(PROMETHEUS / "tests", tmp_path / "tests")
    broken = tmp_path / "rules/alerts.yml"
    text = broken.read_text()
    assert "model_strategy:gateway_request_errors:ratio_rate5m > 0.05" in text
    broken.write_text(text.replace("ratio_rate5m > 0.05", "ratio_rate5m > 0.5"))
    result = run([promtool, "test", "rules", str(tmp_path / "tests/alerts.test.yml")])
    assert result.returncode != 0
    assert "GatewayHighErrorRatio" in result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["../rules/recording.yml", "../rules/alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = set(alert_rules())
    assert alerts >= {"GatewayDown", "VLLMBackendDown", "GatewayTTFTSLOBreach", "GatewayHighErrorRatio"}
    assert "GatewayRouterBestEffort" in alerts
    assert not alerts - fires, f"alerts never expected to fire: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts never checked to stay quiet: {sorted(alerts - quiet)}"
    assert not (fires | quiet) - alerts, f"tests name unknown alerts: {sorted((fires | quiet) - alerts)}"


def test_alerts_have_severity_and_annotations() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), name
        assert "for" in rule, f"{name}: an alert without `for` pages on a single bad scrape"


def test_best_effort_alert_matches_the_router_reasons() -> None:
    """router/choice.py names the decisions that could not keep the flags budget-unmeetable and accuracy-unmet."""
    source = (ROOT / "router/choice.py").read_text()
    reasons = set(re.findall(r'"(budget-unmeetable|accuracy-unmet)"', source))
    assert reasons == {"budget-unmeetable", "accuracy-unmet"}
    expr = recording_rules()[":gateway_routing_best_effort:ratio_rate10m"]
    pattern = re.search(r'reason=~"([^"]+)"', expr)
    assert pattern is not None
    assert all(re.fullmatch(pattern.group(1), r) for r in reasons)
    assert not re.fullmatch(pattern.group(1), "prefer-balanced")


# ------------------------------------------------------------------ Alertmanager


def test_alertmanager_config_passes_amtool() -> None:
    amtool = require_tool("amtool", "apt-get install prometheus-alertmanager")
    result = run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "receiver"), [("severity=critical", "critical"), ("severity=warning", "default")])
def test_alertmanager_routes_by_severity(labels: str, receiver: str) -> None:
    amtool = require_tool("amtool", "apt-get install prometheus-alertmanager")
    result = run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", "alertname=X", labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_inhibitions_name_real_alerts() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    alerts = set(alert_rules())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname\s*(=~|=)\s*"([^"]+)"', matcher)
            assert m, matcher
            names = m.group(2).split("|") if m.group(1) == "=~" else [m.group(2)]
            assert set(names) <= alerts, f"inhibit rule names unknown alerts: {set(names) - alerts}"

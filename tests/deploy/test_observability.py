"""Prometheus rules, Alertmanager and Grafana dashboards: real tools, Grafana's schema, and metric names.

What is checked here (fast, no server):

- ``promtool check config``, ``check rules`` and ``test rules`` pass, and every alert has a promtool case
  where it fires and one where it does not;
- every dashboard and rule expression parses (``promtool check rules`` on a generated rule file);
- every metric name in a dashboard, recording rule or alert is exported by ``gateway/metrics.py``
  (rendered from a real :class:`GatewayMetrics`) or by vLLM (:data:`VLLM_SAMPLES`), and every label a
  selector matches on exists on that gateway metric;
- the dashboards are what ``deploy/grafana/build_dashboards.py`` builds, validate against Grafana's
  dashboard schema (``deploy/grafana/schema``, made from npm ``@grafana/schema``), and their panel options
  round-trip through ``grafana-foundation-sdk``'s panel models;
- ``amtool check-config`` passes and critical alerts reach the critical receiver.

Tools: promtool and amtool (Debian ``prometheus``, ``prometheus-alertmanager``), jsonschema and
grafana-foundation-sdk (the ``test`` extra). A missing tool skips its test, except under ``CI`` where it fails.
tests/e2e/test_dashboards.py runs the same queries against Prometheus scraping a real gateway and vLLM.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from deploy_tooling import alert_rules, in_ci, recording_rules, require_tool

from gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERT_TESTS = PROMETHEUS / "tests/alerts.test.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
GRAFANA = ROOT / "deploy/grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SCHEMA = GRAFANA / "schema/dashboard.schema.json"

# Sample names vLLM 0.32 exports (vllm/v1/metrics/loggers.py, vllm/v1/spec_decode/metrics.py) that our
# dashboards and rules may use. tests/e2e/test_dashboards.py checks them against a real server's /metrics.
VLLM_SAMPLES = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:spec_decode_num_drafts_total",
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
        *(
            f"vllm:{h}{suffix}"
            for h in (
                "time_to_first_token_seconds",
                "inter_token_latency_seconds",
                "e2e_request_latency_seconds",
                "request_queue_time_seconds",
            )
            for suffix in ("_bucket", "_sum", "_count")
        ),
    }
)
VLLM_LABELS = frozenset({"model_name", "engine"})
TARGET_LABELS = frozenset({"job", "instance", "backend"})  # added by Prometheus at scrape time
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "ALERTS", "ALERTS_FOR_STATE"})
KNOWN_PANEL_TYPES = frozenset(
    {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "piechart", "heatmap", "state-timeline"}
)
# Grafana's global and dashboard variables, and what the e2e test substitutes for them
GRAFANA_SUBSTITUTES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


# ------------------------------------------------------------------ tools


def require_module(name: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if in_ci():
            pytest.fail(f"python module {name} is missing ({install}); CI installs the test extra")
        pytest.skip(f"python module {name} is missing ({install})")


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# ------------------------------------------------------------------ PromQL helpers

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_PROMQL_WORDS = (
    "sum avg min max count stddev stdvar topk bottomk quantile count_values group rate irate increase "
    "delta idelta deriv histogram_quantile abs ceil floor round clamp clamp_min clamp_max time vector "
    "scalar label_replace label_join absent absent_over_time avg_over_time max_over_time min_over_time "
    "sum_over_time count_over_time last_over_time by without on ignoring group_left group_right and or "
    "unless bool offset label_values inf nan "
)
PROMQL_WORDS = frozenset(_PROMQL_WORDS.split())


def substitute(expr: str) -> str:
    """Grafana variables replaced as the e2e test does: ``$model`` and friends match everything."""
    for var, value in GRAFANA_SUBSTITUTES.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?", ".*", expr)


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every selector; names of bare selectors get an empty set."""
    text = _RANGE.sub("", _STRING.sub('""', expr))
    out: list[tuple[str, set[str]]] = []
    for m in _SELECTOR.finditer(text):
        labels = set(_MATCHER_LABEL.findall(m.group(2)))
        out.append((m.group(1) or "", labels))
    rest = _GROUPING.sub(" ", _SELECTOR.sub(" ", text))
    rest = re.sub(r"(?<![a-zA-Z0-9_:])\d[\w.]*", " ", rest)  # numbers and durations (0.95, 5m, 1e3)
    for m in _IDENT.finditer(rest):
        word = m.group(0)
        following = rest[m.end() :].lstrip()[:1]
        if word in PROMQL_WORDS or following == "(":
            continue
        out.append((word, set()))
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr) if name}


# ------------------------------------------------------------------ the sources


@functools.cache
def gateway_exposition() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a GatewayMetrics whose every helper ran once."""
    m = GatewayMetrics()
    s = m.series("m", "plain")
    s.ttft.observe(0.1)
    s.itl.observe(0.01)
    s.duration.observe(1.0)
    s.tokens_per_s.observe(10)
    m.observe_usage(s, 3, 4)
    m.request_done("m", "plain", "chat", 200)
    m.inflight("b").inc()
    m.set_backend_up("b", True)
    m.upstream_error("b", "timeout")
    m.decision("m", "plain", "least-loaded", 0.001, family="gsm8k")
    rejected = getattr(m, "rejected", None)  # newer than the rest; keep this test independent of it
    if rejected is not None:
        rejected("rate_limit_requests", "team-a")
    text = m.exposition().decode()
    samples: dict[str, set[str]] = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):  # families with no child too
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        for suffix in suffixes:
            samples.setdefault(name + suffix, set())
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?", line)
        assert match is not None, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
        samples.setdefault(match.group(1), set()).update(labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


def load_dashboard(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title or variable, PromQL) of every query, variable queries included."""
    out = []
    for path in DASHBOARDS:
        d = load_dashboard(path)
        for panel in panels(d):
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
        for var in d["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                inner = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]+\)", query)
                assert inner, f"{path.name}: variable {var['name']}: expected label_values(selector, label)"
                out.append((path.name, f"${var['name']}", inner.group(1)))
    return out


def rule_queries() -> list[tuple[str, str, str]]:
    out = [("recording", name, expr) for name, expr in recording_rules().items()]
    out += [("alert", name, rule["expr"]) for name, rule in alert_rules().items()]
    return out


ALL_QUERIES = dashboard_queries() + rule_queries()


def _id(q: tuple[str, str, str]) -> str:
    return f"{q[0]}:{q[1]}"


# ------------------------------------------------------------------ PromQL parsing helpers are right


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (model, le) (rate(a_bucket{model=~"$model"}[$__rate_interval]))', {"a_bucket"}),
        ("x / ignoring (model) group_left sum(y)", {"x", "y"}),
        ('max by (backend) (vllm:kv_cache_usage_perc{backend=~"b"}) > 0.95', {"vllm:kv_cache_usage_perc"}),
        ('up{job="vllm"} == 0', {"up"}),
        ("a and on (model, strategy) b > 0.1", {"a", "b"}),
        ("histogram_quantile(0.5, sum by (le) (rate(c_bucket[5m])))", {"c_bucket"}),
        ('sum(rate(d{status=~"5.."}[1m] offset 5m))', {"d"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_selector_labels_extraction() -> None:
    assert selectors('rate(m{model=~"a", status!="5"}[1m])') == [("m", {"model", "status"})]


# ------------------------------------------------------------------ metric names and labels


def test_gateway_exposition_has_every_family() -> None:
    """Guards the source of truth below: a helper that stopped exporting would hide missing names."""
    names = set(gateway_exposition())
    assert {"gateway_requests_total", "gateway_backend_up", "gateway_router_decision_seconds_bucket"} <= names
    assert len({n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in names}) >= 12


def unknown_names(expr: str) -> list[str]:
    """Problems with the metric names and selector labels of ``expr``; empty if all exist."""
    gateway = gateway_exposition()
    recorded = set(recording_rules())
    problems = []
    if not metric_names(expr):
        problems.append("no metric")
    for name, labels in selectors(expr):
        if not name:
            problems.append("selector without a metric name")
        elif name in gateway:
            problems += [f"{name} has no label {label!r}" for label in sorted(labels - gateway[name] - TARGET_LABELS)]
        elif name in VLLM_SAMPLES:
            problems += [f"{name} has no label {label!r}" for label in sorted(labels - VLLM_LABELS - TARGET_LABELS)]
        elif name not in recorded and name not in PROMETHEUS_SERIES:
            problems.append(f"{name} is exported by neither gateway/metrics.py nor vLLM")
    return problems


@pytest.mark.parametrize("query", ALL_QUERIES, ids=_id)
def test_query_uses_only_exported_metrics(query: tuple[str, str, str]) -> None:
    source, title, expr = query
    assert not unknown_names(expr), f"{source} {title!r}: {unknown_names(expr)} in {expr!r}"


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(gateway_request_total[1m]))",  # misspelt
        'sum(rate(gateway_requests_total{arm="x"}[1m]))',  # no such label
        'max(gateway_backend_up{strategy="plain"})',  # label of another metric
        "vllm:num_requests_swapped",  # removed from vLLM
        'rate({__name__="x"}[1m])',
    ],
)
def test_unknown_names_are_reported(expr: str) -> None:
    assert unknown_names(expr)


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Each expression (Grafana variables substituted) as a recording rule: promtool parses them all."""
    promtool = require_tool("promtool", "apt-get install prometheus")
    rules = [{"record": f"check:query_{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(ALL_QUERIES)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    # a broken expression must make it fail: the check is not vacuous
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "x:y", "expr": "sum(rate(a[1m])"}]}]})
    )
    assert run([promtool, "check", "rules", str(path)]).returncode != 0


# ------------------------------------------------------------------ Grafana


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_built_from_the_generator() -> None:
    rendered = _builder().render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS] == ["overview.json", "strategies.json"]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], (
            f"{path.name} is out of date: python deploy/grafana/build_dashboards.py"
        )


def _validator() -> Any:
    jsonschema = require_module("jsonschema", "pip install jsonschema")
    schema = json.loads(SCHEMA.read_text())
    assert "@grafana/schema" in schema["$comment"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_validates_against_grafana_schema(path: Path) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(load_dashboard(path))]
    assert not errors, "\n".join(errors[:20])


def test_grafana_schema_rejects_what_grafana_would_not_read() -> None:
    validator = _validator()
    dashboard = load_dashboard(DASHBOARDS[0])
    for mutate in (
        lambda d: d["panels"][1].update({"gridpos": {}}),  # misspelt key
        lambda d: d["panels"][1]["gridPos"].update({"w": "12"}),  # wrong type
        lambda d: d.pop("schemaVersion"),  # required
        lambda d: d["templating"]["list"][1].update({"refresh": 7}),  # not in the enum
    ):
        broken = copy.deepcopy(dashboard)
        mutate(broken)
        assert list(validator.iter_errors(broken)), mutate


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panel_options_round_trip_through_foundation_sdk(path: Path) -> None:
    """Panel ``options`` and ``fieldConfig.defaults.custom`` are free-form in the dashboard schema; the
    per-plugin models of grafana-foundation-sdk know them. Unknown keys would be dropped by the round trip."""
    models = require_module("grafana_foundation_sdk.models", "pip install grafana-foundation-sdk")
    encoder = require_module("grafana_foundation_sdk.cog.encoder", "pip install grafana-foundation-sdk").JSONEncoder
    checked = 0
    for panel in panels(load_dashboard(path)):
        if panel["type"] == "row":
            continue
        module = importlib.import_module(f"{models.__name__}.{panel['type'].replace('-', '')}")
        pairs = [(module.Options, panel["options"])]
        custom = panel["fieldConfig"]["defaults"].get("custom")
        if custom is not None:
            pairs.append((module.FieldConfig, custom))  # only plugins with custom field config define it
        for cls, value in pairs:
            again = json.loads(json.dumps(cls.from_json(value), cls=encoder))
            assert again == value, f"{panel['title']!r}: {cls.__module__}.{cls.__name__} reads {value} as {again}"
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    d = load_dashboard(path)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "model", "strategy", "backend"} <= variables
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(d):
        title = panel["title"]
        assert panel["type"] in KNOWN_PANEL_TYPES, title
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, title
        if panel.get("repeat"):
            assert panel["repeat"] in variables, title
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("description"), f"{title}: every panel says what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            used = set(re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{title}: undefined variable(s) {used - variables}"
            assert "$__rate_interval" in target["expr"] or "rate(" not in target["expr"], (
                f"{title}: rate() windows use $__rate_interval so they span enough scrapes"
            )


def test_dashboards_cover_the_issue() -> None:
    """The panels asked for: Overview and Strategies, with the metrics each must show."""
    by_uid = {load_dashboard(p)["uid"]: load_dashboard(p) for p in DASHBOARDS}
    want = {
        "llm-gateway-overview": {
            "gateway_requests_total",
            "gateway_time_to_first_token_seconds_bucket",
            "gateway_inter_token_latency_seconds_bucket",
            "gateway_request_duration_seconds_bucket",
            "gateway_output_tokens_total",
            "gateway_routing_decisions_total",
            "gateway_router_decision_seconds_bucket",
            "gateway_backend_up",
            "gateway_upstream_errors_total",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
        },
        "llm-gateway-strategies": {
            "gateway_output_tokens_per_second_bucket",
            "gateway_time_to_first_token_seconds_bucket",
            "gateway_inter_token_latency_seconds_bucket",
            "gateway_routing_decisions_total",
            "vllm:spec_decode_num_accepted_tokens_total",
            "vllm:spec_decode_num_draft_tokens_total",
        },
    }
    assert set(by_uid) == set(want)
    for uid, names in want.items():
        used = {n for p in panels(by_uid[uid]) for t in p.get("targets", []) for n in metric_names(t["expr"])}
        assert names <= used, f"{uid} lacks {sorted(names - used)}"
    strategies = by_uid["llm-gateway-strategies"]
    assert any(p.get("repeat") == "strategy" for p in panels(strategies)), "one column per strategy"


def test_grafana_provisioning_matches_compose() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasource if d.get("isDefault")] == ["prometheus"]
    assert datasource[0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/llm-gateway.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/overview.json"
    for name in ("prometheus", "alertmanager", "grafana"):
        assert compose[name]["profiles"] == ["cpu", "gpu"], name
    prometheus_mounts = [v for v in compose["prometheus"]["volumes"] if v.startswith("./")]
    assert prometheus_mounts == ["./deploy/prometheus:/etc/prometheus:ro"]
    alertmanager_mounts = [v for v in compose["alertmanager"]["volumes"] if v.startswith("./")]
    assert alertmanager_mounts == ["./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"]

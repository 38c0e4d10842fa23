"""Builds the Grafana dashboards of deploy/grafana/dashboards/ from one description of their panels.

    python deploy/grafana/build_dashboards.py          # rewrite the JSON files
    python deploy/grafana/build_dashboards.py --check  # exit 1 if a committed file is out of date

The JSON files are what Grafana provisions (deploy/grafana/provisioning, deploy/k8s); this script is the
source. tests/deploy/test_observability.py checks that both agree, validates the output against Grafana's
dashboard schema and checks every metric name; tests/e2e/test_dashboards.py runs every query against a
Prometheus that scraped a real gateway and real vLLM servers.

Queries use only the series of gateway/metrics.py and vLLM's /metrics (no recording rules), so the
dashboards work on any Prometheus that scrapes the gateway, with or without deploy/prometheus/rules.
vLLM series carry a ``backend`` label added at scrape time (deploy/prometheus/prometheus.yml, the
ServiceMonitor in deploy/k8s): it tells apart servers of one model (plain and speculative).

Longer than the project's ~500-line guide on purpose: most of it is the declarative table of every
panel and query; splitting it would scatter one dashboard over files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39  # Grafana 10.4 and 11.x
DS = {"type": "prometheus", "uid": "${datasource}"}
ARM = 'model=~"$model", strategy=~"$strategy"'
RATE = "$__rate_interval"
UNMET = 'reason=~"budget-unmeetable|accuracy-unmet"'  # router/choice.py: decisions that could not keep the flags

Panel = dict[str, Any]


# ------------------------------------------------------------------ building blocks


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    if table:
        t["format"] = "table"
    return t


def targets(*items: tuple[str, str]) -> list[dict[str, Any]]:
    """(expr, legend) pairs with refIds A, B, C, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(items)]


def field_defaults(unit: str, minimum: float | None = 0, maximum: float | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"unit": unit}
    if minimum is not None:
        d["min"] = minimum
    if maximum is not None:
        d["max"] = maximum
    return d


def timeseries(
    title: str,
    description: str,
    tgts: list[dict[str, Any]],
    unit: str,
    w: int = 12,
    stacked: bool = False,
    maximum: float | None = None,
) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stacked:
        custom.update({"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60})
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": {**field_defaults(unit, maximum=maximum), "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_w": w,
        "_h": 8,
    }


def stat(
    title: str,
    description: str,
    tgts: list[dict[str, Any]],
    unit: str,
    steps: list[tuple[float | None, str]] | None = None,
    w: int = 6,
    h: int = 4,
) -> Panel:
    thresholds = {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in (steps or [(None, "green")])],
    }
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": {**field_defaults(unit), "thresholds": thresholds}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        "_w": w,
        "_h": h,
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[dict[str, Any]]:
    legend_by = " ".join("{{" + label + "}}" for label in by.split(", ") if label)
    group = f"{by}, le" if by else "le"
    items = []
    for q in qs:
        series = f"{metric}_bucket{{{selector}}}" if selector else f"{metric}_bucket"
        expr = f"histogram_quantile({q}, sum by ({group}) (rate({series}[{RATE}])))"
        items.append((expr, f"p{round(q * 100)} {legend_by}".strip()))
    return targets(*items)


def layout(panels: list[Panel]) -> list[Panel]:
    """Places panels left to right in rows of 24 units; a row panel starts a new line. Assigns ids."""
    x = y = line_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p = {"id": i, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        out.append(p)
        if p["type"] == "row":
            y += h
        else:
            x += w
            line_h = max(line_h, h)
    return out


def query_var(name: str, label: str, query: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": "prometheus"},
        "options": [],
        "hide": 0,
        "refresh": 1,
    }


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]) -> Panel:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["llm-gateway"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [
            {
                "title": "LLM gateway",
                "type": "dashboards",
                "tags": ["llm-gateway"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": [datasource_var(), *variables]},
        "panels": layout(panels),
    }


MODEL_VAR = query_var("model", "Model", "label_values(gateway_requests_total, model)", "Gateway model (arm.model)")
STRATEGY_VAR = query_var(
    "strategy",
    "Strategy",
    'label_values(gateway_requests_total{model=~"$model"}, strategy)',
    "Decoding strategy label (plain, speculative-ngram-k4, ...)",
)
BACKEND_VAR = query_var("backend", "Backend", "label_values(gateway_backend_up, backend)", "Backend server name")


# ------------------------------------------------------------------ Overview


def overview() -> Panel:
    # `or vector(0)`: a healthy system shows 0, not "No data"
    errors_5xx = f'(sum(rate(gateway_requests_total{{{ARM}, status=~"5.."}}[{RATE}])) or vector(0))'
    all_requests = f"sum(rate(gateway_requests_total{{{ARM}}}[{RATE}]))"
    decisions = f"rate(gateway_routing_decisions_total{{{ARM}}}[{RATE}])"
    panels: list[Panel] = [
        row("Traffic"),
        stat("Requests/s", "Requests answered per second (all statuses).", targets((all_requests, "")), "reqps"),
        stat(
            "Error ratio (5xx)",
            "Share of requests answered with a 5xx status. 4xx and 499 (client hung up) are not counted.",
            targets((f"{errors_5xx} / {all_requests}", "")),
            "percentunit",
            [(None, "green"), (0.01, "orange"), (0.05, "red")],
        ),
        stat(
            "Healthy backends",
            "Backends that pass the health checks of at least one gateway replica, out of all configured.",
            targets(
                ('sum(max by (backend) (gateway_backend_up{backend=~"$backend"}))', "healthy"),
                ('count(max by (backend) (gateway_backend_up{backend=~"$backend"}))', "configured"),
            ),
            "none",
        ),
        stat(
            "Router best effort",
            "Share of routing decisions where no arm met the caller's constraints "
            "(reasons budget-unmeetable and accuracy-unmet of the learned policy).",
            targets(
                (
                    f"(sum(rate(gateway_routing_decisions_total{{{ARM}, {UNMET}}}[{RATE}]))"
                    f" or vector(0)) / sum({decisions})",
                    "",
                )
            ),
            "percentunit",
            [(None, "green"), (0.1, "orange"), (0.25, "red")],
        ),
        timeseries(
            "Requests/s by status",
            "Answered requests per second by HTTP status and endpoint.",
            targets((f"sum by (status, endpoint) (rate(gateway_requests_total{{{ARM}}}[{RATE}]))", "")),
            "reqps",
            w=8,
        ),
        timeseries(
            "Upstream errors/s by backend and kind",
            "Failures talking to backends (connect, timeout, http_5xx, http_4xx, stream, protocol). "
            "The gateway retries another backend where it can, so these need not become client errors.",
            targets(
                (
                    f'sum by (backend, kind) (rate(gateway_upstream_errors_total{{backend=~"$backend"}}[{RATE}]))',
                    "{{backend}} {{kind}}",
                )
            ),
            "reqps",
            w=8,
        ),
        timeseries(
            "Rejected requests/s by reason",
            "Requests refused by policy before routing (unauthorized, model_not_allowed, rate limits, "
            "payload_too_large, ...), by reason and API key name.",
            targets(
                ("sum by (reason, key) (rate(gateway_rejected_requests_total[$__rate_interval]))", "{{reason}} {{key}}")
            ),
            "reqps",
            w=8,
        ),
        row("Latency (measured at the gateway)"),
        timeseries(
            "Time to first token",
            "From request received to the first generated token leaving the gateway; p50, p95, p99 per arm.",
            quantiles("gateway_time_to_first_token_seconds", "model, strategy", ARM),
            "s",
            w=8,
        ),
        timeseries(
            "Inter-token latency",
            "Time between consecutive streamed chunks; p50, p95, p99 per arm.",
            quantiles("gateway_inter_token_latency_seconds", "model, strategy", ARM),
            "s",
            w=8,
        ),
        timeseries(
            "End-to-end duration",
            "From request received to the last byte sent; p50, p95, p99 per arm.",
            quantiles("gateway_request_duration_seconds", "model, strategy", ARM),
            "s",
            w=8,
        ),
        row("Throughput"),
        timeseries(
            "Output tokens/s by model and strategy",
            "Generated tokens per second, from the usage the backends report.",
            targets(
                (
                    f"sum by (model, strategy) (rate(gateway_output_tokens_total{{{ARM}}}[{RATE}]))",
                    "{{model}} {{strategy}}",
                )
            ),
            "short",
            w=8,
        ),
        timeseries(
            "Decode speed per request (p50)",
            "Median over requests of (output tokens - 1) / decode time: the speed one user sees.",
            quantiles("gateway_output_tokens_per_second", "model, strategy", ARM, qs=(0.5,)),
            "short",
            w=8,
        ),
        timeseries(
            "Prompt tokens/s by model and strategy",
            "Prompt tokens per second, from the usage the backends report.",
            targets(
                (
                    f"sum by (model, strategy) (rate(gateway_prompt_tokens_total{{{ARM}}}[{RATE}]))",
                    "{{model}} {{strategy}}",
                )
            ),
            "short",
            w=8,
        ),
        row("Routing"),
        timeseries(
            "Routing share by arm",
            "Share of routing decisions that chose each arm (model and strategy).",
            targets(
                (
                    f"sum by (model, strategy) ({decisions}) / ignoring (model, strategy) group_left sum({decisions})",
                    "{{model}} {{strategy}}",
                )
            ),
            "percentunit",
            w=8,
            stacked=True,
        ),
        timeseries(
            "Decisions/s by reason",
            "Why the router chose as it did (pinned, least-loaded, prefer-*, budget-unmeetable, accuracy-unmet, ...).",
            targets((f"sum by (reason) ({decisions})", "{{reason}}")),
            "reqps",
            w=8,
        ),
        timeseries(
            "Router decision latency",
            "Time the router took to decide (prompt encoding and prediction included); p50, p99.",
            quantiles("gateway_router_decision_seconds", "", "", qs=(0.5, 0.99)),
            "s",
            w=8,
        ),
        row("Backends"),
        timeseries(
            "Backend health",
            "1 if the backend passes the gateway's health checks (worst over gateway replicas), else 0.",
            targets(('min by (backend) (gateway_backend_up{backend=~"$backend"})', "{{backend}}")),
            "none",
            w=6,
            maximum=1,
        ),
        timeseries(
            "In flight at the gateway",
            "Requests the gateway has open to each backend (summed over replicas).",
            targets(('sum by (backend) (gateway_inflight_requests{backend=~"$backend"})', "{{backend}}")),
            "short",
            w=6,
        ),
        timeseries(
            "vLLM queue depth",
            "Requests running in and waiting for each vLLM server (vllm:num_requests_running / _waiting).",
            targets(
                ('sum by (backend) (vllm:num_requests_running{backend=~"$backend"})', "{{backend}} running"),
                ('sum by (backend) (vllm:num_requests_waiting{backend=~"$backend"})', "{{backend}} waiting"),
            ),
            "short",
            w=6,
        ),
        timeseries(
            "vLLM KV-cache use",
            "Share of each vLLM server's KV-cache blocks in use (1 = full: requests queue or get preempted).",
            targets(('max by (backend) (vllm:kv_cache_usage_perc{backend=~"$backend"})', "{{backend}}")),
            "percentunit",
            w=6,
            maximum=1,
        ),
    ]
    return dashboard(
        "llm-gateway-overview",
        "LLM gateway / Overview",
        "Traffic, errors, latency, throughput and routing of the gateway; health and load of its vLLM backends.",
        [MODEL_VAR, STRATEGY_VAR, BACKEND_VAR],
        panels,
    )


# ------------------------------------------------------------------ Strategies


def strategies() -> Panel:
    model = 'model=~"$model"'
    one = 'model=~"$model", strategy=~"$strategy"'  # the repeated panels: one strategy each

    def q50(metric: str, selector: str) -> str:
        return f"histogram_quantile(0.5, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"

    def q95(metric: str, selector: str) -> str:
        return f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"

    def by_strategy(metric: str, q: float) -> str:
        return f"histogram_quantile({q}, sum by (strategy, le) (rate({metric}_bucket{{{model}}}[{RATE}])))"

    def spec(counter: str) -> str:
        return f'sum by (backend) (rate(vllm:spec_decode_num_{counter}_total{{backend=~"$backend"}}[{RATE}]))'

    def repeated(p: Panel) -> Panel:
        # Grafana splits a horizontally repeated panel's line among the values: one line per metric,
        # one column per strategy
        p.update({"repeat": "strategy", "repeatDirection": "h", "maxPerRow": 4, "_w": 24})
        return p

    share_expr = (
        f"sum by (strategy) (rate(gateway_routing_decisions_total{{{model}}}[{RATE}]))"
        f" / ignoring (strategy) group_left sum(rate(gateway_routing_decisions_total{{{model}}}[{RATE}]))"
    )
    family_share = (
        f"sum by (family, strategy) (rate(gateway_routing_family_decisions_total{{{model}}}[{RATE}]))"
        f" / ignoring (strategy) group_left"
        f" sum by (family) (rate(gateway_routing_family_decisions_total{{{model}}}[{RATE}]))"
    )
    panels: list[Panel] = [
        row("Side by side: one column per strategy ($strategy)"),
        repeated(
            stat(
                "$strategy: decode speed p50",
                "Median per-request decode rate, tokens/s.",
                targets((q50("gateway_output_tokens_per_second", one), "")),
                "short",
                h=5,
            )
        ),
        repeated(
            stat(
                "$strategy: TTFT p95",
                "95th percentile of time to first token.",
                targets((q95("gateway_time_to_first_token_seconds", one), "")),
                "s",
                [(None, "green"), (1, "orange"), (2, "red")],
                h=5,
            )
        ),
        repeated(
            stat(
                "$strategy: inter-token latency p50",
                "Median time between streamed chunks.",
                targets((q50("gateway_inter_token_latency_seconds", one), "")),
                "s",
                h=5,
            )
        ),
        repeated(
            stat(
                "$strategy: share of traffic",
                "Share of the routing decisions (for the selected models) that chose this strategy.",
                targets(
                    (
                        f"sum(rate(gateway_routing_decisions_total{{{one}}}[{RATE}]))"
                        f" / sum(rate(gateway_routing_decisions_total{{{model}}}[{RATE}]))",
                        "",
                    )
                ),
                "percentunit",
                h=5,
            )
        ),
        row("Speed"),
        timeseries(
            "Decode speed per request by strategy (p50)",
            "Median over requests of (output tokens - 1) / decode time.",
            targets((by_strategy("gateway_output_tokens_per_second", 0.5), "{{strategy}}")),
            "short",
        ),
        timeseries(
            "Output tokens/s by strategy",
            "Generated tokens per second, all requests of the strategy together.",
            targets(
                (f"sum by (strategy) (rate(gateway_output_tokens_total{{{model}}}[{RATE}]))", "{{strategy}}"),
            ),
            "short",
        ),
        row("Latency"),
        timeseries(
            "TTFT by strategy (p50, p95)",
            "Time to first token.",
            targets(
                (by_strategy("gateway_time_to_first_token_seconds", 0.5), "p50 {{strategy}}"),
                (by_strategy("gateway_time_to_first_token_seconds", 0.95), "p95 {{strategy}}"),
            ),
            "s",
            w=8,
        ),
        timeseries(
            "Inter-token latency by strategy (p50, p95)",
            "Time between streamed chunks. Speculative decoding sends several tokens per chunk.",
            targets(
                (by_strategy("gateway_inter_token_latency_seconds", 0.5), "p50 {{strategy}}"),
                (by_strategy("gateway_inter_token_latency_seconds", 0.95), "p95 {{strategy}}"),
            ),
            "s",
            w=8,
        ),
        timeseries(
            "End-to-end duration by strategy (p50, p95)",
            "From request received to the last byte sent.",
            targets(
                (by_strategy("gateway_request_duration_seconds", 0.5), "p50 {{strategy}}"),
                (by_strategy("gateway_request_duration_seconds", 0.95), "p95 {{strategy}}"),
            ),
            "s",
            w=8,
        ),
        row("Speculative decoding (vLLM)"),
        timeseries(
            "Draft acceptance rate by backend",
            "Accepted / proposed draft tokens on each vLLM server that runs speculative decoding.",
            targets(
                (
                    f"{spec('accepted_tokens')} / {spec('draft_tokens')}",
                    "{{backend}}",
                )
            ),
            "percentunit",
            w=8,
            maximum=1,
        ),
        timeseries(
            "Accepted tokens per draft by backend",
            "Mean number of draft tokens accepted per speculation step (0 to k).",
            targets(
                (
                    f"{spec('accepted_tokens')} / {spec('drafts')}",
                    "{{backend}}",
                )
            ),
            "short",
            w=8,
        ),
        timeseries(
            "vLLM generation tokens/s by backend",
            "Tokens generated per second as each vLLM server counts them (vllm:generation_tokens_total).",
            targets(
                (
                    f'sum by (backend) (rate(vllm:generation_tokens_total{{backend=~"$backend"}}[{RATE}]))',
                    "{{backend}}",
                )
            ),
            "short",
            w=8,
        ),
        row("Traffic"),
        timeseries(
            "Share of traffic by strategy",
            "Share of routing decisions (for the selected models) by strategy.",
            targets((share_expr, "{{strategy}}")),
            "percentunit",
            stacked=True,
        ),
        timeseries(
            "Requests/s by strategy",
            "Answered requests per second (all statuses).",
            targets((f"sum by (strategy) (rate(gateway_requests_total{{{model}}}[{RATE}]))", "{{strategy}}")),
            "reqps",
        ),
        timeseries(
            "Strategy chosen per task family (predicted)",
            "Within each task family the router's artifact recognises in the prompt (code edits, maths, multiple "
            "choice, chat, ...), the share of decisions by strategy: does it pick the speculative length per prompt "
            "kind? Learned policy only; the family is a prediction (router/families.py).",
            targets((family_share, "{{family}} / {{strategy}}")),
            "percentunit",
            w=24,
            maximum=1,
        ),
    ]
    return dashboard(
        "llm-gateway-strategies",
        "LLM gateway / Strategies",
        "Each decoding strategy side by side: speed, latency, speculative acceptance and share of traffic.",
        [MODEL_VAR, STRATEGY_VAR, BACKEND_VAR],
        panels,
    )


DASHBOARDS = {"overview.json": overview, "strategies.json": strategies}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python deploy/grafana/build_dashboards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

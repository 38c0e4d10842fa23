"""Golden check of the public metric names, types and labels (dashboards and alerts depend on them)."""

from __future__ import annotations

import re

import pytest

from gateway.metrics import TTFT_BUCKETS, GatewayMetrics

HISTOGRAM = ("_bucket", "_count", "_sum")
# family -> (type, label names); a change here needs a migration note for dashboards
GOLDEN = {
    "gateway_requests_total": ("counter", ("endpoint", "model", "status", "strategy")),
    "gateway_time_to_first_token_seconds": ("histogram", ("model", "strategy")),
    "gateway_inter_token_latency_seconds": ("histogram", ("model", "strategy")),
    "gateway_request_duration_seconds": ("histogram", ("model", "strategy")),
    "gateway_output_tokens_per_second": ("histogram", ("model", "strategy")),
    "gateway_prompt_tokens_total": ("counter", ("model", "strategy")),
    "gateway_output_tokens_total": ("counter", ("model", "strategy")),
    "gateway_inflight_requests": ("gauge", ("backend",)),
    "gateway_backend_up": ("gauge", ("backend",)),
    "gateway_backend_breaker_open": ("gauge", ("backend",)),
    "gateway_upstream_errors_total": ("counter", ("backend", "kind")),
    "gateway_routing_decisions_total": ("counter", ("model", "reason", "strategy")),
    "gateway_router_decision_seconds": ("histogram", ()),
    "gateway_rejected_requests_total": ("counter", ("key", "reason")),
    "gateway_pdr_stage_seconds": ("histogram", ("model", "stage", "strategy")),
    "gateway_arm_info": ("gauge", ("arm", "backend", "model", "strategy")),
    "gateway_failovers_total": ("counter", ("model", "strategy")),
    "gateway_decision_log_errors_total": ("counter", ()),
}
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def exercised() -> str:
    """Exposition after every helper was called once."""
    m = GatewayMetrics()
    s = m.series("smol", "speculative-ngram-k4")
    s.ttft.observe(0.2)
    s.itl.observe(0.01)
    s.duration.observe(1.5)
    s.tokens_per_s.observe(42)
    m.observe_usage(s, 10, 20)
    m.request_done("smol", "speculative-ngram-k4", "chat", 200)
    m.inflight("b1").inc()
    m.set_backend_up("b1", True)
    m.set_breaker_open("b1", False)
    m.upstream_error("b1", "connect")
    m.decision("smol", "speculative-ngram-k4", "least-loaded", 0.0002)
    m.rejected("rate_limit_tokens", "team-a")
    m.rejected("unauthorized", None)
    m.pdr_stage("smol", "pdr-n4-r1", "draft", 2.5)
    m.arm_info("smol-spec", "smol", "speculative-ngram-k4", "b1")
    m.failover("smol", "plain")
    m.decision_log_error()
    return m.exposition().decode()


def families(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    out: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"unparseable exposition line: {line!r}"
        name = match["name"]
        family = next(
            (name[: -len(sfx)] for sfx in HISTOGRAM if name.endswith(sfx) and name[: -len(sfx)] in types), name
        )
        labels = {kv.split("=", 1)[0] for kv in (match["labels"] or "").split(",") if kv} - {"le"}
        out.setdefault(family, (types[family], set()))[1].update(labels)
    return {k: (t, tuple(sorted(labels))) for k, (t, labels) in out.items()}


def test_public_names_types_and_labels_are_golden() -> None:
    assert families(exercised()) == GOLDEN


def test_no_created_series_and_the_documented_buckets() -> None:
    text = exercised()
    assert "_created" not in text
    le = re.findall(r'^gateway_time_to_first_token_seconds_bucket\{[^}]*\ble="([^"]+)"', text, re.M)
    assert [float(v) for v in le if v != "+Inf"] == list(TTFT_BUCKETS)


def test_helpers_record_values() -> None:
    text = exercised()
    for line in (
        'gateway_requests_total{endpoint="chat",model="smol",status="200",strategy="speculative-ngram-k4"} 1.0',
        'gateway_prompt_tokens_total{model="smol",strategy="speculative-ngram-k4"} 10.0',
        'gateway_output_tokens_total{model="smol",strategy="speculative-ngram-k4"} 20.0',
        'gateway_rejected_requests_total{key="team-a",reason="rate_limit_tokens"} 1.0',
        'gateway_rejected_requests_total{key="none",reason="unauthorized"} 1.0',
        'gateway_inflight_requests{backend="b1"} 1.0',
        'gateway_backend_up{backend="b1"} 1.0',
        'gateway_upstream_errors_total{backend="b1",kind="connect"} 1.0',
        'gateway_routing_decisions_total{model="smol",reason="least-loaded",strategy="speculative-ngram-k4"} 1.0',
        "gateway_router_decision_seconds_count 1.0",
        'gateway_pdr_stage_seconds_count{model="smol",stage="draft",strategy="pdr-n4-r1"} 1.0',
    ):
        assert line in text.splitlines(), line


@pytest.mark.parametrize("n", [0, -3])
def test_zero_or_negative_usage_is_not_counted(n: int) -> None:
    m = GatewayMetrics()
    s = m.series("smol", "plain")
    m.observe_usage(s, n, n)
    assert 'gateway_output_tokens_total{model="smol",strategy="plain"} 0.0' in m.exposition().decode()


def test_each_instance_has_its_own_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.upstream_error("b1", "timeout")
    assert b'kind="timeout"' in a.exposition()
    assert b'kind="timeout"' not in b.exposition()
    assert a.series("m", "plain") is a.series("m", "plain"), "series children are cached"

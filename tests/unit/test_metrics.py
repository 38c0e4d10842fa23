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
    "gateway_estimated_usage_total": ("counter", ("model", "strategy")),
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
    m.estimated_usage("smol", "plain")
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


def _counter_samples(text: str, family: str) -> dict[frozenset[tuple[str, str]], float]:
    samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m["name"] == family:
            labels = frozenset(tuple(kv.split("=", 1)) for kv in (m["labels"] or "").split(",") if kv)
            samples[frozenset((k, v.strip('"')) for k, v in labels)] = float(m["value"])
    return samples


def test_a_fresh_app_exports_rejections_and_upstream_errors_at_zero() -> None:
    """Before any request, every known rejection reason (per configured key and for none) and every upstream
    error kind of every configured backend is a series at 0: rate() sees the first event, panels show 0."""
    import httpx

    from gateway.app import create_app
    from gateway.metrics import REJECT_REASONS, UPSTREAM_ERROR_KINDS
    from gateway.settings import Settings

    settings = Settings.model_validate(
        {
            "backends": [
                {"name": "b1", "url": "http://b1.test", "served_model": "m"},
                {"name": "b2", "url": "http://b2.test", "served_model": "m"},
            ],
            "arms": [{"name": "a", "model": "m", "backends": ["b1", "b2"], "strategy": {"kind": "plain"}}],
            "auth": {"keys": [{"name": "team-a", "sha256": "0" * 64}]},
        }
    )
    app = create_app(settings, transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    text = app.state.metrics.exposition().decode()

    rejected = _counter_samples(text, "gateway_rejected_requests_total")
    expected = {frozenset({("reason", r), ("key", "none")}) for r in REJECT_REASONS}
    expected |= {frozenset({("reason", r), ("key", "team-a")}) for r in REJECT_REASONS if r != "unauthorized"}
    assert rejected == dict.fromkeys(expected, 0.0)
    errors = _counter_samples(text, "gateway_upstream_errors_total")
    assert errors == {frozenset({("backend", b), ("kind", k)}): 0.0 for b in ("b1", "b2") for k in UPSTREAM_ERROR_KINDS}


def test_known_reasons_and_kinds_are_those_the_gateway_raises() -> None:
    """Every literal rejection reason and upstream failure kind in gateway/ is initialised at start-up."""
    from pathlib import Path

    from gateway.metrics import REJECT_REASONS, UPSTREAM_ERROR_KINDS

    source = "\n".join(p.read_text() for p in sorted((Path(__file__).parents[2] / "gateway").rglob("*.py")))
    reasons = set(re.findall(r"\breason\s*=\s*\"([a-z_]+)\"", source))
    reasons |= {f"rate_limit_{limit}" for limit in re.findall(r"\blimit=\"([a-z_]+)\"", source)}
    assert reasons and reasons <= set(REJECT_REASONS), sorted(reasons - set(REJECT_REASONS))
    kinds = set(re.findall(r"\bkind\s*=\s*\"([a-z_0-9]+)\"", source))
    kinds |= set(re.findall(r"report_failure\([^,]+, \"([a-z_0-9]+)\"", source))
    kinds |= set(re.findall(r"upstream_error\([^,]+, \"([a-z_0-9]+)\"", source))
    assert kinds and kinds <= set(UPSTREAM_ERROR_KINDS), sorted(kinds - set(UPSTREAM_ERROR_KINDS))

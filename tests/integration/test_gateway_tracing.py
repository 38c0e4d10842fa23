"""Traces through the app against fake upstreams: the span tree of a request (SDK in-memory exporter),
W3C trace context in from the client and out to every upstream call, and the off path.

The same trees sent over real OTLP/HTTP to a receiver: test_gateway_tracing_otlp.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fake_vllm import Gateway, Upstreams, request_body, settings_with

from gateway.app import create_app
from gateway.settings import TracingSettings

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra: pip install -e '.[tracing]'")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.tracing_otel import OTelTracer

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
LEARNED_ARMS = [
    {"name": "smollm2-plain", "model": "smol", "backends": ["b1"], "strategy": {"kind": "plain"}},
    {"name": "smollm2-spec-ngram4", "model": "smol", "backends": ["b2"], "strategy": {"kind": "plain"}},
    {"name": "qwen-coder-0.5b-plain", "model": "coder", "backends": ["b3"], "strategy": {"kind": "plain"}},
]


class Spans:
    """The finished spans of the in-memory exporter, by name."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan) -> Iterator[ReadableSpan]:
        assert parent.context is not None
        return (s for s in self.all if s.parent is not None and s.parent.span_id == parent.context.span_id)


@asynccontextmanager
async def traced(upstreams: Upstreams, ratio: float = 1.0, **overrides: Any) -> AsyncIterator[tuple[Gateway, Spans]]:
    exporter = InMemorySpanExporter()
    settings = settings_with(tracing={"enabled": True, "sample_ratio": ratio}, **overrides)
    tracer = OTelTracer(settings.tracing, SimpleSpanProcessor(exporter))
    app = create_app(settings, transport=httpx.MockTransport(upstreams.handler), tracer=tracer)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway.test") as client,
    ):
        yield Gateway(app, client, upstreams), Spans(exporter)


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _sampled(traceparent: str) -> bool:
    """The sampled bit of a traceparent's flags (the SDK may set the level-2 random bit too)."""
    return bool(int(traceparent[-2:], 16) & 1)


async def test_a_stream_is_one_tree_under_the_clients_span_and_its_context_goes_upstream(upstreams: Upstreams) -> None:
    async with traced(upstreams) as (gw, spans):
        r = await gw.client.post(
            "/v1/chat/completions",
            json=request_body("chat", stream=True),
            headers={"traceparent": CLIENT_PARENT, "tracestate": "vendor=abc"},
        )
        assert r.status_code == 200 and gw.events(r)[-1] == "[DONE]"

    root = spans.one("POST /v1/chat/completions")
    assert root.kind == SpanKind.SERVER
    assert root.context is not None and root.parent is not None
    assert _hex(root.context.trace_id, 32) == CLIENT_TRACE, "the request joins the client's trace"
    assert _hex(root.parent.span_id, 16) == CLIENT_SPAN and root.parent.is_remote
    assert root.attributes is not None
    assert root.attributes["gateway.request_id"] == r.headers["x-request-id"]
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gateway.arm"] == "smol-plain" and root.attributes["gateway.backend"] == "b1"
    assert root.attributes["gen_ai.request.model"] == "smol" and root.attributes["gateway.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == 3
    assert root.status.status_code == StatusCode.UNSET

    assert {s.name for s in spans.children(root)} == {"admission", "upstream POST /v1/chat/completions", "relay"}
    admission = spans.one("admission")
    route = spans.one("route")
    assert route.parent is not None and admission.context is not None
    assert route.parent.span_id == admission.context.span_id
    assert route.attributes is not None
    assert route.attributes["gateway.route.arm"] == "smol-plain"
    assert route.attributes["gateway.route.reason"] == r.headers["x-route-reason"]

    attempt = spans.one("upstream POST /v1/chat/completions")
    assert attempt.kind == SpanKind.CLIENT and attempt.attributes is not None and attempt.context is not None
    assert attempt.attributes["gateway.backend"] == "b1"
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["gateway.upstream.attempt"] == 1 and attempt.attributes["gateway.upstream.retry"] is False

    relay = spans.one("relay")
    assert relay.attributes is not None
    assert relay.attributes["gateway.stream.tokens"] == 3 and relay.attributes["gateway.stream.ttft_ms"] > 0
    assert [e.name for e in relay.events] == ["first_token"]
    assert all(s.context is not None and _hex(s.context.trace_id, 32) == CLIENT_TRACE for s in spans.all)

    sent = upstreams["b1"].requests[-1].headers
    assert sent["traceparent"][:-3] == f"00-{CLIENT_TRACE}-{_hex(attempt.context.span_id, 16)}"
    assert _sampled(sent["traceparent"])
    assert sent["tracestate"] == "vendor=abc"


@pytest.mark.parametrize(
    "parent",
    [None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage", CLIENT_PARENT.upper()],
    ids=["absent", "zero-trace-id", "garbage", "uppercase"],
)
async def test_without_a_valid_client_traceparent_the_gateway_starts_the_trace(
    upstreams: Upstreams, parent: str | None
) -> None:
    async with traced(upstreams) as (gw, spans):
        headers = {"traceparent": parent} if parent else {}
        r = await gw.client.post("/v1/chat/completions", json=request_body("chat"), headers=headers)
        assert r.status_code == 200
    root = spans.one("POST /v1/chat/completions")
    assert root.parent is None and root.context is not None
    attempt = spans.one("upstream POST /v1/chat/completions")
    assert attempt.context is not None
    trace_id = _hex(root.context.trace_id, 32)
    sent = upstreams["b1"].requests[-1].headers["traceparent"]
    assert sent[:-3] == f"00-{trace_id}-{_hex(attempt.context.span_id, 16)}" and _sampled(sent)
    assert "relay" not in {s.name for s in spans.all}, "a whole answer is not relayed"


async def test_a_retry_is_a_second_attempt_span_after_the_failed_one(upstreams: Upstreams) -> None:
    upstreams["b1"].fail = 503
    async with traced(upstreams) as (gw, spans):
        r = await gw.generate(stream=True)
        assert r.status_code == 200 and r.headers["x-route-backend"] == "b2"
    first, second = sorted(spans.named("upstream POST /v1/chat/completions"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gateway.backend"] == "b1" and first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "http_5xx" and first.status.status_code == StatusCode.ERROR
    assert second.attributes["gateway.backend"] == "b2" and second.attributes["gateway.upstream.retry"] is True
    assert second.attributes["gateway.upstream.failover"] is False, "b2 serves the chosen arm too"
    assert second.attributes["gateway.upstream.attempt"] == 2
    assert spans.one("POST /v1/chat/completions").status.status_code == StatusCode.UNSET
    b1 = upstreams["b1"].requests[-1].headers["traceparent"]
    b2 = upstreams["b2"].requests[-1].headers["traceparent"]
    assert b1.split("-")[1] == b2.split("-")[1] and b1 != b2, "one trace, one parent span per attempt"


async def test_a_resumed_stream_marks_the_continuation_attempt_and_the_seam_on_the_relay(upstreams: Upstreams) -> None:
    for name in ("b1", "b2"):
        upstreams[name].tokens = ("The", " quick", " brown", " fox", ".")
    upstreams["b1"].stream_fault, upstreams["b1"].stream_fault_after = "raise", 3  # role, "The", " quick"
    async with traced(upstreams) as (gw, spans):
        r = await gw.generate(stream=True)
        assert r.status_code == 200 and ": x-route-resumed backend=b2 at_tokens=2" in r.text
    first, second = sorted(spans.named("upstream POST /v1/chat/completions"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gateway.backend"] == "b1" and first.attributes["gateway.upstream.resume"] is False
    assert second.attributes["gateway.backend"] == "b2" and second.attributes["gateway.upstream.resume"] is True
    assert second.attributes["gateway.upstream.request_id"] == f"{r.headers['x-request-id']}-r1"
    relay = spans.one("relay")
    assert relay.attributes is not None and relay.attributes["gateway.stream.resumes"] == 1
    (resume,) = [e for e in relay.events if e.name == "resume"]
    assert dict(resume.attributes or {}) == {"gateway.resume.from_backend": "b1", "gateway.resume.at_tokens": 2}
    root = spans.one("POST /v1/chat/completions")
    assert root.status.status_code == StatusCode.UNSET and {s.name for s in spans.children(root)} == {
        "admission",
        "upstream POST /v1/chat/completions",
        "relay",
    }


async def test_a_refusal_ends_the_admission_with_an_error_and_calls_nobody(upstreams: Upstreams) -> None:
    async with traced(upstreams) as (gw, spans):
        r = await gw.generate(model="nope")
        assert r.status_code == 404
    root = spans.one("POST /v1/chat/completions")
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 404
    assert root.status.status_code == StatusCode.ERROR and root.attributes["error.type"] == "model_not_found"
    assert spans.one("admission").status.status_code == StatusCode.ERROR
    assert {s.name for s in spans.all} == {"POST /v1/chat/completions", "admission"}


async def test_the_routing_decision_carries_every_arms_predictions(upstreams: Upstreams) -> None:
    async with traced(upstreams, arms=LEARNED_ARMS, routing={"policy": "learned"}) as (gw, spans):
        r = await gw.client.post("/v1/chat/completions", json=request_body("chat", model="auto"))
        assert r.status_code == 200
    route = spans.one("route")
    assert route.attributes is not None
    assert route.attributes["gateway.route.arm"] == r.headers["x-route-arm"]
    assert set(route.attributes["gateway.route.ranked"]) <= {a["name"] for a in LEARNED_ARMS}  # type: ignore[arg-type]
    for arm in LEARNED_ARMS:
        for key in ("quality", "output_tokens", "ttft_ms", "tokens_per_s", "latency_ms"):
            assert isinstance(route.attributes[f"gateway.route.prediction.{arm['name']}.{key}"], float)
    assert spans.one("POST /v1/chat/completions").attributes["gen_ai.request.model"] == "auto"  # type: ignore[index]


async def test_pdr_stages_are_spans_and_every_stage_call_carries_the_trace(upstreams: Upstreams) -> None:
    pdr = {
        "name": "smol-pdr",
        "model": "smol-pdr",
        "backends": ["b1", "b2"],
        "strategy": {"kind": "pdr", "drafts": 2, "rounds": 1, "workspace_tokens": 64, "draft_max_tokens": 32},
    }
    arms = [*settings_with().model_dump()["arms"], pdr]
    async with traced(upstreams, arms=arms) as (gw, spans):
        r = await gw.generate(model="smol-pdr", stream=True)
        assert r.status_code == 200
    assert sorted(s.name for s in spans.all if s.name.startswith("pdr.")) == [
        "pdr.distill",
        "pdr.draft",
        "pdr.refine",
    ]
    attempts = spans.named("upstream POST /v1/chat/completions")
    assert len(attempts) == 2 + 1 + 1  # drafts, distill, refine
    sent = [
        r.headers["traceparent"] for b in ("b1", "b2") for r in upstreams[b].requests if r.url.path.startswith("/v1/")
    ]
    trace_ids = {t.split("-")[1] for t in sent if t}
    assert len(sent) == 4 and len(trace_ids) == 1


async def test_a_sampled_out_request_still_propagates_its_context(upstreams: Upstreams) -> None:
    async with traced(upstreams, ratio=0.0) as (gw, spans):
        r = await gw.generate()
        assert r.status_code == 200
    assert spans.all == []
    assert not _sampled(upstreams["b1"].requests[-1].headers["traceparent"])


# ------------------------------------------------------------------ tracing off


@pytest.mark.parametrize(
    ("headers", "forwarded"),
    [
        ({}, {}),
        ({"traceparent": CLIENT_PARENT}, {"traceparent": CLIENT_PARENT}),
        (
            {"traceparent": CLIENT_PARENT, "tracestate": "a=1,b=2"},
            {"traceparent": CLIENT_PARENT, "tracestate": "a=1,b=2"},
        ),
        ({"traceparent": "00-xyz-00f067aa0ba902b7-01", "tracestate": "a=1"}, {}),
    ],
    ids=["absent", "valid", "with-tracestate", "invalid"],
)
async def test_off_the_clients_valid_context_is_passed_upstream_unchanged(
    gw: Gateway, headers: dict[str, str], forwarded: dict[str, str]
) -> None:
    assert gw.app.state.settings.tracing == TracingSettings()
    for stream in (False, True):
        r = await gw.client.post("/v1/chat/completions", json=request_body("chat", stream=stream), headers=headers)
        assert r.status_code == 200
        sent = gw.upstreams["b1"].requests[-1].headers
        assert {k: sent[k] for k in ("traceparent", "tracestate") if k in sent} == forwarded

"""Traces over real OTLP/HTTP: the gateway as configured (``tracing:`` settings, the SDK's batch processor
and OTLP/HTTP exporter, no test seam) sends protobuf to a receiver on a local port
(:mod:`loadtests.otlp_sink`, decoding ``ExportTraceServiceRequest``) while fake upstreams answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fake_vllm import Upstreams, request_body, settings_with

from gateway.app import create_app

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the tracing extra: pip install -e '.[tracing]'")

from loadtests.otlp_sink import OtlpSink, ReceivedSpan

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf
STATUS_ERROR = 2


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    receiver = OtlpSink().start()
    yield receiver
    receiver.stop()


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def test_spans_arrive_over_otlp_http_with_names_attributes_and_parent_links(
    upstreams: Upstreams, sink: OtlpSink
) -> None:
    settings = settings_with(
        tracing={
            "enabled": True,
            "endpoint": sink.url,  # the base URL: /v1/traces is appended
            "service_name": "gateway-under-test",
            "headers": {"x-otlp-token": "t0ken"},
        }
    )
    upstreams["b1"].fail = "connect"  # the first attempt fails: a retry on b2
    app = create_app(settings, transport=httpx.MockTransport(upstreams.handler))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway.test") as client,
    ):
        streamed = await client.post(
            "/v1/chat/completions",
            json=request_body("chat", stream=True),
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        assert streamed.status_code == 200 and streamed.headers["x-route-backend"] == "b2"
        refused = await client.post("/v1/completions", json=request_body("completions", model="nope"))
        assert refused.status_code == 404
    # the lifespan's end shut the tracer down: its batch is exported by now

    assert sink.exports >= 1 and all(h.get("x-otlp-token") == "t0ken" for h in sink.headers)
    assert all(h["content-type"] == "application/x-protobuf" for h in sink.headers)
    spans = sink.spans
    assert {s.resource["service.name"] for s in spans} == {"gateway-under-test"}

    (root,) = [s for s in _by_name(spans, "POST /v1/chat/completions") if s.trace_id == CLIENT_TRACE]
    assert root.parent_id == CLIENT_SPAN and root.kind == SERVER
    assert root.attributes["gateway.request_id"] == streamed.headers["x-request-id"]
    assert root.attributes["gateway.arm"] == "smol-plain" and root.attributes["http.response.status_code"] == 200
    tree = [s for s in spans if s.trace_id == CLIENT_TRACE]
    children = {s.name for s in tree if s.parent_id == root.span_id}
    assert children == {"admission", "upstream POST /v1/chat/completions", "relay"}
    (admission,) = _by_name(tree, "admission")
    (route,) = _by_name(tree, "route")
    assert route.parent_id == admission.span_id and route.attributes["gateway.route.arm"] == "smol-plain"

    failed, retried = sorted(_by_name(tree, "upstream POST /v1/chat/completions"), key=lambda s: s.start_ns)
    assert failed.kind == CLIENT and failed.status_code == STATUS_ERROR
    assert failed.attributes["gateway.backend"] == "b1" and failed.attributes["error.type"] == "connect"
    assert retried.attributes["gateway.backend"] == "b2" and retried.attributes["gateway.upstream.retry"] is True
    assert retried.attributes["http.response.status_code"] == 200
    # the upstream that answered saw the attempt's span as its parent, in the client's trace
    sent = [r for r in upstreams["b2"].requests if r.url.path.startswith("/v1/")][-1].headers["traceparent"]
    assert sent.split("-")[1:3] == [CLIENT_TRACE, retried.span_id]

    (relay,) = _by_name(tree, "relay")
    assert relay.attributes["gateway.stream.tokens"] == 3 and relay.attributes["gateway.stream.ttft_ms"] > 0
    assert relay.events == ("first_token",) and root.start_ns <= relay.start_ns <= relay.end_ns <= root.end_ns

    (refusal,) = _by_name(spans, "POST /v1/completions")
    assert refusal.parent_id == "" and refusal.trace_id != CLIENT_TRACE, "no client context: a new trace"
    assert refusal.status_code == STATUS_ERROR and refusal.attributes["http.response.status_code"] == 404
    assert refusal.attributes["gen_ai.operation.name"] == "text_completion"

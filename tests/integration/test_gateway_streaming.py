"""After the first byte: an upstream that breaks mid-stream becomes an SSE error event then ``[DONE]``
(with resuming off; resumed streams: test_stream_resume.py); a client that goes away closes the
upstream response (so vLLM aborts the generation)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_vllm import Gateway, MakeGateway, Upstreams, compact, leaving_client, request_body

SERIES = {"model": "smol", "strategy": "plain", "endpoint": "chat"}


@pytest.mark.parametrize(
    ("fault", "status", "code", "kind"),
    [
        ("raise", 502, "upstream_stream", "stream"),  # connection reset while reading
        ("end", 502, "upstream_protocol", "protocol"),  # the body ends without [DONE]
        ("idle", 504, "upstream_timeout", "timeout"),  # no chunk within timeouts.idle_s
    ],
)
async def test_mid_stream_failure_sends_chunks_then_error_event_then_done(
    make_gateway: MakeGateway, upstreams: Upstreams, fault: str, status: int, code: str, kind: str
) -> None:
    fake = upstreams["b1"]
    fake.stream_fault, fake.stream_fault_after = fault, 2  # role chunk and "Hello", then the fault

    async with make_gateway(streaming={"max_resumes": 0}) as gw:
        r = await gw.generate(stream=True)
        await _check_error_stream(gw, upstreams, r, status, code, kind)


async def _check_error_stream(gw: Gateway, upstreams: Upstreams, r: Any, status: int, code: str, kind: str) -> None:
    fake = upstreams["b1"]

    assert r.status_code == 200, "the status line left before the failure"
    events = gw.events(r)
    assert [e["choices"][0]["delta"] for e in events[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
    ]
    assert events[0]["model"] == "smol"
    assert set(events[2]) == {"error"}
    error = events[2]["error"]
    assert (error["type"], error["code"]) == ("upstream_error", code)
    assert "incomplete" in error["message"]
    assert events[3:] == ["[DONE]"]
    assert not upstreams["b2"].generation_bodies, "no retry once bytes have reached the client"
    assert gw.metric("gateway_requests_total", **SERIES, status=str(status)) == 1
    assert gw.metric("gateway_requests_total", **SERIES, status="200") is None
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind=kind) == 1
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0
    assert fake.streams[0].closed
    assert gw.metric("gateway_stream_resumes_total", arm="smol-plain", outcome="not_allowed") == 1
    assert gw.metric("gateway_stream_resumes_total", arm="smol-plain", outcome="resumed") == 0


async def test_upstream_error_event_is_relayed_once_and_counted(gw: Gateway, upstreams: Upstreams) -> None:
    upstreams["b1"].upstream_error_event = True  # vLLM's own: data: {"error": ...} then data: [DONE]

    events = gw.events(await gw.generate(stream=True))

    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert [e["error"]["message"] for e in errors] == ["engine died"]
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert gw.metric("gateway_requests_total", **SERIES, status="502") == 1
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="stream") == 1


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "server": ("gateway.test", 80),
        "client": ("127.0.0.1", 50000),
    }


async def test_client_disconnect_cancels_a_non_streaming_request(gw: Gateway, upstreams: Upstreams) -> None:
    """Issue 18 #3: a client that left a non-streaming request used to leave it running upstream."""
    fake = upstreams["b1"]
    fake.fail = "hang_body"  # headers and part of the body, then nothing
    body = compact(request_body("chat"))
    sent: list[dict[str, Any]] = []

    async def upstream_answering() -> None:  # the upstream is answering: now the client goes away
        while not fake.streams:
            await asyncio.sleep(0.01)

    receive = leaving_client(body, upstream_answering)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = asyncio.ensure_future(gw.app(_scope(body), receive, send))
    done, _ = await asyncio.wait({app}, timeout=5)
    if not done:
        app.cancel()
        pytest.fail("the gateway kept waiting on the upstream after the client disconnected")
    app.result()

    [stream] = fake.streams
    assert stream.closed, "the upstream response was closed (vLLM aborts the generation)"
    assert not upstreams["b2"].generation_bodies, "no failover for a client that left"
    assert gw.metric("gateway_requests_total", **SERIES, status="499") == 1
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="timeout") == 0  # exported at 0 from start-up
    assert gw.metric("gateway_backend_up", backend="b1") == 1


async def test_client_disconnect_mid_stream_closes_the_upstream(gw: Gateway, upstreams: Upstreams) -> None:
    fake = upstreams["b1"]
    fake.stream_fault, fake.stream_fault_after = "hang", 3  # role, "Hello", " world", then nothing more
    body = compact(request_body("chat", stream=True))
    sent: list[dict[str, Any]] = []
    seen_three_chunks = asyncio.Event()
    receive = leaving_client(body, seen_three_chunks.wait)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if sum(1 for m in sent if m["type"] == "http.response.body" and m.get("body")) == 3:
            seen_three_chunks.set()

    app = asyncio.ensure_future(gw.app(_scope(body), receive, send))
    done, _ = await asyncio.wait({app}, timeout=5)  # not wait_for: a swallowed cancel would pass silently
    if not done:
        app.cancel()
        pytest.fail("the gateway kept relaying after the client disconnected")
    app.result()

    start = sent[0]
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    assert (b"x-route-backend", b"b1") in start["headers"]
    received = b"".join(m.get("body", b"") for m in sent[1:])
    assert received.count(b"data: ") == 3
    assert b"[DONE]" not in received and b'"error"' not in received, "nothing is written to a gone client"
    [stream] = fake.streams
    assert stream.generator_exited, "the upstream read was cancelled"
    assert stream.closed, "the upstream response was closed"
    assert not stream.finished
    assert gw.metric("gateway_requests_total", **SERIES, status="499") == 1
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="stream") == 0  # exported at 0 from start-up
    assert gw.metric("gateway_backend_up", backend="b1") == 1, "a client leaving is not the backend's fault"


@pytest.mark.parametrize("split_every", [None, 300], ids=["one-read", "many-reads"])
async def test_an_oversized_sse_event_ends_the_stream_instead_of_buffering(
    make_gateway: MakeGateway, upstreams: Upstreams, split_every: int | None
) -> None:
    """issue 18 #9: one 64 MB upstream event was buffered whole (memory 82 -> 215 MB, /health stalled)."""
    fake = upstreams["b1"]
    fake.tokens, fake.split_every = ("Hello", "x" * 5000, "!"), split_every

    async with make_gateway(streaming={"max_event_bytes": 1024}) as gw:
        r = await gw.generate(stream=True)
        assert r.status_code == 200
        events = gw.events(r)
        assert [e["choices"][0]["delta"] for e in events[:2]] == [
            {"role": "assistant", "content": ""},
            {"content": "Hello"},
        ]
        error = events[2]["error"]
        assert (error["type"], error["code"]) == ("upstream_error", "upstream_protocol")
        assert "streaming.max_event_bytes (1024)" in error["message"] and "incomplete" in error["message"]
        assert events[3:] == ["[DONE]"]
        assert "x" * 1000 not in r.text
        assert fake.streams[0].closed and not upstreams["b2"].generation_bodies  # not resumed elsewhere
        assert gw.metric("gateway_requests_total", **SERIES, status="502") == 1
        assert gw.metric("gateway_inflight_requests", backend="b1") == 0

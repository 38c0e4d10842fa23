"""The streamed request's lean path: the generation endpoints beneath FastAPI's stack
(:mod:`gateway.lean_app`), and a stream whose ``[DONE]`` leaves with the end of the response in one
ASGI message (one write) rather than an empty message after it (:mod:`gateway.relay`)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fake_vllm import Gateway, MakeGateway, Upstreams, compact, leaving_client, request_body

from gateway.response_state import KEY, ResponseState

SERIES = {"model": "smol", "strategy": "plain", "endpoint": "chat"}


def _scope(path: str, body: bytes, method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway.test", 80),
    }


async def _call(
    gw: Gateway, scope: dict[str, Any], body: bytes, tasks: set[asyncio.Task[Any] | None] | None = None
) -> list[dict[str, Any]]:
    """Drive the app as uvicorn does: once the response is complete, ``receive`` says the client is gone
    (uvicorn answers ``http.disconnect`` to any receive after the response's last message). ``tasks``
    collects the tasks the messages were sent from."""
    sent: list[dict[str, Any]] = []
    complete = asyncio.Event()
    receive = leaving_client(body, complete.wait)

    async def send(message: dict[str, Any]) -> None:
        assert not complete.is_set(), f"a message after the response's end: {message}"
        sent.append(message)
        if tasks is not None:
            tasks.add(asyncio.current_task())
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete.set()

    async with asyncio.timeout(5):
        await gw.app(scope, receive, send)
    return sent


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_done_leaves_with_the_end_of_the_response(gw: Gateway, upstreams: Upstreams, endpoint: str) -> None:
    body = compact(request_body(endpoint, stream=True, stream_options={"include_usage": True}))
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    sent = await _call(gw, _scope(path, body), body)

    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert all(m["body"] for m in bodies), "no empty message: every write carries events"
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    assert bodies[-1]["body"].endswith(b"data: [DONE]\n\n")
    text = b"".join(m["body"] for m in bodies)
    assert text.count(b"data: [DONE]") == 1
    for event in text.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event  # event boundaries kept
    series = {**SERIES, "endpoint": endpoint}
    assert gw.metric("gateway_requests_total", **series, status="200") == 1
    assert gw.metric("gateway_requests_total", **series, status="499") is None
    [stream] = upstreams["b1"].streams
    assert stream.finished and stream.closed
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0


async def test_the_upstream_is_read_to_its_end_after_done_and_nothing_more_is_sent(
    gw: Gateway, upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What follows ``[DONE]`` is not relayed, and the client's end of the response (which makes uvicorn
    answer the disconnect watcher) does not turn a finished answer into a client disconnect."""
    fake = upstreams["b1"]
    chunks = fake._sse_chunks

    def with_trailer(*args: Any) -> list[bytes]:
        return [*chunks(*args), b'data: {"late":1}\n\n', b": comment\n\n"]

    monkeypatch.setattr(fake, "_sse_chunks", with_trailer)
    body = compact(request_body("chat", stream=True))
    sent = await _call(gw, _scope("/v1/chat/completions", body), body)

    text = b"".join(m.get("body", b"") for m in sent[1:])
    assert text.endswith(b"data: [DONE]\n\n")
    assert b"late" not in text and b"comment" not in text
    [stream] = fake.streams
    assert stream.finished, "the upstream was read to its end (its connection can be reused)"
    assert gw.metric("gateway_requests_total", **SERIES, status="200") == 1
    assert gw.metric("gateway_requests_total", **SERIES, status="499") is None


async def test_generation_endpoints_are_served_beneath_the_framework_stack(gw: Gateway) -> None:
    """Chat and text completions do not go through FastAPI's middlewares and router; every other
    route (and another method on the same path) still does."""

    async def stack(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the framework stack was used")

    gw.app.middleware_stack = stack
    assert (await gw.generate("chat")).status_code == 200
    r = await gw.generate("completions", stream=True)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    r = await gw.client.post("/v1/chat/completions", content=b"{")
    assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
    for method, path in [("GET", "/v1/models"), ("GET", "/v1/chat/completions"), ("POST", "/v1/completions/")]:
        with pytest.raises(AssertionError, match="framework stack"):
            await gw.client.request(method, path)


async def test_an_exception_after_the_stream_started_is_not_answered_with_a_500(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Starlette's ServerErrorMiddleware: the 500 envelope only while nothing was sent; the exception
    reaches the server either way."""

    async def boom(self: Any, send: Any, raw_headers: Any) -> None:
        self.started = True
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        raise RuntimeError("mid-stream bug")

    monkeypatch.setattr("gateway.relay.RelayResponse._relay", boom)
    async with make_gateway() as gw:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(gw.app), base_url="http://gateway.test")
        async with client:
            with pytest.raises(RuntimeError, match="mid-stream bug"):
                await client.post("/v1/chat/completions", json=request_body("chat", stream=True))


async def test_the_drain_cutoff_sees_an_open_stream_without_wrapping_its_messages(gw: Gateway) -> None:
    body = compact(request_body("chat", stream=True))
    scope = _scope("/v1/chat/completions", body)
    state = scope[KEY] = ResponseState()
    seen: list[tuple[bool, bool]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        seen.append((state.started, state.open))

    await asyncio.wait_for(gw.app(scope, receive, send), 5)
    assert seen[0] == (True, True) and all(seen[:-1]), "open from the start of the response"
    assert (state.started, state.open) == (True, False), "closed with its last message"


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [("POST", "/v1/chat/completions", request_body("chat")), ("GET", "/v1/models", None)],
)
async def test_a_plain_answer_is_seen_started_on_either_path(
    gw: Gateway, method: str, path: str, payload: dict[str, Any] | None
) -> None:
    body = compact(payload) if payload is not None else b""
    scope = _scope(path, body, method)
    state = scope[KEY] = ResponseState()
    sent = await _call(gw, scope, body)
    assert sent[0]["status"] == 200
    assert (state.started, state.open) == (True, False)


async def test_events_of_one_read_leave_in_one_message_each_renamed(
    gw: Gateway, upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = upstreams["b1"]
    chunks = fake._sse_chunks
    monkeypatch.setattr(fake, "_sse_chunks", lambda *args: [b"".join(chunks(*args))])  # the whole stream, one read
    body = compact(request_body("chat", stream=True, stream_options={"include_usage": True}))
    sent = await _call(gw, _scope("/v1/chat/completions", body), body)

    [message] = [m for m in sent if m["type"] == "http.response.body"]
    assert message["more_body"] is False
    events = message["body"].split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    for ev in events[:-2]:
        assert b'"model":"smol"' in ev and b"smol-served" not in ev, ev
    assert gw.metric("gateway_requests_total", **SERIES, status="200") == 1


async def test_a_stream_has_one_disconnect_watcher(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for the upstream's headers and the relay watch the client with the same watch, and
    the relay runs in the request's own task (no task of its own, no race of two)."""
    import gateway.disconnect

    watches = 0
    original = gateway.disconnect.DisconnectWatch._watch

    async def counted(self: Any, receive: Any) -> None:
        nonlocal watches
        watches += 1
        await original(self, receive)

    monkeypatch.setattr(gateway.disconnect.DisconnectWatch, "_watch", counted)
    body = compact(request_body("chat", stream=True))
    senders: set[asyncio.Task[Any] | None] = set()
    sent = await _call(gw, _scope("/v1/chat/completions", body), body, senders)
    assert sent[-1]["body"].endswith(b"data: [DONE]\n\n")
    assert watches == 1
    assert senders == {asyncio.current_task()}, "every message is sent from the request's task"
    assert gw.metric("gateway_requests_total", **SERIES, status="200") == 1


async def test_the_drain_cutoff_wraps_no_message_of_the_gateway_app(gw: Gateway) -> None:
    from gateway.server import DrainCutoff

    async def other(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert DrainCutoff(gw.app).wrap is False, "the gateway app keeps the response state itself"
    assert DrainCutoff(other).wrap is True

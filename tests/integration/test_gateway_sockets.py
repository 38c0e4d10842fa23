"""Faults on real sockets, through the production clients (not ``httpx.MockTransport``).

Each test runs twice, with each client ``server.upstream_client`` can name
(:class:`gateway.upstream.AiohttpUpstream`, :class:`gateway.upstream_lean.LeanUpstream`): it starts the
gateway app in-process with it and
raw asyncio upstreams (:mod:`raw_upstream`) on 127.0.0.1 that hang, stall, send garbage, cut an
event in half, reset the connection or answer with something that is not HTTP. Timeouts are set
to fractions of a second so the whole file runs in a few seconds.

Deployment: arm ``smol`` = backends ``b1`` (the faulty one) then ``b2`` (healthy), so failures
before the first byte fail over; arm ``solo`` = backend ``b3`` alone (the faulty one), so the
client sees the error itself.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fake_vllm import app_metric
from raw_upstream import RawUpstream

from gateway.app import create_app
from gateway.settings import Settings

TIMEOUTS = {"connect_s": 0.5, "first_byte_s": 0.4, "idle_s": 0.4, "retry_after_s": 3}


class Deployment:
    def __init__(self, app: Any, client: httpx.AsyncClient, b1: RawUpstream, b2: RawUpstream, b3: RawUpstream) -> None:
        self.app, self.client, self.b1, self.b2, self.b3 = app, client, b1, b2, b3

    async def chat(self, model: str, stream: bool) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return await self.client.post("/v1/chat/completions", json=body)

    def metric(self, name: str, **labels: str) -> float | None:
        return app_metric(self.app, name, **labels)


def events(r: httpx.Response) -> list[Any]:
    assert r.headers["content-type"].startswith("text/event-stream"), r.text
    out: list[Any] = []
    for ev in r.text.split("\n\n")[:-1]:
        assert ev.startswith("data: "), f"only data events reach the client, got {ev!r}"
        data = ev.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Make = Callable[..., AbstractAsyncContextManager[Deployment]]


@pytest.fixture(params=["aiohttp", "lean"])
def deployment(request: pytest.FixtureRequest) -> Make:
    @asynccontextmanager
    async def make(mode: str, b1_url: str | None = None) -> AsyncIterator[Deployment]:
        async with RawUpstream(mode) as b1, RawUpstream("ok") as b2, RawUpstream(mode) as b3:
            settings = Settings.model_validate(
                {
                    "backends": [
                        {"name": "b1", "url": b1_url or b1.url, "served_model": "smol-served", "scrape_metrics": False},
                        {"name": "b2", "url": b2.url, "served_model": "smol-served", "scrape_metrics": False},
                        {"name": "b3", "url": b3.url, "served_model": "smol-served", "scrape_metrics": False},
                    ],
                    "arms": [
                        {"name": "smol-plain", "model": "smol", "backends": ["b1", "b2"]},
                        {"name": "solo-plain", "model": "solo", "backends": ["b3"]},
                    ],
                    "health": {"interval_s": 3600, "unhealthy_after": 2},
                    "timeouts": TIMEOUTS,
                    "server": {"upstream_client": request.param},
                }
            )
            app = create_app(settings)  # no transport: the production client named in the settings
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw.test", timeout=10) as c,
            ):
                yield Deployment(app, c, b1, b2, b3)
        gc.collect()  # the app's cycles go now, not as a multi-ms pause inside a later timing-sensitive test

    return make


async def settle(up: RawUpstream) -> None:
    """Wait until the gateway has closed every connection to ``up`` (nothing leaks)."""
    for _ in range(50):
        if up.open_connections == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{up.open_connections} upstream connection(s) left open")


# ----------------------------------------------------------------------------- before the first byte


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("mode", ["silent", "bad_status"])
async def test_a_hung_or_non_http_backend_fails_over_before_the_first_byte(
    deployment: Make, mode: str, stream: bool
) -> None:
    async with deployment(mode) as d:
        t0 = time.monotonic()
        r = await d.chat("smol", stream)
        assert time.monotonic() - t0 < 3, "bounded by the timeouts, not a hang"
        assert r.status_code == 200, r.text
        assert r.headers["x-route-backend"] == "b2"
        if stream:
            assert events(r)[-1] == "[DONE]"
        kind = "timeout" if mode == "silent" else "protocol"
        assert d.metric("gateway_upstream_errors_total", backend="b1", kind=kind) == 1
        await settle(d.b1)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_hung_only_backend_is_a_504_envelope_within_the_timeout(deployment: Make, stream: bool) -> None:
    async with deployment("silent") as d:
        t0 = time.monotonic()
        r = await d.chat("solo", stream)
        waited = time.monotonic() - t0
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("upstream_error", "upstream_timeout")
        assert 0.3 < waited < 3, f"waited {waited:.2f} s for a 0.4 s timeout"
        await settle(d.b3)


async def test_a_trickling_answer_is_bounded_by_first_byte_s_as_a_whole(deployment: Make) -> None:
    """Issue 18 #3: each byte came within first_byte_s, so the read timeout never fired and a trickle held
    the request for minutes; first_byte_s now bounds the whole non-streaming answer."""
    async with deployment("trickle") as d:
        t0 = time.monotonic()
        r = await d.chat("solo", False)
        waited = time.monotonic() - t0
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert 0.3 < waited < 3, f"waited {waited:.2f} s for a 0.4 s whole-answer timeout (the trickle takes ~20 s)"
        assert d.metric("gateway_upstream_errors_total", backend="b3", kind="timeout") == 1
        await settle(d.b3)


async def test_a_refused_connection_fails_over_and_takes_the_backend_out_at_once(deployment: Make) -> None:
    async with deployment("ok", b1_url=f"http://127.0.0.1:{closed_port()}") as d:
        assert d.app.state.pool.backends["b1"].healthy is False, "start-up check already failed"
        d.app.state.pool.backends["b1"].healthy = True  # as if it died after the last health check
        r = await d.chat("smol", True)
        assert r.status_code == 200 and r.headers["x-route-backend"] == "b2"
        assert d.metric("gateway_upstream_errors_total", backend="b1", kind="connect") == 1
        assert d.metric("gateway_backend_up", backend="b1") == 0
        ready = (await d.client.get("/ready")).json()
        assert ready["ready"] is True and ready["backends"]["b1"]["healthy"] is False


async def test_a_non_json_200_answer_is_not_passed_on(deployment: Make) -> None:
    async with deployment("not_json") as d:
        r = await d.chat("smol", False)
        assert r.status_code == 200 and r.headers["x-route-backend"] == "b2", "failed over: nothing was sent yet"
        assert r.json()["choices"][0]["message"]["content"] == "Hello"
        r = await d.chat("solo", False)
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("upstream_error", "upstream_protocol")
        assert "<html>" not in err["message"]
        assert d.metric("gateway_upstream_errors_total", backend="b3", kind="protocol") == 1


# ----------------------------------------------------------------------------- after the first byte


@pytest.mark.parametrize(
    ("mode", "code", "status", "kind"),
    [
        ("stall", "upstream_timeout", "504", "timeout"),  # headers and one event, then silence
        ("garbage", "upstream_protocol", "502", "protocol"),  # bytes that are not SSE, then close
        ("truncated", "upstream_protocol", "502", "protocol"),  # half an event, then close
        ("reset", "upstream_stream", "502", "stream"),  # TCP reset mid-stream
        ("bad_event", "upstream_protocol", "502", "protocol"),  # a data event that is not JSON, then [DONE]
    ],
)
async def test_a_broken_stream_ends_with_an_error_event_and_done(
    deployment: Make, mode: str, code: str, status: str, kind: str
) -> None:
    async with deployment(mode) as d:
        t0 = time.monotonic()
        r = await d.chat("solo", True)
        assert time.monotonic() - t0 < 3
        assert r.status_code == 200, "the status line left before the failure"
        evs = events(r)
        assert evs[-1] == "[DONE]" and evs.count("[DONE]") == 1
        for e in evs[:-2]:
            assert "choices" in e and e["model"] == "solo", f"only well-formed chunks before the error: {e}"
        error = evs[-2]["error"]
        assert (error["type"], error["code"]) == ("upstream_error", code)
        assert "incomplete" in error["message"] or "malformed" in error["message"]
        series = {"model": "solo", "strategy": "plain", "endpoint": "chat"}
        assert d.metric("gateway_requests_total", **series, status=status) == 1
        assert d.metric("gateway_upstream_errors_total", backend="b3", kind=kind) == 1
        assert d.metric("gateway_inflight_requests", backend="b3") == 0
        await settle(d.b3)

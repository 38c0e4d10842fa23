"""Failover before the first byte: a backend that refuses, times out, answers 5xx or drops the body is
replaced by the next one (same arm first, then the next-ranked arm), and the failure is counted."""

from __future__ import annotations

import asyncio

import pytest
from fake_vllm import TOKENS, Gateway, MakeGateway, Upstreams, vllm_error

FAULTS = [
    # fault on b1, upstream error kind counted, b1 still up afterwards (one timeout or 5xx is tolerated)
    ("connect", "connect", False),
    ("connect_timeout", "connect_timeout", True),
    ("read_timeout", "timeout", True),
    (500, "http_5xx", True),
    (503, "http_5xx", True),
    ("broken_body", "stream", True),
]
# a streamed body that breaks after its headers is relayed, not retried: see test_gateway_streaming
CASES = [(*f, stream) for f in FAULTS for stream in (False, True) if not (f[0] == "broken_body" and stream)]


@pytest.mark.parametrize(("fault", "kind", "still_up", "stream"), CASES)
async def test_first_backend_fails_before_first_byte_second_answers(
    gw: Gateway, upstreams: Upstreams, fault: str | int, kind: str, still_up: bool, stream: bool
) -> None:
    upstreams["b1"].fail = fault
    upstreams["b1"].fail_body = vllm_error("engine overloaded", "InternalServerError", 500)

    r = await gw.generate(stream=stream)

    assert r.status_code == 200, r.text
    assert r.headers["x-route-backend"] == "b2"
    assert r.headers["x-route-arm"] == "smol-plain"
    if stream:
        chunks = gw.events(r)
        assert chunks[-1] == "[DONE]"
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "".join(TOKENS)
    else:
        assert r.json()["model"] == "smol"
    assert len(upstreams["b1"].generation_bodies) == 1, "b1 was tried first"
    assert len(upstreams["b2"].generation_bodies) == 1
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind=kind) == 1
    assert gw.metric("gateway_upstream_errors_total", backend="b2", kind=kind) == 0  # exported at 0 from start-up
    assert gw.metric("gateway_backend_up", backend="b1") == (1 if still_up else 0)
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint="chat", status="200") == 1


async def test_repeated_timeouts_take_a_backend_out_after_unhealthy_after(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    upstreams["b1"].fail = "read_timeout"
    # a cool-down this short keeps neither the breaker nor the "last request failed" ranking in the way
    async with make_gateway(health={"breaker_cooldown_s": 0.000001, "breaker_after": 100}) as gw:
        for _ in range(3):
            r = await gw.generate()
            assert r.status_code == 200
            assert r.headers["x-route-backend"] == "b2"

        assert len(upstreams["b1"].generation_bodies) == 2, "health.unhealthy_after=2 timeouts, then b1 is skipped"
        assert gw.metric("gateway_backend_up", backend="b1") == 0
        assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="timeout") == 2

        upstreams["b1"].fail = None
        await gw.pool.check_all()  # a passing /health brings it back
        assert gw.metric("gateway_backend_up", backend="b1") == 1
        assert (await gw.generate()).headers["x-route-backend"] == "b1"


async def test_a_backend_that_passes_health_but_hangs_on_requests_leaves_service(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    """Issue 18 #1: /health passes, requests time out. Least-loaded stops preferring it after one
    failure; request failures in a row open its breaker whatever /health says; after the cool-down one
    trial request decides."""
    upstreams["b1"].fail = "read_timeout"  # health still passes
    cooldown = 0.3
    async with make_gateway(health={"breaker_after": 2, "breaker_cooldown_s": cooldown}) as gw:
        for _ in range(4):
            r = await gw.generate()
            assert r.status_code == 200 and r.headers["x-route-backend"] == "b2"
            await gw.pool.check_all()  # /health passes: b1 stays healthy
        assert len(upstreams["b1"].generation_bodies) == 1, "b1 failed once: not preferred again within a cool-down"
        assert gw.metric("gateway_backend_up", backend="b1") == 1
        assert gw.metric("gateway_backend_breaker_open", backend="b1") == 0

        await asyncio.sleep(cooldown + 0.05)  # b1 competes by load again, fails a second time in a row: open
        assert (await gw.generate()).headers["x-route-backend"] == "b2"
        assert len(upstreams["b1"].generation_bodies) == 2
        assert gw.metric("gateway_backend_breaker_open", backend="b1") == 1
        await gw.pool.check_all()
        ready = (await gw.client.get("/ready")).json()["backends"]["b1"]
        assert ready["healthy"] is True and ready["breaker"] == "open"
        upstreams["b2"].fail = "connect"  # even with b2 gone, an open breaker sends nothing to b1
        r = await gw.generate()
        assert r.status_code in (502, 503) and len(upstreams["b1"].generation_bodies) == 2

        upstreams["b1"].fail = None
        await asyncio.sleep(cooldown + 0.05)  # half-open: one trial request, which succeeds and closes it
        r = await gw.generate()
        assert r.status_code == 200 and r.headers["x-route-backend"] == "b1"
        assert gw.metric("gateway_backend_breaker_open", backend="b1") == 0
        assert (await gw.client.get("/ready")).json()["backends"]["b1"]["breaker"] == "closed"


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("connect", 503, "no_healthy_backend"),
        ("read_timeout", 504, "upstream_timeout"),
        (503, 502, "upstream_http_5xx"),
    ],
)
async def test_every_backend_of_the_arm_failing_is_an_error_envelope(
    gw: Gateway, upstreams: Upstreams, fault: str | int, status: int, code: str | int
) -> None:
    for name in ("b1", "b2"):
        upstreams[name].fail = fault
        upstreams[name].fail_body = vllm_error(f"{name} overloaded", "ServiceUnavailableError", 503)

    r = await gw.generate()

    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code
    if fault == 503:
        assert err["message"] == "backend 'b2' answered HTTP 503: b2 overloaded", "the last upstream's own message"
    else:
        assert "b2" in err["message"]
    if fault == "connect":  # refused: known down, as if marked unhealthy (issue 17)
        assert r.headers["retry-after"] == "5" and err["type"] == "service_unavailable"
    assert len(upstreams["b1"].generation_bodies) == len(upstreams["b2"].generation_bodies) == 1
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint="chat", status=str(status)) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_the_only_backend_of_an_arm_just_died_is_503_with_retry_after_not_502(
    gw: Gateway, upstreams: Upstreams, stream: bool
) -> None:
    """Issue 17: a refused connection proves the backend is down, so the request that finds it out
    gets the same 503 + Retry-After as the requests after it (which find it marked unhealthy)."""
    upstreams["b3"].fail = "connect"  # coder-spec's only backend died since the last health check

    first, second = await gw.generate(model="coder", stream=stream), await gw.generate(model="coder", stream=stream)

    for r in (first, second):
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "no_healthy_backend"
    assert "b3 refused the connection" in first.json()["error"]["message"]
    assert len(upstreams["b3"].generation_bodies) == 1, "the second request is not sent to a backend known down"
    assert gw.metric("gateway_upstream_errors_total", backend="b3", kind="connect") == 1
    series = {"model": "coder", "strategy": "speculative-ngram-k4", "endpoint": "chat"}
    assert gw.metric("gateway_requests_total", **series, status="503") == 1  # the second: refused at admission
    assert gw.metric("gateway_requests_total", **series, status="502") is None


async def test_auto_fails_over_to_the_next_ranked_arm(gw: Gateway, upstreams: Upstreams) -> None:
    upstreams["b1"].fail = upstreams["b2"].fail = "connect"

    r = await gw.generate(model="auto", stream=True)

    assert r.status_code == 200
    assert (r.headers["x-route-arm"], r.headers["x-route-backend"], r.headers["x-route-reason"]) == (
        "coder-spec",
        "b3",
        "failover",
    )
    assert {c["model"] for c in gw.events(r)[:-1]} == {"coder"}
    assert upstreams["b3"].generation_bodies[0]["model"] == "coder-served"
    assert gw.metric("gateway_failovers_total", model="coder", strategy="speculative-ngram-k4") == 1
    assert gw.metric("gateway_failovers_total", model="smol", strategy="plain") is None
    assert gw.metric("gateway_arm_info", arm="smol-plain", model="smol", strategy="plain", backend="b2") == 1


async def test_max_attempts_bounds_the_retries(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    upstreams["b1"].fail = "connect"
    async with make_gateway(max_attempts=1) as gw:
        r = await gw.generate()

    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_connect"
    assert not upstreams["b2"].generation_bodies

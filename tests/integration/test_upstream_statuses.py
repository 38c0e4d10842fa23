"""What an upstream's error status becomes for the client (issue 18, item 9): a 429 keeps its
``Retry-After``; a 5xx from every backend is a 502 ``upstream_error`` naming the upstream status,
never a 500 (which would read as the gateway's own bug)."""

from __future__ import annotations

import pytest
from fake_vllm import Gateway, Upstreams, vllm_error


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_429_keeps_its_retry_after(gw: Gateway, upstreams: Upstreams, stream: bool) -> None:
    for name in ("b1", "b2"):
        upstreams[name].fail = 429
        upstreams[name].fail_body = vllm_error("too many requests", "RateLimitError", 429)
        upstreams[name].fail_headers = {"retry-after": "7"}
    r = await gw.generate(stream=stream)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["message"] == "too many requests"
    assert len(upstreams["b1"].generation_bodies) + len(upstreams["b2"].generation_bodies) == 1  # a 4xx: no retry


async def test_a_bad_upstream_retry_after_is_not_passed_on(gw: Gateway, upstreams: Upstreams) -> None:
    for name in ("b1", "b2"):
        upstreams[name].fail = 429
        upstreams[name].fail_headers = {"retry-after": "x" * 200}
    r = await gw.generate()
    assert r.status_code == 429 and "retry-after" not in r.headers


@pytest.mark.parametrize("status", [500, 503, 504])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_5xx_reaches_the_client_as_502(
    gw: Gateway, upstreams: Upstreams, status: int, stream: bool
) -> None:
    for name in ("b1", "b2"):
        upstreams[name].fail = status
        upstreams[name].fail_body = vllm_error("engine overloaded", "InternalServerError", status)
    r = await gw.generate(stream=stream)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and err["code"] == "upstream_http_5xx"
    assert f"HTTP {status}" in err["message"] and "engine overloaded" in err["message"]
    assert r.headers["x-request-id"]
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint="chat", status="502") == 1

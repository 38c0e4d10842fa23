"""API keys, per-key rate limits, request caps and readiness while draining, against fake upstreams."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_vllm import Gateway, MakeGateway, request_body

from gateway.auth import hash_key

KEY_A, KEY_OPS = "sk-team-a-Zk3q9", "sk-ops-Pp0w7"
KEYS = {
    "keys": [
        {"name": "team-a", "sha256": hash_key(KEY_A), "models": ["smol"]},
        {"name": "ops", "sha256": hash_key(KEY_OPS)},
    ]
}
BEARER_A = {"authorization": f"Bearer {KEY_A}"}
GENERATION = [
    ("post", "/v1/chat/completions", request_body("chat")),
    ("post", "/v1/completions", request_body("completions")),
    ("post", "/v1/route", request_body("chat")),
    ("get", "/v1/models", None),
]


@pytest.fixture
async def secured(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with make_gateway(auth=KEYS) as gw:
        yield gw


def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def call(gw: Gateway, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    if method == "get":
        return await gw.client.get(path, headers=headers)
    return await gw.client.post(path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), GENERATION)
@pytest.mark.parametrize(
    ("headers", "code", "challenge"),
    [
        ({}, "missing_api_key", 'Bearer realm="llm-gateway"'),
        ({"authorization": "Bearer sk-wrong"}, "invalid_api_key", 'Bearer realm="llm-gateway", error="invalid_token"'),
        ({"x-api-key": "sk-wrong"}, "invalid_api_key", 'Bearer realm="llm-gateway", error="invalid_token"'),
        ({"authorization": f"Basic {KEY_A}"}, "invalid_api_key", 'Bearer realm="llm-gateway", error="invalid_token"'),
    ],
    ids=["missing", "wrong-bearer", "wrong-x-api-key", "not-bearer"],
)
async def test_api_routes_need_a_key(
    secured: Gateway, method: str, path: str, body: Any, headers: dict[str, str], code: str, challenge: str
) -> None:
    r = await call(secured, method, path, body, headers)

    err = error_of(r, 401)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, None)
    assert r.headers["www-authenticate"] == challenge
    assert not any(u.generation_bodies for u in secured.upstreams.values())
    assert secured.metric("gateway_rejected_requests_total", reason="unauthorized", key="none") == 1


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_probes_and_metrics_stay_open(secured: Gateway, path: str) -> None:
    assert (await secured.client.get(path)).status_code == 200


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {KEY_OPS}"}, {"x-api-key": KEY_OPS}])
async def test_a_valid_key_passes(secured: Gateway, headers: dict[str, str]) -> None:
    r = await secured.client.post("/v1/chat/completions", json=request_body("chat", "coder"), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "coder"


async def test_without_keys_no_key_is_needed(gw: Gateway) -> None:
    assert (await gw.generate()).status_code == 200
    assert (await gw.client.get("/v1/models")).status_code == 200


async def test_a_model_the_key_may_not_use_looks_like_a_model_that_does_not_exist(secured: Gateway) -> None:
    forbidden = await secured.client.post("/v1/chat/completions", json=request_body("chat", "coder"), headers=BEARER_A)
    missing = await secured.client.post("/v1/chat/completions", json=request_body("chat", "gpt-9"), headers=BEARER_A)

    for r, model in ((forbidden, "coder"), (missing, "gpt-9")):
        err = error_of(r, 404)
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "model_not_found", "model")
        assert err["message"] == (
            f"The model '{model}' does not exist or you do not have access to it; available: smol, auto"
        )
    assert not secured.upstreams["b3"].generation_bodies
    assert secured.metric("gateway_rejected_requests_total", reason="model_not_allowed", key="team-a") == 1
    models = (await secured.client.get("/v1/models", headers=BEARER_A)).json()
    assert [m["id"] for m in models["data"]] == ["smol", "auto"]


async def test_auto_routes_only_among_the_keys_models(secured: Gateway) -> None:
    for name in ("b1", "b2"):
        secured.upstreams[name].running = 50.0  # smol is busy; least-loaded alone would pick coder
    await secured.pool.check_all()

    r = await secured.client.post("/v1/chat/completions", json=request_body("chat", "auto"), headers=BEARER_A)
    assert r.status_code == 200, r.text
    assert r.headers["x-route-model"] == "smol"
    ops = await secured.client.post("/v1/route", json=request_body("chat", "auto"), headers={"x-api-key": KEY_OPS})
    assert ops.json()["model"] == "coder"

    pinned = await secured.client.post(
        "/v1/chat/completions", json=request_body("chat", "auto", route={"arm": "coder-spec"}), headers=BEARER_A
    )
    err = error_of(pinned, 400)
    assert err["message"] == "unknown arm 'coder-spec' for model 'auto'; arms: smol-plain"
    assert not secured.upstreams["b3"].generation_bodies


async def test_requests_per_minute_give_429_with_retry_after(make_gateway: MakeGateway) -> None:
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "rpm": 2}]}
    async with make_gateway(auth=keys) as gw:
        for _ in range(2):
            assert (await gw.generate(stream=False)).status_code == 401
            r = await gw.client.post("/v1/chat/completions", json=request_body("chat"), headers=BEARER_A)
            assert r.status_code == 200, r.text
        r = await gw.client.post("/v1/completions", json=request_body("completions"), headers=BEARER_A)

        err = error_of(r, 429)
        assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert len(gw.upstreams["b1"].generation_bodies + gw.upstreams["b2"].generation_bodies) == 2
        assert gw.metric("gateway_rejected_requests_total", reason="rate_limit_requests", key="team-a") == 1
        assert gw.metric(
            "gateway_requests_total", model="unknown", strategy="none", endpoint="completions", status="429"
        )


async def test_dry_runs_are_charged_to_the_request_budget_not_the_tokens(make_gateway: MakeGateway) -> None:
    """Issue 18 #6: /v1/route dry runs were charged to no budget (free routing of 4 MB prompts)."""
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "rpm": 2, "tpm": 60}]}
    async with make_gateway(auth=keys) as gw:
        big = request_body("chat", max_tokens=50)  # estimated at 53 tokens: a chat would take most of tpm
        for _ in range(2):
            assert (await gw.client.post("/v1/route", json=big, headers=BEARER_A)).status_code == 200
        dry = await gw.client.post("/v1/route", json=big, headers=BEARER_A)
        r = await gw.client.post("/v1/chat/completions", json=request_body("chat"), headers=BEARER_A)

        for resp in (dry, r):
            err = error_of(resp, 429)
            assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded"), "requests, never tokens"
        assert not gw.upstreams["b1"].generation_bodies and not gw.upstreams["b2"].generation_bodies
        assert gw.metric("gateway_rejected_requests_total", reason="rate_limit_requests", key="team-a") == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_tokens_per_minute_are_corrected_with_the_real_usage(make_gateway: MakeGateway, stream: bool) -> None:
    # The fake answers with usage.total_tokens = 10. Each request below is estimated at
    # ceil(len("Say hello.") / 4) + 50 = 53 tokens: without the correction the second one would
    # find 100 - 53 = 47 left and be refused.
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "tpm": 100}]}
    async with make_gateway(auth=keys) as gw:
        for _ in range(2):
            r = await gw.client.post(
                "/v1/chat/completions", json=request_body("chat", max_tokens=50, stream=stream), headers=BEARER_A
            )
            assert r.status_code == 200, r.text
            assert r.text.endswith("data: [DONE]\n\n") if stream else r.json()["usage"]["total_tokens"] == 10
        big = await gw.client.post("/v1/chat/completions", json=request_body("chat", max_tokens=95), headers=BEARER_A)

        err = error_of(big, 429)
        assert (err["type"], err["code"]) == ("tokens", "rate_limit_exceeded")
        assert int(big.headers["retry-after"]) >= 1
        assert gw.metric("gateway_rejected_requests_total", reason="rate_limit_tokens", key="team-a") == 1


async def test_tools_count_against_tokens_per_minute(make_gateway: MakeGateway) -> None:
    """14 requests carrying 410 kB of tools each were all admitted at once against tpm 3000."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"description": "d" * 410_000}}}
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "tpm": 3000}]}
    async with make_gateway(auth=keys, server={"max_body_bytes": 1_000_000}) as gw:
        body = request_body("chat", max_tokens=5, tools=[tool])
        # a stopped clock: no refill between requests, however slowly a loaded machine runs them (the
        # first answer's usage gives back all but 10 of its estimate, 0.2 s of refill from admitting
        # the next request whole)
        gw.app.state.proxy.admission.limiter.clock = lambda: 1000.0
        codes = [
            (await gw.client.post("/v1/chat/completions", json=body, headers=BEARER_A)).status_code for _ in range(14)
        ]
        assert codes[0] == 200  # a full bucket admits one request larger than a minute's budget
        assert codes[1:] == [429] * 13
        assert len(gw.upstreams["b1"].generation_bodies) + len(gw.upstreams["b2"].generation_bodies) == 1


async def test_a_request_that_fails_upstream_gives_its_tokens_back(make_gateway: MakeGateway) -> None:
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY_A), "tpm": 100}]}
    async with make_gateway(auth=keys) as gw:
        for name in ("b1", "b2"):
            gw.upstreams[name].fail = 400
        for _ in range(3):
            r = await gw.client.post("/v1/chat/completions", json=request_body("chat", max_tokens=90), headers=BEARER_A)
            assert r.status_code == 400
        gw.upstreams["b1"].fail = gw.upstreams["b2"].fail = None
        ok = await gw.client.post("/v1/chat/completions", json=request_body("chat", max_tokens=90), headers=BEARER_A)
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("fields", "param", "reason"),
    [
        ({"max_tokens": 65}, "max_tokens", "max_tokens"),
        ({"max_completion_tokens": 65}, "max_completion_tokens", "max_tokens"),
        ({"n": 3}, "n", "n"),
        ({"messages": [{"role": "user", "content": "hi"}] * 3}, "messages", "messages"),
    ],
)
async def test_over_a_cap_is_400_naming_the_field(
    make_gateway: MakeGateway, fields: dict[str, Any], param: str, reason: str
) -> None:
    async with make_gateway(limits={"max_tokens": 64, "max_n": 2, "max_messages": 2}) as gw:
        r = await gw.generate(**fields)
        dry = await gw.client.post("/v1/route", json=request_body("chat", **fields))

        for resp in (r, dry):
            err = error_of(resp, 400)
            assert (err["type"], err["param"]) == ("invalid_request_error", param)
            assert err["message"].startswith(f"{param}: ")
        assert not gw.upstreams["b1"].generation_bodies and not gw.upstreams["b2"].generation_bodies
        assert gw.metric("gateway_rejected_requests_total", reason=reason, key="none") == 2
        ok = await gw.generate(max_tokens=64, n=2, messages=[{"role": "user", "content": "hi"}] * 2)
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "1000000"}, "max_tokens"),
        ({"max_tokens": 1000000.0}, "max_tokens"),
        ({"max_tokens": 8.0}, "max_tokens"),  # under the cap, still not an integer: never forwarded as such
        ({"max_completion_tokens": "1000000"}, "max_completion_tokens"),
        ({"n": "100"}, "n"),
        ({"n": 100.0}, "n"),
        ({"n": True}, "n"),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions", "route"])
async def test_a_capped_field_as_a_string_or_float_is_400_naming_it(
    make_gateway: MakeGateway, fields: dict[str, Any], param: str, endpoint: str
) -> None:
    """Issue 18 #2: "1000000" and 1000000.0 used to pass lax validation and then skip the int-only cap."""
    async with make_gateway(limits={"max_tokens": 64, "max_n": 2}) as gw:
        if endpoint == "route":
            r = await gw.client.post("/v1/route", json=request_body("chat", **fields))
        else:
            r = await gw.generate(endpoint, **fields)

        err = error_of(r, 400)
        assert (err["type"], err["param"]) == ("invalid_request_error", param)
        assert err["message"].startswith(f"{param}: ")
        assert not gw.upstreams["b1"].generation_bodies and not gw.upstreams["b2"].generation_bodies


async def test_keys_never_reach_logs_or_metrics(secured: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await secured.client.post("/v1/chat/completions", json=request_body("chat"), headers=BEARER_A)
    await secured.client.post("/v1/chat/completions", json=request_body("chat"), headers={"x-api-key": KEY_OPS + "x"})
    await secured.client.post("/v1/chat/completions", json=request_body("chat", "coder"), headers=BEARER_A)
    secured.upstreams["b1"].fail = secured.upstreams["b2"].fail = "connect"
    await secured.client.post("/v1/chat/completions", json=request_body("chat"), headers=BEARER_A)

    exposition = secured.app.state.metrics.exposition().decode()
    for secret in (KEY_A, KEY_OPS, hash_key(KEY_A), hash_key(KEY_OPS)):
        assert secret not in caplog.text
        assert secret not in exposition
    assert 'key="team-a"' in exposition
    assert all("authorization" not in r.headers for u in secured.upstreams.values() for r in u.requests)


async def test_ready_is_503_while_draining(gw: Gateway) -> None:
    assert (await gw.client.get("/ready")).status_code == 200
    gw.app.state.draining = True

    r = await gw.client.get("/ready")
    assert r.status_code == 503
    assert r.json()["draining"] is True and r.json()["ready"] is False
    assert (await gw.client.get("/health")).status_code == 200

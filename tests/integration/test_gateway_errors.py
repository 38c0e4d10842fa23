"""Every error path leaves in OpenAI's envelope ``{"error": {message, type, param, code}}`` with the right status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fake_vllm import Gateway, MakeGateway, Upstreams, compact, request_body, vllm_error


def envelope(r: httpx.Response) -> dict[str, Any]:
    """The error object, after checking the envelope's shape."""
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"model": "smol", "messages": [', "not valid JSON"),
        (b"", "request body is empty"),
        (b'["model", "smol"]', "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_unparseable_body_is_400(gw: Gateway, content: bytes, message: str) -> None:
    r = await gw.client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})

    assert r.status_code == 400
    err = envelope(r)
    assert err["type"] == "invalid_request_error"
    assert message in err["message"]
    assert not gw.upstreams["b1"].generation_bodies


@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        ("chat", {"temperature": "hot"}, "temperature"),
        ("chat", {"temperature": 3}, "temperature"),
        ("chat", {"max_tokens": "ten"}, "max_tokens"),
        ("chat", {"max_tokens": 0}, "max_tokens"),
        ("chat", {"n": 0}, "n"),
        ("chat", {"top_p": 0}, "top_p"),
        ("chat", {"stream": [True]}, "stream"),
        ("chat", {"stream": "false"}, "stream"),
        ("chat", {"stream": True, "stream_options": {"include_usage": "no"}}, "stream_options.include_usage"),
        ("chat", {"stream_options": "usage"}, "stream_options"),
        ("chat", {"messages": "hi"}, "messages"),
        ("chat", {"messages": []}, "messages"),
        ("chat", {"messages": [{"content": "no role"}]}, "messages.0.role"),
        ("chat", {"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        ("chat", {"model": 7}, "model"),
        ("chat", {"model": ""}, "model"),
        ("chat", {"route": {"prefer": "cheap"}}, "route.prefer"),
        ("chat", {"route": {"colour": "red"}}, "route.colour"),
        ("completions", {"prompt": {"text": "hi"}}, "prompt"),
        ("completions", {"max_tokens": -1}, "max_tokens"),
    ],
)
async def test_wrong_field_is_400_naming_the_param(
    gw: Gateway, endpoint: str, fields: dict[str, Any], param: str
) -> None:
    body = request_body(endpoint, **fields)
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"

    r = await gw.client.post(path, json=body)

    assert r.status_code == 400, r.text
    err = envelope(r)
    assert (err["type"], err["param"]) == ("invalid_request_error", param)
    assert param in err["message"]
    assert not gw.upstreams["b1"].generation_bodies


async def test_missing_messages_is_400(gw: Gateway) -> None:
    r = await gw.client.post("/v1/chat/completions", json={"model": "smol"})

    assert r.status_code == 400
    assert envelope(r)["param"] == "messages"


async def test_explicit_nulls_are_accepted_as_in_openai_api(gw: Gateway) -> None:
    r = await gw.generate(stream=None, n=None, stream_options=None, max_tokens=None, temperature=None)

    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smol"


async def test_body_over_the_limit_is_413(make_gateway: MakeGateway) -> None:
    filler = "x" * 2048
    async with make_gateway(server={"max_body_bytes": 1024}) as gw:
        small = await gw.generate(max_tokens=1)
        declared = await gw.generate(padding=filler)

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted while reading
            yield compact(request_body("chat"))[:-1]
            yield b', "padding": "' + filler.encode() + b'"}'

        streamed = await gw.client.post("/v1/chat/completions", content=chunked())

    assert small.status_code == 200
    for r in (declared, streamed):
        assert r.status_code == 413
        err = envelope(r)
        assert (err["type"], err["code"]) == ("invalid_request_error", "payload_too_large")
        assert "1024" in err["message"]
    assert "content-length" not in streamed.request.headers


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_unknown_model_is_404_model_not_found(gw: Gateway, endpoint: str) -> None:
    r = await gw.generate(endpoint, model="gpt-17")

    assert r.status_code == 404
    err = envelope(r)
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", "model", "model_not_found")
    assert "gpt-17" in err["message"] and "smol" in err["message"], "the message lists the available models"
    assert gw.metric("gateway_requests_total", model="unknown", strategy="none", endpoint=endpoint, status="404") == 1


async def test_no_healthy_backend_is_503_with_retry_after(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    upstreams["b1"].healthy = upstreams["b2"].healthy = False
    async with make_gateway(timeouts={"retry_after_s": 9}) as gw:
        r = await gw.generate(stream=True)
        other = await gw.generate(model="coder")

    assert r.status_code == 503
    assert r.headers["retry-after"] == "9"
    err = envelope(r)
    assert (err["type"], err["code"]) == ("service_unavailable", "no_healthy_backend")
    assert "smol" in err["message"]
    assert not upstreams["b1"].generation_bodies and not upstreams["b2"].generation_bodies
    assert other.status_code == 200, "another model's arm is unaffected"


async def test_pinned_arm_of_another_model_is_400(gw: Gateway) -> None:
    r = await gw.generate(route={"arm": "coder-spec"})

    assert r.status_code == 400
    err = envelope(r)
    assert err["param"] == "route.arm"  # as for an arm that does not exist (no existence oracle)
    assert "coder-spec" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "payload", "message", "etype", "param"),
    [
        (
            400,
            vllm_error(
                "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens.",
                "BadRequestError",
                400,
                "max_tokens",
            ),
            "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens.",
            "BadRequestError",
            "max_tokens",
        ),
        (
            404,
            vllm_error("The model `smol-served` does not exist.", "NotFoundError", 404, "model"),
            "The model `smol-served` does not exist.",
            "NotFoundError",
            "model",
        ),
        (422, b'{"detail":"Unprocessable Entity"}', "Unprocessable Entity", "invalid_request_error", None),
        (429, b"Too Many Requests", "Too Many Requests", "invalid_request_error", None),
    ],
)
async def test_upstream_4xx_passes_through_with_status_and_message(
    gw: Gateway, status: int, payload: bytes, message: str, etype: str, param: str | None, stream: bool
) -> None:
    gw.upstreams["b1"].fail, gw.upstreams["b1"].fail_body = status, payload

    r = await gw.generate(stream=stream, max_tokens=4096)

    assert r.status_code == status
    err = envelope(r)
    assert (err["message"], err["type"], err["param"]) == (message, etype, param)
    assert r.headers["x-route-backend"] == "b1"
    assert not gw.upstreams["b2"].generation_bodies, "a client error is not retried elsewhere"
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="http_4xx") == 1
    assert gw.metric("gateway_backend_up", backend="b1") == 1, "a 4xx says nothing about the backend's health"
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint="chat", status=str(status)) == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nope", 404), ("POST", "/v2/chat/completions", 404), ("GET", "/v1/chat/completions", 405)],
)
async def test_unknown_route_is_an_envelope_too(gw: Gateway, method: str, path: str, status: int) -> None:
    r = await gw.client.request(method, path)

    assert r.status_code == status
    err = envelope(r)
    assert err["type"] == "invalid_request_error"
    assert path in err["message"]
    if status == 404:
        assert err["code"] == "not_found"


async def test_unexpected_exception_is_a_500_envelope_without_details(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    async with make_gateway() as gw:
        gw.app.state.catalog.candidates = None  # any call now raises TypeError inside the handler
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(gw.app, raise_app_exceptions=False), base_url="http://gateway.test"
        )
        async with client:
            r = await client.post("/v1/chat/completions", json=request_body("chat"))

    assert r.status_code == 500
    err = envelope(r)
    assert err["code"] == "internal_error"
    assert "TypeError" not in err["message"]


# ----------------------------------------------------------------------------- issue 18 #4: input that got a 500


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-route-max-latency-ms", b"\xb2"),  # latin-1 "²": str.isdigit() accepts it, int() does not
        ("x-route-max-latency-ms", b"1\xb9"),
        ("x-route-max-ttft-ms", b"9" * 4301),  # past Python's int() digit limit
        ("x-route-max-ttft-ms", b"1" * 11),  # longer than any sensible bound
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
async def test_a_bad_millisecond_header_is_400_naming_the_flag(
    gw: Gateway, header: str, value: bytes, path: str
) -> None:
    r = await gw.client.post(path, json=request_body("chat"), headers={header: value})

    assert r.status_code == 400, r.text
    err = envelope(r)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == header
    assert not gw.upstreams["b1"].generation_bodies


@pytest.mark.parametrize("depth", [254, 255, 600, 1024, 1025])
async def test_a_deeply_nested_body_is_400_not_500(gw: Gateway, depth: int) -> None:
    """orjson.loads takes 1,024 levels, orjson.dumps (the upstream request) only 254."""
    nested = b"[" * (depth - 1) + b"]" * (depth - 1)  # inside the body object: depth levels in all
    content = b'{"model":"smol","messages":[{"role":"user","content":"hi"}],"x_extra":' + nested + b"}"
    r = await gw.client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})

    if depth <= 254:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    assert envelope(r)["type"] == "invalid_request_error"
    assert not gw.upstreams["b1"].generation_bodies


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "7", "completion_tokens": "3", "total_tokens": "10"},
        {"prompt_tokens": [7], "completion_tokens": {"n": 3}, "total_tokens": None},
        {"prompt_tokens": -7, "completion_tokens": 1.5, "total_tokens": True},
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_non_numeric_upstream_usage_is_still_a_200_and_counted(
    gw: Gateway, upstreams: Upstreams, usage: dict[str, Any], stream: bool
) -> None:
    upstreams["b1"].usage = upstreams["b2"].usage = usage

    r = await gw.generate(stream=stream, stream_options={"include_usage": True} if stream else None)

    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]")
    series = {"model": "smol", "strategy": "plain", "endpoint": "chat"}
    assert gw.metric("gateway_requests_total", **series, status="200") == 1

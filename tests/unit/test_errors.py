"""The error hierarchy rendered as OpenAI's envelope, and upstream error bodies read back into it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyBackend,
    PayloadTooLarge,
    UpstreamError,
    UpstreamHTTPError,
    _parse_upstream_error,
    error_response,
)
from gateway.protocol import ErrorResponse
from gateway.sse import error_event


@pytest.mark.parametrize(
    ("exc", "status", "error", "headers"),
    [
        (
            InvalidRequest("temperature: too hot", param="temperature"),
            400,
            {"message": "temperature: too hot", "type": "invalid_request_error", "param": "temperature", "code": None},
            {},
        ),
        (
            PayloadTooLarge("too big"),
            413,
            {"message": "too big", "type": "invalid_request_error", "param": None, "code": "payload_too_large"},
            {},
        ),
        (
            ModelNotFound("no such model", param="model"),
            404,
            {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found"},
            {},
        ),
        (
            NoHealthyBackend("all down", headers={"retry-after": "5"}),
            503,
            {"message": "all down", "type": "service_unavailable", "param": None, "code": "no_healthy_backend"},
            {"retry-after": "5"},
        ),
        (
            UpstreamError("refused", kind="connect"),
            502,
            {"message": "refused", "type": "upstream_error", "param": None, "code": "upstream_connect"},
            {},
        ),
        (
            UpstreamError("slow", kind="timeout", status=504),
            504,
            {"message": "slow", "type": "upstream_error", "param": None, "code": "upstream_timeout"},
            {},
        ),
        (
            GatewayError("oops", code="internal_error"),
            500,
            {"message": "oops", "type": "internal_error", "param": None, "code": "internal_error"},
            {},
        ),
    ],
)
def test_error_response_renders_the_envelope(
    exc: GatewayError, status: int, error: dict[str, Any], headers: dict[str, str]
) -> None:
    r = error_response(exc)

    assert r.status_code == status
    assert r.media_type == "application/json"
    assert orjson.loads(r.body) == {"error": error}
    ErrorResponse.model_validate_json(r.body)  # the documented schema
    for k, v in headers.items():
        assert r.headers[k] == v


def test_error_headers_merge_with_the_exceptions_own() -> None:
    r = error_response(NoHealthyBackend("down", headers={"retry-after": "3"}), {"x-route-arm": "a"})
    assert (r.headers["retry-after"], r.headers["x-route-arm"]) == ("3", "a")


def test_class_defaults_are_not_shared_between_instances() -> None:
    a = InvalidRequest("a", code="custom")
    b = InvalidRequest("b")
    a.headers["x"] = "1"
    assert (b.code, b.headers) == (None, {})


VLLM_NOT_FOUND = (
    b'{"error":{"message":"The model `nope` does not exist. Valid aliases: smollm2.",'
    b'"type":"NotFoundError","param":"model","code":404}}'
)


@pytest.mark.parametrize(
    ("payload", "status", "parsed"),
    [
        (
            VLLM_NOT_FOUND,
            404,
            ("The model `nope` does not exist. Valid aliases: smollm2.", "NotFoundError", "model", 404),
        ),
        (
            b'{"error":{"message":"max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)",'
            b'"type":"BadRequestError","param":"max_tokens","code":400}}',
            400,
            (
                "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)",
                "BadRequestError",
                "max_tokens",
                400,
            ),
        ),
        # older vLLM: the error fields at the top level
        (
            b'{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}',
            400,
            ("bad", "BadRequestError", None, 400),
        ),
        # FastAPI's own errors
        (b'{"detail":"Not Found"}', 404, ("Not Found", "invalid_request_error", None, None)),
        # no type given: chosen by status
        (b'{"error":{"message":"engine dead"}}', 500, ("engine dead", "upstream_error", None, None)),
        # plain-text bodies (proxies, load balancers)
        (b"Internal Server Error", 500, ("Internal Server Error", "upstream_error", None, None)),
        (b"  Too Many Requests\n", 429, ("Too Many Requests", "invalid_request_error", None, None)),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            502,
            ("<html><body>502 Bad Gateway</body></html>", "upstream_error", None, None),
        ),
        # empty bodies
        (b"", 503, ("upstream returned HTTP 503", "upstream_error", None, None)),
        (b"   ", 400, ("upstream returned HTTP 400", "invalid_request_error", None, None)),
        # JSON without a message: the raw text
        (b'{"error":"boom"}', 500, ('{"error":"boom"}', "upstream_error", None, None)),
        (b"[1, 2]", 400, ("[1, 2]", "invalid_request_error", None, None)),
        # undecodable bytes do not raise
        (b"\xff\xfe bad", 500, ("\ufffd\ufffd bad", "upstream_error", None, None)),
    ],
)
def test_parse_upstream_error(payload: bytes, status: int, parsed: tuple[Any, ...]) -> None:
    assert _parse_upstream_error(payload, status) == parsed


def test_long_plain_text_is_truncated() -> None:
    message, *_ = _parse_upstream_error(b"x" * 10_000, 500)
    assert message == "x" * 500


def test_upstream_http_error_keeps_the_upstream_status_and_fields() -> None:
    exc = UpstreamHTTPError(404, VLLM_NOT_FOUND)

    r = error_response(exc)

    assert r.status_code == 404
    assert orjson.loads(r.body)["error"] == {
        "message": "The model `nope` does not exist. Valid aliases: smollm2.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_an_sse_error_event_is_one_data_event_then_done() -> None:
    event = error_event(UpstreamError("gone", kind="stream"))

    first, second, rest = event.split(b"\n\n")
    assert first.startswith(b"data: ")
    assert orjson.loads(first[6:]) == {
        "error": {"message": "gone", "type": "upstream_error", "param": None, "code": "upstream_stream"}
    }
    assert (second, rest) == (b"data: [DONE]", b"")

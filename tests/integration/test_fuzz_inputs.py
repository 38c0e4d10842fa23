"""Fuzzing the inputs issue 18 found a 500 with (run in CI with the rest of the integration tier).

* ``x-route-*`` headers with arbitrary values: any Unicode (sent as UTF-8 bytes), Latin-1, digit
  strings of 0 to 5,000 characters, numbers with signs, fractions, exponents, superscripts and
  non-ASCII digits: never a 5xx; a 400 names the header; always OpenAI's envelope.
* JSON bodies nested 250 to 1,030 levels (every depth, lists, objects and both mixed, in a
  generation body's extra field, a message's content, the ``route`` field, ``/v1/route`` and
  ``/v1/feedback``): 200 or 400, never a 5xx.

Cases are sent in-process on the test's own event loop, as in ``test_fuzz_openapi.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fake_vllm import Upstreams, settings_with
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from router.flags import HEADERS

Send = Callable[[str, bytes, dict[str, bytes]], httpx.Response]
FORBIDDEN = (b"\r", b"\n", b"\x00")  # an HTTP server never delivers these inside a header value
CHAT = {"model": "smol", "messages": [{"role": "user", "content": "Say hello."}]}
NUMERIC = st.from_regex(r"[+-]?[0-9]{0,30}(\.[0-9]{0,30})?([eE][+-]?[0-9]{1,5})?", fullmatch=True)
ODD = st.sampled_from(
    [
        "\u00b2",
        "\u0661\u0662",
        "\uff11\uff12",
        "nan",
        "inf",
        "-0",
        "1e400",
        "0x10",
        "1_000",
        " 5",
        "\u216b",
        "\U0001d7d7",
    ]
)


@pytest.fixture
def send(upstreams: Upstreams) -> Iterator[Send]:
    """``send(path, raw body, headers)``: one request to a started gateway, on this test's own loop."""
    loop = asyncio.new_event_loop()
    app = create_app(
        settings_with(feedback={"path": "/dev/null", "anonymous_rpm": 10**6}),
        transport=httpx.MockTransport(upstreams.handler),
    )
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway.test")

    def post(path: str, body: bytes, headers: dict[str, bytes]) -> httpx.Response:
        all_headers = {"content-type": b"application/json", **headers}
        return loop.run_until_complete(client.post(path, content=body, headers=all_headers))

    yield post
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(lifespan.__aexit__(None, None, None))
    loop.close()


def envelope(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    body = r.json()
    if r.status_code >= 400:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        return dict(body["error"])
    return {}


header_values = st.one_of(
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(st.characters(codec="latin-1"), max_size=300).map(lambda t: t.encode("latin-1")),
    st.text("0123456789", max_size=5000).map(str.encode),
    NUMERIC.map(str.encode),
    ODD.map(lambda t: t.encode("utf-8")),
).filter(lambda v: not any(c in v for c in FORBIDDEN))
route_headers = st.dictionaries(st.sampled_from(sorted(HEADERS.values())), header_values, min_size=1, max_size=3)


@given(headers=route_headers, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/route"]))
@example(headers={"x-route-max-latency-ms": "\u00b2".encode("latin-1")}, path="/v1/chat/completions")
@example(headers={"x-route-max-ttft-ms": b"9" * 4301}, path="/v1/chat/completions")
@example(headers={"x-route-accuracy": b"1e400"}, path="/v1/route")
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_route_headers_with_any_value_never_get_a_5xx(send: Send, headers: dict[str, bytes], path: str) -> None:
    body = CHAT if path != "/v1/completions" else {"model": "smol", "prompt": "Say hello."}
    r = send(path, json.dumps(body).encode(), headers)
    error = envelope(r)
    assert r.status_code in (200, 400, 422), r.text
    if r.status_code == 400:  # the header named, or the pinned arm (one answer for every unknown arm)
        assert error["param"] in headers or (error["param"] == "route.arm" and "x-route-arm" in headers), error


def nested(depth: int, shape: str) -> bytes:
    """A JSON value ``depth`` levels deep, written as text (json.dumps would hit Python's recursion limit)."""
    if shape == "list":
        return b"[" * depth + b"1" + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    half = depth // 2
    return b'{"a":[' * half + (b"[" if depth % 2 else b"") + b"1" + (b"]" if depth % 2 else b"") + b"]}" * half


def _place(where: str, value: bytes) -> tuple[str, bytes, int]:
    """(path, body, levels the body adds around ``value``)."""
    if where == "extra":
        return (
            "/v1/chat/completions",
            b'{"model":"smol","messages":[{"role":"user","content":"hi"}],"x":' + value + b"}",
            1,
        )
    if where == "content":  # messages -> message -> content
        return "/v1/chat/completions", b'{"model":"smol","messages":[{"role":"user","content":' + value + b"}]}", 3
    if where == "route":
        return (
            "/v1/chat/completions",
            b'{"model":"smol","messages":[{"role":"user","content":"hi"}],"route":' + value + b"}",
            1,
        )
    if where == "dry-run":
        return "/v1/route", b'{"model":"smol","prompt":"hi","x":' + value + b"}", 1
    return "/v1/feedback", b'{"id":"x","rating":1,"labels":' + value + b"}", 1


PLACES = ["extra", "content", "route", "dry-run", "feedback"]
SHAPES = ["list", "object", "mixed"]


def test_every_nesting_depth_from_250_to_1030_is_200_or_400(send: Send) -> None:
    seen: dict[int, int] = {}
    for depth in range(250, 1031):
        where, shape = PLACES[depth % len(PLACES)], SHAPES[depth % len(SHAPES)]
        path, body, around = _place(where, nested(depth, shape))
        r = send(path, body, {})
        error = envelope(r)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (depth, where, shape, r.text[:300])
        if where in ("extra", "dry-run") and depth + around < 255:
            assert r.status_code == 200, (depth, where, shape, r.text[:300])
        if depth + around >= 255:
            assert r.status_code == 400 and error["message"], (depth, where, shape)
    assert seen[400] > 700 and seen.get(200, 0) >= 1, seen

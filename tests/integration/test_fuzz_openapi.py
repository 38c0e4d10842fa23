"""Schemathesis against the gateway's own OpenAPI document, with fake vLLM upstreams.

Every documented operation gets generated requests, schema-valid and schema-violating bodies,
headers (``x-route-*``) and all. Whatever arrives, the gateway must not answer 5xx (the fakes
are healthy, so any 5xx is the gateway's bug) and every error must be OpenAI's envelope.

Schemathesis generates the cases from the app's ``/openapi.json``; they are sent in-process
on the test's own event loop (``httpx.ASGITransport``), not through schemathesis' threaded
ASGI client: no thread hop per case keeps the run short on a busy 2-core machine.
``FUZZ_SCALE`` (default 1) multiplies the case counts for a longer run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fake_vllm import Upstreams, settings_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway.app import create_app
from gateway.auth import hash_key

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
# (method, path, generated cases); operations without inputs have a single distinct case.
OPERATIONS = [
    ("POST", "/v1/chat/completions", 400),
    ("POST", "/v1/completions", 400),
    ("POST", "/v1/route", 300),
    ("POST", "/v1/feedback", 150),
    ("POST", "/v1/embeddings", 100),
    ("GET", "/v1/models", 1),
    ("GET", "/v1/models/{model_id}", 60),
    ("GET", "/health", 1),
    ("GET", "/ready", 1),
]
SECURED_CASES = 150
MIN_TOTAL = 1000
KEY = "sk-fuzz-3kq0"
COUNTS: dict[str, int] = {}


@dataclass
class Target:
    schema: Any
    send: Callable[..., httpx.Response]


@pytest.fixture
def make_target(upstreams: Upstreams) -> Iterator[Callable[..., Target]]:
    """``make_target(**settings overrides)``: a started app, its schema, and ``send(case, headers=None)``."""
    loop = asyncio.new_event_loop()
    cleanups: list[Any] = []

    def make(**overrides: Any) -> Target:
        app = create_app(settings_with(**overrides), transport=httpx.MockTransport(upstreams.handler))
        lifespan = app.router.lifespan_context(app)
        loop.run_until_complete(lifespan.__aenter__())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway.test")
        cleanups.extend([client.aclose(), lifespan.__aexit__(None, None, None)])

        def send(case: Any, headers: dict[str, str] | None = None) -> httpx.Response:
            kw = case.as_transport_kwargs(base_url="http://gateway.test", headers=headers)
            content = kw.get("data")
            if "json" in kw:
                content = json.dumps(kw["json"]).encode()  # ASCII escapes, so lone surrogates survive
            elif isinstance(content, str):
                content = content.encode()
            request = client.request(
                kw["method"], kw["url"], headers=kw["headers"], params=kw.get("params") or None, content=content
            )
            return loop.run_until_complete(request)

        return Target(schemathesis.openapi.from_dict(app.openapi()), send)

    yield make
    for coro in reversed(cleanups):
        loop.run_until_complete(coro)
    loop.close()


def check_envelope(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response.headers
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert isinstance(body["error"]["type"], str)


def cases(operation: Any) -> Any:
    return st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )


def test_the_schema_documents_the_request_models(make_target: Callable[..., Target]) -> None:
    raw = make_target().schema.raw_schema
    chat = raw["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    assert "messages" in raw["components"]["schemas"]["ChatCompletionRequest"]["required"]
    assert raw["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"] == [
        "smol",
        "coder",
        "auto",
    ]
    assert {p["name"] for p in chat["parameters"]} >= {"x-route-arm", "x-route-accuracy"}
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "security" not in chat  # no keys configured


@pytest.mark.parametrize(("method", "path", "count"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_no_5xx_and_every_error_is_an_openai_envelope(
    make_target: Callable[..., Target], method: str, path: str, count: int
) -> None:
    target = make_target()
    wanted = max(1, round(count * SCALE))
    seen = 0

    @given(case=cases(target.schema[path][method]))
    @settings(max_examples=wanted, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal seen
        seen += 1
        check_envelope(target.send(case))

    started = time.perf_counter()
    run()
    COUNTS[f"{method} {path}"] = seen
    print(f"{method} {path}: {seen} cases in {time.perf_counter() - started:.1f}s")
    assert seen >= (wanted if count > 1 else 1)


def test_with_keys_every_call_without_the_key_is_401(make_target: Callable[..., Target]) -> None:
    keys = {"keys": [{"name": "fuzz", "sha256": hash_key(KEY), "models": ["smol"], "rpm": 10**6, "tpm": 10**9}]}
    target = make_target(auth=keys)
    assert target.schema.raw_schema["paths"]["/v1/chat/completions"]["post"]["security"]
    wanted = max(1, round(SECURED_CASES * SCALE))
    seen = 0

    @given(case=cases(target.schema["/v1/chat/completions"]["POST"]), with_key=st.booleans())
    @settings(max_examples=wanted, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any, with_key: bool) -> None:
        nonlocal seen
        seen += 1
        response = target.send(case, {"authorization": f"Bearer {KEY}"} if with_key else None)
        check_envelope(response)
        # Without our key the request carries none, or one schemathesis made up: either way, 401.
        assert (response.status_code == 401) is not with_key, response.text

    run()
    COUNTS["POST /v1/chat/completions (keys)"] = seen
    assert seen >= wanted


def test_at_least_a_thousand_cases_ran() -> None:
    if len(COUNTS) < len(OPERATIONS) + 1:
        pytest.skip("counts the whole module's cases (not selected alone)")
    print(f"fuzz cases: {sum(COUNTS.values())} {COUNTS}")
    assert sum(COUNTS.values()) >= MIN_TOTAL * min(SCALE, 1.0), COUNTS

"""The official ``openai`` client against the app in-process (``httpx.ASGITransport``), fake vLLM upstreams.

What an OpenAI user does — chat and completions, streamed or not, models, embeddings — and the
exception class and ``code`` the client raises for each gateway error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from fake_vllm import EMBEDDING_DIM, EMBEDDINGS, TOKENS, USAGE, Gateway, MakeGateway

from gateway.auth import hash_key

TEXT = "".join(TOKENS)
KEY = "sk-client-test-1"


@pytest.fixture
async def egw(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with make_gateway(**EMBEDDINGS) as gateway:
        yield gateway


@pytest.fixture
async def client(egw: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(egw) as c:
        yield c


def openai_client(gw: Gateway, api_key: str = "unused") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(gw.app), base_url="http://gateway.test")
    return openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=api_key, http_client=http, max_retries=0)


async def test_chat(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": "Say hello."}], extra_headers={"x-request-id": "cli-1"}
    )
    answer = raw.parse()

    assert answer.model == "smol" and answer.choices[0].message.content == TEXT
    assert answer.usage is not None and answer.usage.total_tokens == USAGE["total_tokens"]
    assert answer.id == "chatcmpl-cli-1" and raw.headers["x-request-id"] == "cli-1"
    assert raw.headers["x-route-arm"] == "smol-plain"


async def test_chat_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]
    assert {c.model for c in chunks} <= {"smol", "coder"}


@pytest.mark.parametrize("stream", [False, True])
async def test_completions(client: openai.AsyncOpenAI, stream: bool) -> None:
    if stream:
        chunks = [c async for c in await client.completions.create(model="coder", prompt="Say hello.", stream=True)]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
        assert all(c.model == "coder" for c in chunks)
    else:
        answer = await client.completions.create(model="coder", prompt="Say hello.", max_tokens=8)
        assert (answer.model, answer.choices[0].text) == ("coder", TEXT)


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    listed = [m.id async for m in client.models.list()]
    smol = await client.models.retrieve("smol")

    assert listed == ["smol", "coder", "embed", "auto"]
    assert (smol.id, smol.object, smol.owned_by) == ("smol", "model", "llm-gateway")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-4")
    assert caught.value.code == "model_not_found" and caught.value.status_code == 404


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="embed", input=["one two", "three"])

    assert result.model == "embed" and [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == EMBEDDING_DIM
    assert result.usage.prompt_tokens == 3
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="smol", input="x")
    assert caught.value.code == "model_not_found"


async def test_errors_map_to_the_clients_exceptions(egw: Gateway, client: openai.AsyncOpenAI) -> None:
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="nope", messages=hello)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="smol", messages=hello, temperature=3)  # type: ignore[arg-type]
    egw.upstreams["b1"].fail = egw.upstreams["b2"].fail = "connect"
    with pytest.raises(openai.APIStatusError) as down:
        await client.chat.completions.create(model="smol", messages=hello)  # type: ignore[arg-type]

    assert (not_found.value.code, not_found.value.param) == ("model_not_found", "model")
    assert (bad.value.code, bad.value.param, bad.value.status_code) == (None, "temperature", 400)
    assert down.value.status_code in (502, 503) and str(down.value.code).startswith(("upstream_", "no_healthy"))


async def test_auth_and_rate_limit_errors(make_gateway: MakeGateway) -> None:
    keys = {"keys": [{"name": "t", "sha256": hash_key(KEY), "rpm": 1}]}
    async with make_gateway(auth=keys) as gw:
        async with openai_client(gw, "sk-wrong-key") as wrong:
            with pytest.raises(openai.AuthenticationError) as unauthorized:
                await wrong.models.list()
        async with openai_client(gw, KEY) as right:
            await right.completions.create(model="smol", prompt="p")
            with pytest.raises(openai.RateLimitError) as limited:
                await right.completions.create(model="smol", prompt="p")

    assert unauthorized.value.code == "invalid_api_key"
    assert limited.value.code == "rate_limit_exceeded" and limited.value.response.headers["retry-after"]

"""The gateway in front of a second real engine that is not vLLM (issue 17): llama.cpp's OpenAI-compatible
server (``llama-cpp-python[server]``, ``deploy/local/llamacpp-env.sh``) on the SmolLM2 GGUF, driven by the
official ``openai`` client.

What differs from vLLM on the wire, and must not reach the client: events end with ``\\n\\n\\r\\n``, JSON
is written with spaces, the role chunk has no content, the finish chunk an empty delta, no usage chunk is
sent (the gateway makes one up from the token events), and there is neither ``/health`` nor ``/metrics``
(``health_path: /v1/models``, ``scrape_metrics: false``).

Needs no vLLM: the module starts its own llama.cpp server and gateway. ``LLAMACPP_E2E=0`` skips it (on a
machine that cannot compile llama.cpp); ``scripts/test.sh`` builds the environment for the e2e tier.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import LOCAL, free_port, running_gateway

from lab.launcher import BackendSpec, Launcher

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("LLAMACPP_E2E") == "0", reason="LLAMACPP_E2E=0: llama.cpp tests off"),
]

MODEL = "smollm2-135m"
SERVED = "smollm2"
BACKEND = "smol-llamacpp"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def llamacpp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One llama.cpp server of the local stack's file (``deploy/local/backends-llamacpp.yaml``) on a free port."""
    spec = BackendSpec.load(LOCAL / "backends-llamacpp.yaml").only([BACKEND])
    spec = dataclasses.replace(spec, servers=tuple(dataclasses.replace(s, port=free_port()) for s in spec.servers))
    with Launcher(spec, tmp_path_factory.mktemp("llamacpp-logs")) as launcher:
        try:
            running = launcher.start()
        except FileNotFoundError as exc:
            pytest.fail(f"{exc}; or set LLAMACPP_E2E=0 to skip the llama.cpp tests")
        launcher.wait_ready(timeout_s=120, progress=False)
        yield running[0].url


@pytest.fixture(scope="module")
def gateway(llamacpp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "backends": [
            {
                "name": BACKEND,
                "url": llamacpp_url,
                "served_model": SERVED,
                "health_path": "/v1/models",
                "scrape_metrics": False,
            }
        ],
        "arms": [{"name": "smollm2-llamacpp", "model": MODEL, "backends": [BACKEND]}],
        "health": {"interval_s": 1.0},
    }
    with running_gateway(config, Path(tmp_path_factory.mktemp("gateway"))) as url:
        yield url


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


def metric(gateway: str, name: str, **labels: str) -> float:
    text = httpx.get(gateway + "/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            total += float(match[2])
    return total


def test_models_lists_the_public_name(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {MODEL, "auto"}


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert raw.headers["x-route-backend"] == BACKEND
    completion = raw.parse()
    assert completion.model == MODEL, "the served name never leaks"
    assert completion.choices[0].message.content
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_streaming(client: openai.OpenAI, gateway: str, include_usage: bool) -> None:
    before = metric(gateway, "gateway_estimated_usage_total", model=MODEL)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = list(stream)
    assert all(c.model == MODEL for c in chunks)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"],
        ["length"],
    )
    usage = [c.usage for c in chunks if c.usage]
    if include_usage:  # llama.cpp sends none: made up from the token events, one per token
        assert len(usage) == 1 and usage[0] is not None and usage[0].completion_tokens == len(content)
        assert usage[0].prompt_tokens > 0 and usage[0].total_tokens == usage[0].prompt_tokens + len(content)
    else:
        assert usage == []
    assert metric(gateway, "gateway_estimated_usage_total", model=MODEL) == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_completions(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, stream=True))
        assert all(c.model == MODEL for c in chunks)
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    else:
        completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12)
        assert completion.model == MODEL and completion.choices[0].text
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 12


def test_concurrent_streams_all_complete(client: openai.OpenAI) -> None:
    """llama.cpp serves one request at a time; with --interrupt_requests False the second waits rather
    than cutting the first short (which the gateway would report as a truncated answer)."""

    def one(i: int) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=12, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(one, range(3)))
    assert all(texts)


def test_metrics_settle_without_upstream_usage_or_metrics(client: openai.OpenAI, gateway: str) -> None:
    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True))
    assert metric(gateway, "gateway_backend_up", backend=BACKEND) == 1
    assert metric(gateway, "gateway_time_to_first_token_seconds_count", model=MODEL) >= 1
    assert metric(gateway, "gateway_output_tokens_per_second_count", model=MODEL) >= 1
    assert metric(gateway, "gateway_output_tokens_total", model=MODEL) > 0
    assert metric(gateway, "gateway_prompt_tokens_total", model=MODEL) > 0
    assert metric(gateway, "gateway_upstream_errors_total", backend=BACKEND) == 0
    assert metric(gateway, "gateway_requests_total", model=MODEL, status="502") == 0

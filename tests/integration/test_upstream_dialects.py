"""Upstreams that are OpenAI-compatible without writing vLLM's exact bytes (issue 17): SSE framed with
CRLF, JSON written with spaces. The answer, the public model name, the usage chunk and the metrics
must come out as they do for vLLM."""

from __future__ import annotations

import pytest
from fake_vllm import TOKENS, USAGE, Gateway, Upstreams

SERIES = {"model": "smol", "strategy": "plain"}


def dialect(upstreams: Upstreams, name: str, split_every: int | None) -> None:
    for fake in upstreams.values():
        fake.crlf = name in ("crlf", "both")
        fake.spaced = name in ("spaced", "both")
        fake.split_every = split_every


@pytest.mark.parametrize("split_every", [None, 1, 7])
@pytest.mark.parametrize("name", ["crlf", "spaced", "both"])
@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_in_another_dialect_is_relayed_renamed_and_measured(
    gw: Gateway, upstreams: Upstreams, name: str, split_every: int | None, include_usage: bool
) -> None:
    dialect(upstreams, name, split_every)

    r = await gw.generate(stream=True, stream_options={"include_usage": include_usage})

    assert r.status_code == 200
    events = gw.events(r)  # LF-framed: "data: ...\n\n" whatever the upstream wrote
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert not any("error" in e for e in chunks), chunks
    assert all(e["model"] == "smol" for e in chunks), "the served name never leaks"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks if e["choices"])
    assert text == "".join(TOKENS)
    usage_chunks = [e for e in chunks if e.get("usage")]
    assert len(usage_chunks) == (1 if include_usage else 0)
    assert gw.metric("gateway_requests_total", **SERIES, endpoint="chat", status="200") == 1
    assert gw.metric("gateway_output_tokens_total", **SERIES) == USAGE["completion_tokens"]
    assert gw.metric("gateway_time_to_first_token_seconds_count", **SERIES) == 1
    assert gw.metric("gateway_inter_token_latency_seconds_count", **SERIES) == len(TOKENS) - 1, "role chunk no token"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_spaced_json_answer_carries_the_public_model_name(
    gw: Gateway, upstreams: Upstreams, endpoint: str
) -> None:
    dialect(upstreams, "spaced", None)

    r = await gw.generate(endpoint)

    assert r.status_code == 200
    assert r.json()["model"] == "smol"
    assert "smol-served" not in r.text
    assert gw.metric("gateway_output_tokens_total", **SERIES) == USAGE["completion_tokens"]

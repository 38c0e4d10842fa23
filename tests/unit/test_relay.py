"""The relay (gateway/relay.py) driven as an ASGI app against a scripted upstream call: what the client
gets and what the outcome records — usage summed for a PDR stream, dropped or made up, the model
renamed whatever the reads' boundaries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.accounting import Outcome
from gateway.admission import Exchange
from gateway.relay import RelayResponse
from gateway.sse import Rename

HEAD = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 2, "model": "served"}
REFINE_USAGE = {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}
BEFORE = {"prompt_tokens": 60, "completion_tokens": 65, "total_tokens": 125}


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def upstream_events(usage: bool = True, finish: bool = True) -> bytes:
    events = [sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    events += [
        sse({**HEAD, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": reason}]})
        for t, reason in (("The ", None), ("answer ", None), ("42", "stop" if finish else None))
    ]
    if usage:
        events.append(sse({**HEAD, "choices": [], "usage": REFINE_USAGE}))
    return b"".join(events) + b"data: [DONE]\n\n"


class Backend:
    name = "b1"


class ScriptedCall:
    def __init__(self, raw: bytes, size: int) -> None:
        self.pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        self.backend = Backend()
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        self.closed = True


class Ledger:
    def __init__(self) -> None:
        self.finished: list[Outcome] = []

    def finish(self, out: Outcome) -> None:
        self.finished.append(out)


async def relay(
    raw: bytes, *, strip_usage: bool, usage_before: dict[str, int] | None, size: int = 7
) -> tuple[list[Any], Outcome, ScriptedCall]:
    call, ledger = ScriptedCall(raw, size), Ledger()
    out = Outcome(Exchange("rid", "chat", 0.0, body={"messages": [{"role": "user", "content": "x" * 40}]}))
    response = RelayResponse(
        call,  # type: ignore[arg-type]
        {"x-route-arm": "a"},
        Rename.of("served", "public"),
        strip_usage,
        ledger,  # type: ignore[arg-type]
        out,
        usage_before,
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response({"type": "http"}, receive, send)
    body = b"".join(m.get("body", b"") for m in sent)
    events = [
        orjson.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]"
        for e in body.split(b"\n\n")
        if e and not e.startswith(b":")  # comments: x-usage-estimated
    ]
    assert ledger.finished == [out]
    return events, out, call


@pytest.mark.parametrize("size", [1, 7, 10_000])
async def test_a_pdr_stream_carries_the_usage_of_every_stage(size: int) -> None:
    events, out, call = await relay(upstream_events(), strip_usage=False, usage_before=BEFORE, size=size)

    summed = {"prompt_tokens": 100, "completion_tokens": 72, "total_tokens": 172}
    usage_chunks = [e for e in events if e != "[DONE]" and e.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["usage"] == summed
    assert usage_chunks[0]["choices"] == [] and usage_chunks[0]["id"] == "chatcmpl-s"
    assert all(e["model"] == "public" for e in events if e != "[DONE]"), "renamed across any read boundary"
    assert events[-1] == "[DONE]"
    assert out.usage == summed and out.stream_tokens == 7, "tokens/s counts the streamed call's tokens only"
    assert out.first_token_at is not None and len(out.itl) == 2 and out.error is None
    assert call.closed


async def test_the_usage_chunk_is_dropped_unless_asked_but_still_counted() -> None:
    events, out, _ = await relay(upstream_events(), strip_usage=True, usage_before=BEFORE)

    assert not any(e != "[DONE]" and e.get("usage") for e in events)
    assert out.usage is not None and out.usage["completion_tokens"] == 72


@pytest.mark.parametrize("strip_usage", [False, True])
async def test_a_usage_chunk_is_made_up_from_the_earlier_stages_when_upstream_sends_none(strip_usage: bool) -> None:
    events, out, _ = await relay(upstream_events(usage=False), strip_usage=strip_usage, usage_before=BEFORE)

    assert events[-1] == "[DONE]"
    made_up = [e for e in events if e != "[DONE]" and e.get("usage")]
    with_refine = {"prompt_tokens": 60, "completion_tokens": 68, "total_tokens": 128}  # + 3 token events
    if strip_usage:
        assert made_up == []
    else:
        assert made_up == [{**HEAD, "model": "public", "choices": [], "usage": with_refine}]
    assert out.usage == with_refine and out.usage_estimated and out.stream_tokens == 3


async def test_a_single_call_stream_passes_usage_through() -> None:
    events, out, _ = await relay(upstream_events(), strip_usage=False, usage_before=None)

    assert [e["usage"] for e in events if e != "[DONE]" and e.get("usage")] == [REFINE_USAGE]
    assert out.usage == REFINE_USAGE


async def test_a_stream_ending_without_done_ends_with_an_error_event() -> None:
    raw = upstream_events().removesuffix(b"data: [DONE]\n\n")
    events, out, _ = await relay(raw, strip_usage=True, usage_before=BEFORE)

    assert events[-2]["error"]["code"] == "upstream_protocol" and events[-1] == "[DONE]"
    assert out.error is not None and out.error.status == 502


@pytest.mark.parametrize("strip_usage", [False, True])
async def test_a_single_call_stream_without_usage_gets_a_made_up_one_marked_estimated(strip_usage: bool) -> None:
    events, out, _ = await relay(upstream_events(usage=False), strip_usage=strip_usage, usage_before=None)

    made_up = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}  # 40 characters / 4; 3 token events
    assert [e["usage"] for e in events if e != "[DONE]" and e.get("usage")] == ([] if strip_usage else [made_up])
    assert out.usage == made_up and out.usage_estimated and out.stream_tokens == 3 and out.error is None


async def test_an_upstream_usage_is_never_marked_estimated() -> None:
    _, out, _ = await relay(upstream_events(), strip_usage=True, usage_before=None)

    assert out.usage == REFINE_USAGE and not out.usage_estimated


@pytest.mark.parametrize("usage_before", [None, BEFORE])
async def test_done_before_any_finish_reason_is_a_truncated_answer(usage_before: dict[str, int] | None) -> None:
    events, out, _ = await relay(upstream_events(finish=False), strip_usage=False, usage_before=usage_before)

    assert events[-2]["error"]["code"] == "upstream_protocol" and "finish_reason" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert out.error is not None and out.error.status == 502


# llama.cpp's server (llama-cpp-python 0.3.36, seen on the wire): events end with "\n\n\r\n", JSON is
# spaced, the role chunk has no content, the finish chunk an empty delta, and no usage chunk is sent.
LLAMACPP = b"".join(
    b"data: " + json_line + b"\n\n\r\n"
    for json_line in (
        b'{"id": "c1", "model": "served", "object": "chat.completion.chunk", "choices": [{"index": 0, '
        b'"delta": {"role": "assistant"}, "logprobs": null, "finish_reason": null}]}',
        *(
            b'{"id": "c1", "model": "served", "object": "chat.completion.chunk", "choices": [{"index": 0, '
            b'"delta": {"content": "%s"}, "logprobs": null, "finish_reason": null}]}' % t
            for t in (b"The", b" answer", b" 42")
        ),
        b'{"id": "c1", "model": "served", "object": "chat.completion.chunk", "choices": [{"index": 0, '
        b'"delta": {}, "logprobs": null, "finish_reason": "stop"}]}',
        b"[DONE]",
    )
)


@pytest.mark.parametrize("size", [1, 5, 10_000])
async def test_a_llamacpp_stream_is_relayed_whole_renamed_and_counted(size: int) -> None:
    events, out, _ = await relay(LLAMACPP, strip_usage=False, usage_before=None, size=size)

    chunks = [e for e in events if e != "[DONE]"]
    assert events[-1] == "[DONE]" and not any("error" in e for e in chunks)
    assert all(e["model"] == "public" for e in chunks)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in chunks if e["choices"]) == "The answer 42"
    assert len(out.itl) == 2, "three content tokens: the role chunk and the empty finish delta are no tokens"
    assert out.usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13} and out.usage_estimated
    assert chunks[-1]["usage"] == out.usage and chunks[-1]["id"] == "c1"

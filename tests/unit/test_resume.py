"""The seam of a resumed stream (gateway/resume.py), table-driven: what may be resumed, the
continuation's body and length limits, what was delivered, the rewritten events and the usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.resume import Delivered, Seam, continuation_body, delivered, joined_usage, refusal, remaining_limits
from gateway.sse import SEP

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
TEXT = {"model": "m", "prompt": "Once", "stream": True}
HEAD = {"id": "chatcmpl-a", "object": "chat.completion.chunk", "created": 1, "model": "smol"}


def ev(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj)


def chunk(delta: dict[str, Any], finish: str | None = None, head: dict[str, Any] = HEAD) -> bytes:
    return ev({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


@pytest.mark.parametrize(
    ("endpoint", "extra", "reason"),
    [
        ("chat", {}, None),
        ("chat", {"temperature": 0.9, "seed": 3, "n": 1, "logprobs": False}, None),  # sampling: resumed, not identical
        ("chat", {"n": 2}, "n"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"use_beam_search": True}, "beam_search"),
        ("chat", {"logprobs": True}, "logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("completions", {"logprobs": 0}, "logprobs"),  # 0 still asks for the sampled token's logprob
        ("completions", {"echo": True}, "echo"),
        ("chat", {"tools": [{"type": "function"}]}, "tools"),
        ("chat", {"tools": [{"type": "function"}], "tool_choice": "none"}, None),
        ("chat", {"functions": [{"name": "f"}]}, "tools"),
        ("chat", {"response_format": {"type": "json_schema"}}, "structured_output"),
        ("chat", {"response_format": {"type": "text"}}, None),
        ("chat", {"guided_regex": "a+"}, "structured_output"),
        ("completions", {"prompt": ["a", "b"]}, "prompt"),
        ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_refusal(endpoint: str, extra: dict[str, Any], reason: str | None) -> None:
    body = {**(CHAT if endpoint == "chat" else TEXT), **extra}
    assert refusal(endpoint, body) == reason  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "tokens", "expected"),
    [
        ({}, 5, {}),  # no limit set: none added
        ({"max_tokens": 10}, 4, {"max_tokens": 6}),
        ({"max_completion_tokens": 10}, 9, {"max_completion_tokens": 1}),
        ({"max_tokens": 10, "max_completion_tokens": 8}, 3, {"max_tokens": 7, "max_completion_tokens": 5}),
        ({"max_tokens": 10}, 10, None),  # nothing left to generate
        ({"max_tokens": 10}, 12, None),  # a lower-bound count can only be exceeded by a bad upstream
        ({"max_tokens": 10, "max_completion_tokens": 3}, 3, None),
        ({"min_tokens": 5, "max_tokens": 20}, 3, {"min_tokens": 2, "max_tokens": 17}),
        ({"min_tokens": 5}, 9, {"min_tokens": 0}),
        ({"max_tokens": True}, 1, {}),  # not an integer: left as the client sent it
    ],
)
def test_remaining_limits(body: dict[str, Any], tokens: int, expected: dict[str, int] | None) -> None:
    assert remaining_limits(body, tokens) == expected


def test_chat_continuation_appends_the_delivered_text_as_a_partial_assistant_turn() -> None:
    body = {**CHAT, "max_tokens": 50, "temperature": 0, "tools": None, "x_extra": {"kept": 1}}
    out = continuation_body("chat", body, "The answer is", 3)
    assert out is not None
    assert out["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is"}]
    assert (out["continue_final_message"], out["add_generation_prompt"]) == (True, False)
    assert out["max_tokens"] == 47 and out["x_extra"] == {"kept": 1} and out["temperature"] == 0
    assert body["messages"] == CHAT["messages"] and body["max_tokens"] == 50, "the original body is not changed"


def test_a_client_partial_answer_is_extended_not_repeated() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure: "}]
    body = {**CHAT, "messages": messages, "continue_final_message": True, "add_generation_prompt": False}
    out = continuation_body("chat", body, "one, two", 2)
    assert out is not None and out["messages"][1:] == [{"role": "assistant", "content": "Sure: one, two"}]
    assert messages[1]["content"] == "Sure: "


def test_completion_continuation_extends_the_prompt() -> None:
    out = continuation_body("completions", {**TEXT, "max_tokens": 8}, " upon a", 2)
    assert out == {**TEXT, "prompt": "Once upon a", "max_tokens": 6}


def test_nothing_delivered_is_the_same_request_and_nothing_left_is_none() -> None:
    assert continuation_body("chat", {**CHAT, "max_tokens": 4}, "", 0) == {**CHAT, "max_tokens": 4}
    assert continuation_body("chat", {**CHAT, "max_tokens": 4}, "a b c d", 4) is None


@pytest.mark.parametrize(
    ("usage", "before", "expected"),
    [
        ({"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}, 5, (7, 11, 18)),
        ({"prompt_tokens": 7, "completion_tokens": 3}, 0, (7, 3, 10)),
        ({"prompt_tokens": 2, "completion_tokens": 1}, 5, (0, 6, 6)),  # never a negative prompt
        ({"prompt_tokens": "x", "completion_tokens": None}, 4, (0, 4, 4)),  # malformed counts are 0
    ],
)
def test_joined_usage(usage: dict[str, Any], before: int, expected: tuple[int, int, int]) -> None:
    out = joined_usage(usage, before)
    assert (out["prompt_tokens"], out["completion_tokens"], out["total_tokens"]) == expected


def test_delivered_reads_back_text_tokens_and_the_stream_head() -> None:
    sent = [
        chunk({"role": "assistant", "content": ""}) + SEP + chunk({"content": "Héllo"}) + SEP,
        chunk({"content": " wörld"}) + SEP + b": a comment" + SEP,
        chunk({"content": ""}) + SEP,  # an empty delta is no token
    ]
    d = delivered(sent, "chat")
    assert (d.text, d.tokens, d.id, d.created, d.role_sent) == ("Héllo wörld", 2, "chatcmpl-a", 1, True)
    assert not d.finished and not d.tool_calls
    d = delivered([*sent, chunk({"content": "!"}, finish="stop") + SEP], "chat")
    assert d.finished and d.text.endswith("!")
    tool = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})
    assert delivered([tool + SEP], "chat").tool_calls


def test_delivered_completions() -> None:
    head = {"id": "cmpl-a", "object": "text_completion", "created": 1, "model": "smol"}
    events = [ev({**head, "choices": [{"index": 0, "text": t, "finish_reason": None}]}) for t in (" upon", " a")]
    usage = ev({**head, "choices": [], "usage": {"prompt_tokens": 1}})
    d = delivered([SEP.join([*events, usage]) + SEP], "completions")
    assert (d.text, d.tokens, d.role_sent) == (" upon a", 2, False)


def test_the_seam_takes_the_first_parts_id_and_created_and_drops_the_second_role_chunk() -> None:
    first = Delivered(text="Hi", tokens=1, id="chatcmpl-a", created=1, role_sent=True)
    seam = Seam(first, 1)
    theirs = {**HEAD, "id": "chatcmpl-a-r1", "created": 99}
    assert seam.event(chunk({"role": "assistant", "content": ""}, head=theirs)) is None
    out = seam.event(chunk({"content": ' "id":"chatcmpl-a-r1"'}, head=theirs))
    assert out is not None
    doc = orjson.loads(out[5:])
    assert (doc["id"], doc["created"]) == ("chatcmpl-a", 1)
    assert doc["choices"][0]["delta"]["content"] == ' "id":"chatcmpl-a-r1"', "text that looks like the id is kept"
    later = seam.event(chunk({"role": "assistant", "content": "x"}, head=theirs))
    assert later is not None and b'"id":"chatcmpl-a"' in later
    assert seam.usage({"prompt_tokens": 9, "completion_tokens": 2}) == {
        "prompt_tokens": 8,
        "completion_tokens": 3,
        "total_tokens": 11,
    }


def test_a_seam_without_a_role_chunk_before_keeps_the_continuations() -> None:
    seam = Seam(Delivered(id="chatcmpl-a", created=1), 0)  # nothing reached the client but the headers
    assert seam.event(chunk({"role": "assistant", "content": ""})) is not None

"""SSE framing, usage and the model rename (gateway/sse.py), table-driven."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.sse import (
    EventSplitter,
    EventTooLarge,
    Rename,
    compact,
    has_finish,
    is_spaced,
    is_token_event,
    summed,
    usage_event,
    usage_of,
)

STREAM = b'data: {"a":1}\n\ndata: {"b":2}\n\n: ping\n\ndata: [DONE]\n\n'
EVENTS = [b'data: {"a":1}', b'data: {"b":2}', b": ping", b"data: [DONE]"]


def split(chunks: list[bytes]) -> list[bytes]:
    splitter, out = EventSplitter(), []
    for chunk in chunks:
        out += splitter.feed(chunk) or []
    out += splitter.end() or []
    assert splitter.buf == b""
    return out


def pieces(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_split_on_any_line_end_across_any_reads(line_end: bytes, size: int) -> None:
    raw = STREAM.replace(b"\n", line_end)
    assert split(pieces(raw, size)) == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_extra_blank_lines_between_events_are_dropped(size: int) -> None:
    # llama.cpp's server (sse-starlette) ends every event with "\n\n\r\n": three line ends
    raw = b"".join(e + b"\n\n\r\n" for e in EVENTS)
    assert split(pieces(raw, size)) == EVENTS


def test_an_incomplete_event_waits_for_its_blank_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a":1}\r\n') is None
    assert splitter.feed(b"\r") is None  # maybe half of a CRLF
    assert splitter.feed(b"\ndata: x") == [b'data: {"a":1}']
    assert splitter.buf == b"data: x"


@pytest.mark.parametrize(
    ("doc", "dump"),
    [
        ({"id": "x", "model": "served", "usage": {"total_tokens": 3}}, lambda d: json.dumps(d, separators=(",", ":"))),
        ({"id": "x", "model": "served", "usage": {"total_tokens": 3}}, json.dumps),
        ({"model": "served", "choices": [{"text": '"model":"served"'}]}, json.dumps),
    ],
)
def test_a_body_is_renamed_whatever_its_spacing(doc: dict[str, Any], dump: Any) -> None:
    content = dump(doc).encode()
    renamed = Rename.of("served", "public").body(content, orjson.loads(content))
    assert orjson.loads(renamed)["model"] == "public"
    assert orjson.loads(renamed)["choices" if "choices" in doc else "usage"] == doc.get("choices", doc.get("usage"))


def test_a_body_of_another_model_is_left_alone() -> None:
    content = b'{"model": "other"}'
    assert Rename.of("served", "public").body(content, orjson.loads(content)) is content


@pytest.mark.parametrize(
    ("event", "spaced"),
    [
        (b'data: {"id":"x","choices":[{"delta":{"content":"a\\": b"}}]}', False),
        (b'data: {"id": "x", "model": "m"}', True),
        (b'data:{"id":"x"}', False),
        (b"data: {}", False),
    ],
)
def test_spaced_json_is_told_by_its_first_key(event: bytes, spaced: bool) -> None:
    assert is_spaced(event) is spaced


def test_compact_rewrites_spaced_json_and_keeps_what_is_not_json() -> None:
    assert compact(b'data: {"model": "m", "choices": []}') == b'data: {"model":"m","choices":[]}'
    assert compact(b"data: {nope}") == b"data: {nope}"


def test_usage_is_read_summed_and_made_up() -> None:
    assert usage_of(b'data: {"choices":[],"usage":{"total_tokens":3}}') == {"total_tokens": 3}
    assert usage_of(b'data: {"usage":null}') is None
    assert usage_of(b"data: [1]") is None
    before = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert summed(before, {"prompt_tokens": 10, "completion_tokens": 1}) == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
    }
    made = orjson.loads(usage_event(b'data: {"id":"c","created":1,"model":"m","choices":[{}]}', before)[6:])
    assert made == {
        "object": "chat.completion.chunk",
        "id": "c",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": before,
    }


def test_rename_events_renames_every_event_of_a_read_and_no_text() -> None:
    r = Rename("smol-served", "smol")
    text = '{\\"model\\":\\"smol-served\\"}'  # the needle inside a JSON string is escaped: left alone
    data = (
        b'data: {"id":"a","model":"smol-served","choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"id":"a","model":"smol-served","choices":[{"delta":{"content":"' + text.encode() + b'"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    out = r.events(data)
    assert out.count(b'"model":"smol"') == 2 and b'"model":"smol-served"' not in out
    assert text.encode() in out
    assert r.events(out) == out


@pytest.mark.parametrize(
    ("event", "token"),
    [
        (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}', True),
        (b'data: {"choices":[{"index":0,"text":" the","finish_reason":null}]}', True),
        (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t"}]}}]}', True),
        (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', False),  # vLLM
        (b'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}', False),  # llama.cpp
        (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', False),  # llama.cpp
        (b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}', False),
        (b'data: {"choices":[],"usage":{"total_tokens":3}}', False),
    ],
)
def test_role_only_empty_and_usage_chunks_are_no_tokens(event: bytes, token: bool) -> None:
    assert is_token_event(event) is token


@pytest.mark.parametrize(
    ("event", "finish"),
    [
        (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', True),
        (b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}', False),
        (b'data: {"choices":[{"index":0,"delta":{"content":"\\"finish_reason\\":\\"stop"}}]}', False),
        (b'data: {"choices":[],"usage":{"total_tokens":3}}', False),
    ],
)
def test_a_finish_reason_is_told_from_null_and_from_text(event: bytes, finish: bool) -> None:
    assert has_finish(event) is finish


def test_the_splitter_refuses_an_event_larger_than_its_limit() -> None:
    small = EventSplitter(max_event_bytes=16)
    assert small.feed(b"data: 1\n\ndata: 2") == [b"data: 1"]
    with pytest.raises(EventTooLarge):  # still arriving: never buffered past the limit
        small.feed(b"x" * 20)
    whole = EventSplitter(max_event_bytes=16)
    with pytest.raises(EventTooLarge):  # complete within one read
        whole.feed(b"data: " + b"x" * 20 + b"\n\ndata: 2\n\n")
    ok = EventSplitter(max_event_bytes=16)
    assert ok.feed(b"data: 1\n\n" * 10) == [b"data: 1"] * 10  # a long read of small events is fine

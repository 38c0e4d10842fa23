"""A stream whose backend dies mid-answer is continued on the other backend of its arm (issue 16):
one stream, one id, the text of the uninterrupted answer, its usage, an SSE comment that says so and
``gateway_stream_resumes_total``; refused requests, a second failure and an arm with no other
backend end with the error event as before."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fake_vllm import PATHS, FakeVLLM, Gateway, MakeGateway, Upstreams, request_body

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " dog", ".")
ARM = "smol-plain"


def parse(r: httpx.Response) -> tuple[list[Any], list[str]]:
    """The ``data:`` payloads (JSON-decoded, ``"[DONE]"`` kept) and the comment lines of an SSE body."""
    assert r.status_code == 200, r.text
    assert r.text.endswith("\n\n")
    events: list[Any] = []
    comments: list[str] = []
    for block in r.text.split("\n\n")[:-1]:
        if block.startswith(":"):
            comments.append(block)
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events, comments


def text_of(events: list[Any], endpoint: str) -> str:
    key = "content" if endpoint == "chat" else "text"
    out = ""
    for e in events:
        if isinstance(e, dict) and e.get("choices"):
            c = e["choices"][0]
            out += (c.get("delta", {}) if endpoint == "chat" else c).get(key) or ""
    return out


@pytest.fixture
def words(upstreams: Upstreams) -> Upstreams:
    for name in ("b1", "b2"):
        upstreams[name].tokens = WORDS
    return upstreams


async def stream(gw: Gateway, endpoint: str = "chat", **fields: Any) -> httpx.Response:
    fields.setdefault("stream_options", {"include_usage": True})
    return await gw.client.post(PATHS[endpoint], json=request_body(endpoint, stream=True, **fields))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize(
    ("fault", "kind", "split", "after"),
    [
        ("raise", "stream", None, 4),  # connection reset after some events
        ("end", "protocol", None, 4),  # the body ends without [DONE]
        ("idle", "timeout", None, 4),  # no chunk within timeouts.idle_s
        ("raise", "stream", 61, 9),  # reads that cut events: the half event is not delivered, so not resent
        ("raise", "stream", None, 1),  # chat: the role chunk only (the same request again); completions: "The"
    ],
)
async def test_a_dying_backend_is_continued_on_the_other_replica_into_the_same_stream(
    gw: Gateway, words: Upstreams, endpoint: str, fault: str, kind: str, split: int | None, after: int
) -> None:
    whole = await stream(gw, endpoint)
    events, comments = parse(whole)
    uninterrupted, usage = text_of(events, endpoint), events[-2]["usage"]
    assert uninterrupted == "".join(WORDS) and not comments
    b1, b2 = words["b1"], words["b2"]
    b1.requests.clear(), b2.requests.clear()
    b1.split_every = split
    b1.stream_fault, b1.stream_fault_after = fault, after

    r = await stream(gw, endpoint)

    assert r.headers["x-route-backend"] == "b1"
    events, comments = parse(r)
    assert text_of(events, endpoint) == uninterrupted, "nothing duplicated or dropped at the seam"
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert not [e for e in events if "error" in e]
    data = [e for e in events if isinstance(e, dict)]
    rid = r.headers["x-request-id"]
    assert {e["id"] for e in data} == {f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{rid}"}
    assert {e["model"] for e in data} == {"smol"}
    if endpoint == "chat":
        assert sum("role" in e["choices"][0]["delta"] for e in data if e["choices"]) == 1
        assert "role" in data[0]["choices"][0]["delta"]
    assert data[-1]["usage"] == usage, "the original prompt; completion tokens of both parts"
    (comment,) = comments
    sent = b2.generation_bodies[0]
    if endpoint == "chat" and sent["messages"][-1]["role"] == "user":
        partial = ""
        assert "continue_final_message" not in sent, "nothing generated yet: the same request again"
    elif endpoint == "chat":
        partial = sent["messages"][-1]["content"]
        assert sent["messages"][:-1] == [{"role": "user", "content": "Say hello."}]
        assert (sent["continue_final_message"], sent["add_generation_prompt"]) == (True, False)
    else:
        partial = sent["prompt"].removeprefix("Say hello.")
    tokens = next(k for k in range(len(WORDS) + 1) if "".join(WORDS[:k]) == partial)
    assert comment.startswith(f": x-route-resumed backend=b2 at_tokens={tokens} resume_ms=")
    assert r.text.index(comment) < r.text.index("data: [DONE]")
    if split:
        assert 0 < tokens < after * split // 150, "the cut event was not counted as delivered"
    assert b2.requests[-1].headers["x-request-id"] == f"{rid}-r1"
    assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="resumed") == 1
    assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="failed") == 0
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind=kind) == 1
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint=endpoint, status="200") == 2
    assert gw.metric("gateway_inflight_requests", backend="b1") == gw.metric("gateway_inflight_requests", backend="b2")
    assert gw.metric("gateway_inflight_requests", backend="b2") == 0
    assert b1.streams[-1].closed


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_the_continuation_gets_what_is_left_of_max_tokens(gw: Gateway, words: Upstreams, limit: str) -> None:
    whole, _ = parse(await stream(gw, **{limit: 5}))
    b1 = words["b1"]
    b1.stream_fault, b1.stream_fault_after = "raise", 3  # role, "The", " quick"

    events, comments = parse(await stream(gw, **{limit: 5}))

    assert words["b2"].generation_bodies[-1][limit] == 3
    assert text_of(events, "chat") == text_of(whole, "chat") == "The quick brown fox jumps"
    finish = [e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e["choices"]]
    assert finish[-1] == "length" and finish.count("length") == 1
    assert events[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert comments == [comments[0]] and "at_tokens=2 " in comments[0]


async def test_usage_stays_out_of_the_stream_when_the_client_did_not_ask(gw: Gateway, words: Upstreams) -> None:
    words["b1"].stream_fault, words["b1"].stream_fault_after = "raise", 3

    events, comments = parse(await stream(gw, stream_options=None))

    assert text_of(events, "chat") == "".join(WORDS)
    assert not [e for e in events if isinstance(e, dict) and "usage" in e] and len(comments) == 1
    assert gw.metric("gateway_output_tokens_total", model="smol", strategy="plain") == len(WORDS)
    assert gw.metric("gateway_prompt_tokens_total", model="smol", strategy="plain") == 7


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 2},
        {"logprobs": True, "top_logprobs": 2},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_requests_that_cannot_be_continued_exactly_end_with_the_error_event(
    gw: Gateway, words: Upstreams, fields: dict[str, Any]
) -> None:
    words["b1"].stream_fault, words["b1"].stream_fault_after = "raise", 3

    events, comments = parse(await stream(gw, **fields))

    assert events[-2]["error"]["code"] == "upstream_stream" and events[-1] == "[DONE]"
    assert not comments and not words["b2"].generation_bodies
    assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="not_allowed") == 1
    assert gw.metric("gateway_requests_total", model="smol", strategy="plain", endpoint="chat", status="502") == 1


async def test_a_second_failure_ends_with_the_error_event_after_max_resumes(
    make_gateway: MakeGateway, words: Upstreams
) -> None:
    words["b4"] = FakeVLLM("b4", "smol-served", tokens=WORDS)
    backends = [{"name": n, "url": f"http://{n}.test:8000", "served_model": "smol-served"} for n in ("b1", "b2", "b4")]
    arms = [{"name": ARM, "model": "smol", "backends": ["b1", "b2", "b4"]}]
    for name in ("b1", "b2"):
        words[name].stream_fault, words[name].stream_fault_after = "raise", 3
    async with make_gateway(backends=backends, arms=arms) as gw:
        events, comments = parse(await stream(gw))

        assert text_of(events, "chat") == "The quick brown fox", "b1's two words, then b2's two"
        assert events[-2]["error"]["code"] == "upstream_stream" and events[-1] == "[DONE]"
        assert not comments, "the comment comes with a completed answer only"
        assert not words["b4"].generation_bodies, "streaming.max_resumes: 1"
        assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="resumed") == 1
        assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="failed") == 1
        assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="stream") == 1
        assert gw.metric("gateway_upstream_errors_total", backend="b2", kind="stream") == 1

    async with make_gateway(backends=backends, arms=arms, streaming={"max_resumes": 2}) as gw:
        events, comments = parse(await stream(gw))
        assert text_of(events, "chat") == "".join(WORDS) and len(comments) == 2
        assert [c.split()[2] for c in comments] == ["backend=b2", "backend=b4"]
        assert words["b4"].generation_bodies[-1]["messages"][-1]["content"] == "The quick brown fox"


async def test_an_arm_with_no_other_usable_backend_ends_with_the_error_event(gw: Gateway, words: Upstreams) -> None:
    words["b1"].stream_fault, words["b1"].stream_fault_after = "raise", 3
    words["b2"].fail = "connect"  # died too: the continuation cannot be opened

    events, comments = parse(await stream(gw))

    assert events[-2]["error"]["code"] == "upstream_stream" and events[-1] == "[DONE]" and not comments
    assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="failed") == 1
    assert gw.metric("gateway_stream_resumes_total", arm="coder-spec", outcome="failed") == 0  # exported at 0
    assert gw.metric("gateway_upstream_errors_total", backend="b1", kind="stream") == 1
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0


async def test_a_continuation_that_does_not_start_within_the_deadline_ends_with_the_error_event(
    make_gateway: MakeGateway, words: Upstreams
) -> None:
    words["b1"].stream_fault, words["b1"].stream_fault_after = "raise", 3
    words["b2"].fail = "hang_headers"
    async with make_gateway(streaming={"resume_deadline_s": 0.2}) as gw:
        started = time.monotonic()
        events, comments = parse(await stream(gw))

        assert time.monotonic() - started < 2
        assert text_of(events, "chat") == "The quick" and not comments
        assert events[-2]["error"]["code"] == "upstream_stream" and events[-1] == "[DONE]"
        assert gw.metric("gateway_stream_resumes_total", arm=ARM, outcome="failed") == 1
        assert gw.metric("gateway_inflight_requests", backend="b2") == 0, "the abandoned attempt is released"


async def test_an_answer_whose_finish_reason_was_sent_is_not_continued(gw: Gateway, words: Upstreams) -> None:
    words["b1"].stream_fault, words["b1"].stream_fault_after = "end", 1 + len(WORDS)  # all text, no usage, no [DONE]

    events, _ = parse(await stream(gw))

    assert text_of(events, "chat") == "".join(WORDS) and events[-2]["error"]["code"] == "upstream_protocol"
    assert not words["b2"].generation_bodies

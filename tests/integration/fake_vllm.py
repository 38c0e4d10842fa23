"""Fake vLLM upstreams for the integration tier, and a handle on a gateway app driven in-process.

Each fake speaks like a vLLM OpenAI server (shapes copied from vLLM 0.32): ``/health``, ``/metrics``
with the load gauges, chat and text completions, streamed as SSE with a role chunk, content chunks,
a usage-only chunk (``"choices":[]``) when ``stream_options.include_usage`` is set, and
``data: [DONE]``. A test sets faults on a fake (``fail``, ``stream_fault``) before sending.

A fake with ``spec_tokens`` = k > 0 is a speculative (n-gram) server: ``/metrics`` also carries
vLLM's ``vllm:spec_decode_num_drafts_total``, ``..._num_draft_tokens_total`` and
``..._num_accepted_tokens_total`` counters, moved by every generated answer in a deterministic
way: one draft of k tokens per generated token, of which one is accepted when that token's text
occurs in the prompt (what prompt lookup could have copied) and none otherwise.

The answer is the fake's ``tokens`` (:data:`TOKENS`), cut at ``max_tokens`` (``finish_reason``
``length``). A continuation (a chat whose last message is a partial assistant answer with vLLM's
``continue_final_message: true`` and ``add_generation_prompt: false``, or a completion prompt that
ends with the start of the answer) gets the rest of the answer after that partial text, and a
usage whose prompt counts the partial text's tokens, as vLLM would.

The default deployment (:data:`CONFIG`)::

    arm smol-plain   model "smol"   plain                 backends b1, b2 (served_model smol-served)
    arm coder-spec   model "coder"  speculative-ngram-k4  backend  b3     (served_model coder-served)

Health polling is slowed to once an hour so tests control it (``gw.pool.check_all()``).
:data:`EMBEDDINGS` adds an arm that serves embeddings (``make_gateway(**EMBEDDINGS)``, fake ``b4``).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends import BackendPool
from gateway.settings import Settings

CONFIG: dict[str, Any] = {
    "backends": [
        {"name": "b1", "url": "http://b1.test:8000", "served_model": "smol-served"},
        {"name": "b2", "url": "http://b2.test:8000", "served_model": "smol-served"},
        {"name": "b3", "url": "http://b3.test:8000", "served_model": "coder-served"},
    ],
    "arms": [
        {"name": "smol-plain", "model": "smol", "backends": ["b1", "b2"], "strategy": {"kind": "plain"}},
        {
            "name": "coder-spec",
            "model": "coder",
            "backends": ["b3"],
            "strategy": {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4},
        },
    ],
    "health": {"interval_s": 3600},
}

#: settings overrides adding ``embed`` (model "embed", endpoints [embeddings]) on backend b4
EMBEDDINGS: dict[str, Any] = {
    "backends": [*CONFIG["backends"], {"name": "b4", "url": "http://b4.test:8000", "served_model": "embed-served"}],
    "arms": [*CONFIG["arms"], {"name": "embed", "model": "embed", "backends": ["b4"], "endpoints": ["embeddings"]}],
}

TOKENS = ("Hello", " world", "!")
SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")  # vllm:spec_decode_<name>_total
EMBEDDING_DIM = 4
USAGE = {"prompt_tokens": 7, "total_tokens": 10, "completion_tokens": 3}
PROMPT_TOKENS = USAGE["prompt_tokens"]


def compact(obj: Any) -> bytes:
    """JSON as vLLM writes it (pydantic ``model_dump_json``: no spaces)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(obj: Any) -> bytes:
    return b"data: " + compact(obj) + b"\n\n"


def leaving_client(body: bytes, gone: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` for one request: the whole ``body`` first; the next call waits for ``gone()``
    and answers ``http.disconnect`` (the client has left, or uvicorn after the response's end)."""
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone()
        return {"type": "http.disconnect"}

    return receive


def app_metric(app: Any, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in gateway ``app``'s exposition, or
    ``None`` if it is absent."""
    for family in text_string_to_metric_families(app.state.metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def vllm_error(message: str, etype: str, status: int, param: str | None = None) -> bytes:
    return compact({"error": {"message": message, "type": etype, "param": param, "code": status}})


@dataclass
class Answer:
    """What a fake generates for one request."""

    tokens: list[str]
    prompt_tokens: int
    finish_reason: str


class FakeStream(httpx.AsyncByteStream):
    """An upstream SSE body, yielded one chunk per read, that records how it ended.

    ``fault``: ``None`` (complete stream), ``"end"`` (stops after ``after`` chunks, no ``[DONE]``),
    ``"raise"`` (``httpx.ReadError`` after ``after`` chunks), ``"idle"`` (``httpx.ReadTimeout``),
    ``"hang"`` (waits forever after ``after`` chunks, until cancelled or closed).
    """

    def __init__(self, chunks: list[bytes], fault: str | None = None, after: int = 0) -> None:
        self.chunks = chunks
        self.fault = fault
        self.after = after
        self.finished = False  # the generator ran to its end
        self.generator_exited = False  # the generator was cancelled or closed mid-way
        self.closed = False  # aclose() was called (the client closed the response)
        self._gen: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._gen = self._generate()
        return self._gen

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        try:
            for i, chunk in enumerate(self.chunks):
                if self.fault is not None and i == self.after:
                    if self.fault == "raise":
                        raise httpx.ReadError("connection reset by peer")
                    if self.fault == "idle":
                        raise httpx.ReadTimeout("no data within the read timeout")
                    if self.fault == "hang":
                        await asyncio.Event().wait()
                    break  # "end"
                await asyncio.sleep(0)  # one read per chunk, as from a socket
                yield chunk
            self.finished = True
        except (GeneratorExit, asyncio.CancelledError):
            self.generator_exited = True
            raise

    async def aclose(self) -> None:
        self.closed = True
        if self._gen is not None:
            await self._gen.aclose()


@dataclass
class FakeVLLM:
    """One fake vLLM server. Set the fault fields before the request; read ``requests`` after.

    ``fail`` applies to generation requests only (health still passes, as for a backend that dies
    between two health checks): ``"connect"`` (refused), ``"connect_timeout"``, ``"read_timeout"``,
    ``"broken_body"`` (200 headers, then a read error), ``"hang_body"`` (200 headers and the start of
    the body, then nothing until closed), or an HTTP status with ``fail_body`` as the body.
    """

    name: str
    served_model: str
    healthy: bool = True
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    fail: str | int | None = None
    fail_body: bytes = b""
    fail_headers: dict[str, str] = field(default_factory=dict)  # sent with an HTTP-status ``fail``
    stream_fault: str | None = None
    stream_fault_after: int = 0
    split_every: int | None = None  # re-chunk the SSE body into pieces of this many bytes
    upstream_error_event: bool = False  # vLLM's own in-stream error event, then [DONE]
    usage: Any = None  # the answer's "usage" (body and usage chunk); None: USAGE
    spaced: bool = False  # write JSON as Python's json.dumps does ("model": "x"), not vLLM's compact form
    crlf: bool = False  # end SSE lines with CRLF (the SSE spec allows it)
    tokens: tuple[str, ...] = TOKENS  # the answer, one token per streamed event
    spec_tokens: int = 0  # k > 0: a speculative server with spec-decode counters (module docstring)
    spec_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPEC_COUNTERS, 0))
    requests: list[httpx.Request] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @property
    def generation_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path.startswith("/v1/")]

    def metrics_text(self) -> str:
        labels = f'engine="0",model_name="{self.served_model}"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {self.running}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {self.waiting}\n"
            "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
            f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} 9.0\n'
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_usage}\n"
        ) + (self._spec_metrics(labels) if self.spec_tokens else "")

    def _spec_metrics(self, labels: str) -> str:
        """The counters as vLLM's Prometheus client writes them (a ``_created`` sample beside each)."""
        out = []
        for name, value in self.spec_counts.items():
            metric = f"vllm:spec_decode_{name}"
            out.append(f"# HELP {metric} Speculative decoding: {name}.\n# TYPE {metric} counter\n")
            out.append(f"{metric}_total{{{labels}}} {float(value)}\n{metric}_created{{{labels}}} 1.7e9\n")
        return "".join(out)

    def _count_spec(self, body: dict[str, Any], chat: bool, answer: Answer) -> None:
        if not self.spec_tokens:
            return
        messages = body.get("messages") or [] if chat else []
        prompt = " ".join(str(m.get("content", "")) for m in messages) if chat else str(body.get("prompt", ""))
        self.spec_counts["num_drafts"] += len(answer.tokens)
        self.spec_counts["num_draft_tokens"] += self.spec_tokens * len(answer.tokens)
        self.spec_counts["num_accepted_tokens"] += sum(1 for tok in answer.tokens if tok in prompt)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200 if self.healthy else 503)
        if path == "/metrics":
            return httpx.Response(200, text=self.metrics_text(), headers={"content-type": "text/plain"})
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings") or request.method != "POST":
            return httpx.Response(404, json={"detail": "Not Found"})
        if self.fail == "connect":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.fail == "connect_timeout":
            raise httpx.ConnectTimeout("timed out", request=request)
        if self.fail == "read_timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.fail == "hang_headers":  # accepted, never answers (until the client gives up)
            await asyncio.Event().wait()
        if self.fail == "broken_body":  # headers arrive, then the connection drops before the body
            stream = FakeStream([b'{"id":"x",', b'"object":"chat.completion"}'], fault="raise", after=1)
            self.streams.append(stream)
            return httpx.Response(200, headers={"content-type": "application/json"}, stream=stream)
        if self.fail == "hang_body":
            stream = FakeStream([b'{"id":"x",', b'"object":"chat.completion"}'], fault="hang", after=1)
            self.streams.append(stream)
            return httpx.Response(200, headers={"content-type": "application/json"}, stream=stream)
        if isinstance(self.fail, int):
            return httpx.Response(self.fail, content=self.fail_body, headers=self.fail_headers)
        body = json.loads(request.content)
        if body.get("model") != self.served_model:
            msg = f"The model `{body.get('model')}` does not exist. Valid aliases: {self.served_model}."
            return httpx.Response(404, content=vllm_error(msg, "NotFoundError", 404, "model"))
        if path == "/v1/embeddings":
            return httpx.Response(200, content=self._dump(self._embeddings(body, request.headers.get("x-request-id"))))
        chat = path == "/v1/chat/completions"
        rid = request.headers.get("x-request-id")  # vLLM names its response after it
        answer = self._answer(body, chat)
        self._count_spec(body, chat, answer)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._sse_chunks(chat, include_usage, rid, answer)
            stream = FakeStream(chunks, self.stream_fault, self.stream_fault_after)
            self.streams.append(stream)
            return httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=stream)
        return httpx.Response(
            200, content=self._dump(self._completion(chat, rid, answer)), headers={"content-type": "application/json"}
        )

    def _answer(self, body: dict[str, Any], chat: bool) -> Answer:
        """The tokens to generate for ``body``: the rest of :attr:`tokens` after a partial answer."""
        full = "".join(self.tokens)
        partial = ""
        if chat:
            messages = body.get("messages") or []
            last = messages[-1] if messages else {}
            if body.get("continue_final_message") and body.get("add_generation_prompt") is False:
                assert last.get("role") == "assistant", "continue_final_message needs a final assistant message"
                partial = last["content"]
                assert full.startswith(partial), f"not a prefix of the answer: {partial!r}"
        else:
            prompt = str(body.get("prompt", ""))
            partial = next((full[:k] for k in range(len(full), 0, -1) if prompt.endswith(full[:k])), "")
        out: list[str] = []
        pos = seen = 0
        for tok in self.tokens:
            end = pos + len(tok)
            if end <= len(partial):
                seen += 1
            elif pos < len(partial):
                seen += 1  # a token the partial text cuts: its start is in the prompt, the rest generated
                out.append(tok[len(partial) - pos :])
            else:
                out.append(tok)
            pos = end
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        cut = limit is not None and limit < len(out)
        return Answer(out[:limit] if cut else out, PROMPT_TOKENS + seen, "length" if cut else "stop")

    def _usage(self, answer: Answer) -> Any:
        if self.usage is not None:
            return self.usage
        n = len(answer.tokens)
        return {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens + n, "completion_tokens": n}

    def _dump(self, obj: Any) -> bytes:
        return json.dumps(obj).encode() if self.spaced else compact(obj)

    def _sse(self, obj: Any) -> bytes:
        return b"data: " + self._dump(obj) + b"\n\n"

    def _embeddings(self, body: dict[str, Any], rid: str | None) -> dict[str, Any]:
        """vLLM's answer shape: one vector of EMBEDDING_DIM floats per input; a token per word (or id)."""
        given = body["input"]
        inputs = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else given
        data = [
            {
                "index": i,
                "object": "embedding",
                "embedding": [round(0.1 * (i + 1) * k, 3) for k in range(EMBEDDING_DIM)],
            }
            for i in range(len(inputs))
        ]
        tokens = sum(len(x.split()) if isinstance(x, str) else len(x) for x in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}
        return {
            "id": f"embd-{rid or next(self._ids)}",
            "object": "list",
            "created": 1795542588,
            "model": self.served_model,
            "data": data,
            "usage": usage,
        }

    def _id(self, chat: bool, rid: str | None) -> str:
        return f"{'chatcmpl' if chat else 'cmpl'}-{rid or f'{self.name}-{next(self._ids)}'}"

    def _completion(self, chat: bool, rid: str | None, answer: Answer) -> dict[str, Any]:
        text = "".join(answer.tokens)
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = answer.finish_reason
        return {
            "id": self._id(chat, rid),
            "object": "chat.completion" if chat else "text_completion",
            "created": 1795542588,
            "model": self.served_model,
            "choices": [choice],
            "usage": self._usage(answer),
        }

    def _sse_chunks(self, chat: bool, include_usage: bool, rid: str | None, answer: Answer) -> list[bytes]:
        head = {
            "id": self._id(chat, rid),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1795542588,
            "model": self.served_model,
        }
        events: list[bytes] = []
        if chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            events.append(self._sse({**head, "choices": [role]}))
        for i, tok in enumerate(answer.tokens):
            last = i == len(answer.tokens) - 1
            choice: dict[str, Any] = {"index": 0}
            choice.update({"delta": {"content": tok}} if chat else {"text": tok})
            choice.update({"logprobs": None, "finish_reason": answer.finish_reason if last else None})
            events.append(self._sse({**head, "choices": [choice]}))
        if self.upstream_error_event:
            events.append(self._sse({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}))
        elif include_usage:
            events.append(self._sse({**head, "choices": [], "usage": self._usage(answer)}))
        events.append(b"data: [DONE]\n\n")
        if self.crlf:
            events = [e.replace(b"\n", b"\r\n") for e in events]
        if self.split_every:
            raw = b"".join(events)
            return [raw[i : i + self.split_every] for i in range(0, len(raw), self.split_every)]
        return events


class Upstreams(dict[str, FakeVLLM]):
    """Fake backends by name; :meth:`handler` dispatches on the request's host (``b1.test`` → ``b1``)."""

    async def handler(self, request: httpx.Request) -> httpx.Response:
        return await self[request.url.host.removesuffix(".test")].handle(request)


@dataclass
class Gateway:
    """A started gateway app and a client bound to it."""

    app: FastAPI
    client: httpx.AsyncClient
    upstreams: Upstreams

    @property
    def pool(self) -> BackendPool:
        pool: BackendPool = self.app.state.pool
        return pool

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample in the gateway's exposition, or ``None`` if it is absent."""
        return app_metric(self.app, name, **labels)

    @staticmethod
    def events(response: httpx.Response) -> list[Any]:
        """The ``data:`` payloads of an SSE response, JSON-decoded (``"[DONE]"`` kept as the string)."""
        assert response.headers["content-type"].startswith("text/event-stream"), response.text
        assert response.text.endswith("\n\n"), "every SSE event ends with a blank line"
        out: list[Any] = []
        for event in response.text.split("\n\n")[:-1]:
            assert event.startswith("data: "), event
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
        return out

    async def generate(self, endpoint: str = "chat", model: str = "smol", **fields: Any) -> httpx.Response:
        """POST a minimal chat (``endpoint="chat"``) or completion body plus ``fields``."""
        return await self.client.post(PATHS[endpoint], json=request_body(endpoint, model, **fields))


PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def request_body(endpoint: str, model: str = "smol", **fields: Any) -> dict[str, Any]:
    if endpoint == "chat":
        return {"model": model, "messages": [{"role": "user", "content": "Say hello."}], **fields}
    return {"model": model, "prompt": "Say hello.", **fields}


def settings_with(**overrides: Any) -> Settings:
    config = copy.deepcopy(CONFIG)
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return Settings.model_validate(config)


MakeGateway = Callable[..., AbstractAsyncContextManager[Gateway]]

"""Continuing a streamed answer on another backend of its arm when its backend dies mid-answer.

A stream whose backend fails after the first byte (a read error, an idle timeout, a body that ends
without ``[DONE]``) is continued in the same client stream when another backend of the same arm is
usable: the original request goes there again with the text the client already received as a
partial answer, and the relay (:mod:`gateway.relay`) splices the continuation in::

    chat         messages + {"role": "assistant", "content": <delivered text>},
                 continue_final_message: true, add_generation_prompt: false (vLLM's extras)
    completions  prompt + <delivered text>
    both         max_tokens / max_completion_tokens (and min_tokens) less the tokens delivered

What is resent is the text *delivered to the client* (complete SSE events only): a token the dead
backend generated but never sent, or an event cut in half by the failure, is generated again.
The tokens delivered are counted as the token events relayed (one per token for vLLM's plain
decoding; a speculative arm may pack several in one event, so the count is then a lower bound).

At the seam (:class:`Seam`) the continuation's events take the first part's ``id`` and ``created``,
its role chunk is dropped (the client had one), and its usage chunk becomes the whole answer's:
``prompt_tokens`` of the original request (the continuation's less the tokens delivered),
``completion_tokens`` summed over both parts.

Refused (:func:`refusal`; the stream then ends with the error event and ``[DONE]``, as without
resuming), because the continuation could not be what the client asked for: ``n``/``best_of`` > 1
and beam search (several answers in one stream), ``logprobs`` (those of the resent text would be
missing), ``echo``, tools or functions (a half-sent tool call cannot be continued as text),
structured output (``response_format`` json, vLLM's ``guided_*`` / ``structured_outputs``: the
grammar would restart mid-answer), a completion prompt that is not one string, and an answer whose
``finish_reason`` was already sent. Sampling at temperature > 0 is resumed: the continuation is a
plausible one, not the one the dead backend would have produced (at temperature 0 it is the same
up to re-tokenization of the delivered text). A stop string that would have spanned the seam is
not seen (vLLM matches stop strings in newly generated text only).

Async-safety: one :class:`Resumer` per stream, used by its relay only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.calls import Call, Calls
from gateway.errors import GatewayError, UpstreamError, UpstreamHTTPError
from gateway.limits import token_count
from gateway.metrics import GatewayMetrics
from gateway.protocol import Endpoint
from gateway.settings import StreamingSettings
from gateway.sse import SEP, Rename, is_token_event
from gateway.tracing import current

_STRUCTURED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


def refusal(endpoint: Endpoint, body: dict[str, Any]) -> str | None:
    """Why a stream of ``body`` may not be continued on another backend (a short reason), or ``None``."""
    for key in ("n", "best_of"):
        if body.get(key) not in (None, 1):
            return key
    if body.get("use_beam_search"):
        return "beam_search"
    for key in ("logprobs", "top_logprobs", "prompt_logprobs", "echo"):
        value = body.get(key)
        if value is not None and value is not False:
            return key
    if (body.get("tools") or body.get("functions")) and body.get("tool_choice") != "none":
        return "tools"
    fmt = body.get("response_format")
    if (isinstance(fmt, dict) and fmt.get("type") not in (None, "text")) or any(body.get(k) for k in _STRUCTURED):
        return "structured_output"
    if endpoint == "completions" and not isinstance(body.get("prompt"), str):
        return "prompt"
    return None


@dataclass(slots=True)
class Delivered:
    """What the client has received of one stream (complete events only)."""

    text: str = ""
    tokens: int = 0  # token events (see the module docstring)
    finished: bool = False  # a finish_reason was sent: the answer is complete
    tool_calls: bool = False
    id: str | None = None
    created: Any = None
    role_sent: bool = False


def delivered(sent: list[bytes], endpoint: Endpoint) -> Delivered:
    """Parse what the relay sent (its ``data:`` JSON events; comments, usage and ``[DONE]`` skipped)."""
    out = Delivered()
    parts: list[str] = []
    chat = endpoint == "chat"
    for data in sent:
        for ev in data.split(SEP):
            if not ev.startswith(b"data: {"):
                continue
            try:
                doc = orjson.loads(ev[5:])
            except orjson.JSONDecodeError:
                continue
            if out.id is None:
                out.id, out.created = doc.get("id"), doc.get("created")
            choices = doc.get("choices") or ()
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if choice.get("finish_reason") is not None:
                    out.finished = True
                delta = (choice.get("delta") or {}) if chat else choice
                if chat and "role" in delta:
                    out.role_sent = True
                if delta.get("tool_calls") or delta.get("function_call"):
                    out.tool_calls = True
                text = delta.get("content" if chat else "text")
                if isinstance(text, str) and text:
                    parts.append(text)
            if choices and is_token_event(ev):
                out.tokens += 1
    out.text = "".join(parts)
    return out


def remaining_limits(body: dict[str, Any], tokens: int) -> dict[str, int] | None:
    """The continuation's length limits after ``tokens`` delivered: ``max_tokens`` and
    ``max_completion_tokens`` less ``tokens`` (``None`` when one has nothing left), ``min_tokens``
    less ``tokens`` (at least 0). Limits the request did not set stay unset."""
    out: dict[str, int] = {}
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if value - tokens < 1:
                return None
            out[key] = value - tokens
    low = body.get("min_tokens")
    if isinstance(low, int) and not isinstance(low, bool) and low:
        out["min_tokens"] = max(low - tokens, 0)
    return out


def continuation_body(endpoint: Endpoint, body: dict[str, Any], partial: str, tokens: int) -> dict[str, Any] | None:
    """The request that continues ``body``'s answer after ``partial`` (``tokens`` token events), or
    ``None`` when its length limit leaves nothing to generate. ``body`` is not changed."""
    limits = remaining_limits(body, tokens)
    if limits is None:
        return None
    new = {**body, **limits}
    if not partial:
        return new  # nothing generated yet: the same request again
    if endpoint == "completions":
        new["prompt"] = body["prompt"] + partial
        return new
    messages = list(body["messages"])
    last = messages[-1] if messages else None
    if (
        body.get("continue_final_message")
        and isinstance(last, dict)
        and last.get("role") == "assistant"
        and isinstance(last.get("content"), str)
    ):
        messages[-1] = {**last, "content": last["content"] + partial}  # the client's own partial answer, extended
    else:
        messages.append({"role": "assistant", "content": partial})
    new.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
    return new


def joined_usage(usage: dict[str, Any], tokens_before: int) -> dict[str, int]:
    """The whole answer's usage from the continuation's ``usage``: its prompt held the original prompt
    plus the ``tokens_before`` tokens delivered, which are completion tokens of the answer."""
    prompt = max(token_count(usage.get("prompt_tokens")) - tokens_before, 0)
    completion = tokens_before + token_count(usage.get("completion_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Seam:
    """Rewrites a continuation's events into the first part's stream (see the module docstring)."""

    __slots__ = ("created", "drop_role", "id", "needles", "tokens_before")

    def __init__(self, first: Delivered, tokens_before: int) -> None:
        self.id, self.created = first.id, first.created
        self.drop_role = first.role_sent
        self.tokens_before = tokens_before
        self.needles: list[tuple[bytes, bytes]] | None = None  # learnt from the continuation's first event

    def event(self, ev: bytes) -> bytes | None:
        """A compact JSON ``data:`` event of the continuation as the client must see it; ``None``: drop it."""
        if self.needles is None:
            self.needles = self._needles(ev)
        for needle, replacement in self.needles:
            ev = ev.replace(needle, replacement, 1)
        if self.drop_role and b'"role":' in ev and not is_token_event(ev):
            self.drop_role = False
            return None
        return ev

    def _needles(self, ev: bytes) -> list[tuple[bytes, bytes]]:
        try:
            doc = orjson.loads(ev[5:])
        except orjson.JSONDecodeError:
            return []
        out = []
        for key, value in (("id", self.id), ("created", self.created)):
            theirs = doc.get(key) if isinstance(doc, dict) else None
            if value is not None and theirs is not None and theirs != value:
                prefix = b'"' + key.encode() + b'":'
                out.append((prefix + orjson.dumps(theirs), prefix + orjson.dumps(value)))
        return out

    def usage(self, usage: dict[str, Any]) -> dict[str, int]:
        return joined_usage(usage, self.tokens_before)


@dataclass(slots=True)
class Continuation:
    """An opened continuation: the relay switches to it."""

    call: Call
    rename: Rename
    seam: Seam
    comment: bytes  # the SSE comment line that says so, sent before [DONE]


class Resumer:
    """Continues one exchange's stream on the other backends of its arm (at most ``max_resumes`` times)."""

    __slots__ = ("arm", "backends", "body", "calls", "count", "endpoint", "metrics", "public", "refused", "rid", "s")

    def __init__(
        self,
        settings: StreamingSettings,
        calls: Calls,
        metrics: GatewayMetrics,
        arm: str,
        public_model: str,
        backends: Sequence[str],
        endpoint: Endpoint,
        body: dict[str, Any],
        request_id: str,
    ) -> None:
        self.s, self.calls, self.metrics = settings, calls, metrics
        self.arm, self.public, self.backends = arm, public_model, backends
        self.endpoint, self.body, self.rid = endpoint, body, request_id
        self.count = 0
        self.refused = "off" if settings.max_resumes == 0 else refusal(endpoint, body)

    @property
    def retains(self) -> bool:
        """Whether the relay must keep what it sends (a continuation may be asked for)."""
        return self.refused is None

    async def resume(self, failed: Call, error: GatewayError, sent: list[bytes] | None) -> Continuation | None:
        """A continuation of the stream that ``failed`` with ``error`` after sending ``sent``, opened on
        another usable backend of the arm within the deadline; ``None`` (counted) when it may not be or
        none could be opened. ``failed`` must be closed already; its failure is reported to the pool
        here when a continuation replaces it (else the relay's outcome reports it)."""
        started = time.perf_counter()
        if self.refused is not None or sent is None:
            return self._count(None, "not_allowed")
        first = delivered(sent, self.endpoint)
        if first.finished or first.tool_calls:
            return self._count(None, "not_allowed")
        body = continuation_body(self.endpoint, self.body, first.text, first.tokens)
        if body is None or self.count >= self.s.max_resumes:
            return self._count(None, "not_allowed" if body is None else "failed")
        self.count += 1
        current().resuming(failed.backend.name, first.tokens)
        call = await self._open(body, failed.backend.name)
        if call is None:
            return self._count(None, "failed")
        kind = error.kind if isinstance(error, UpstreamError) else "stream"
        self.calls.pool.report_failure(failed.backend, kind, error.message)
        backend = call.backend
        ms = (time.perf_counter() - started) * 1000
        comment = f": x-route-resumed backend={backend.name} at_tokens={first.tokens} resume_ms={ms:.0f}".encode()
        rename = Rename.of(backend.settings.served_model, self.public)
        return self._count(Continuation(call, rename, Seam(first, first.tokens), comment), "resumed")

    async def _open(self, body: dict[str, Any], failed: str) -> Call | None:
        tried = {failed}
        try:
            async with asyncio.timeout(self.s.resume_deadline_s):
                while (backend := self.calls.choose(self.backends, tried)) is not None:
                    tried.add(backend.name)
                    try:
                        rid = f"{self.rid}-r{self.count}"  # vLLM refuses two requests in flight with one id
                        return await self.calls.open(backend, self.endpoint, dict(body), True, rid)
                    except UpstreamError:
                        continue
                    except UpstreamHTTPError as exc:
                        if exc.status < 500:
                            return None  # the continuation itself is refused (too long, template): give up
        except TimeoutError:
            return None
        return None

    def _count(self, out: Continuation | None, outcome: str) -> Continuation | None:
        self.metrics.stream_resume(self.arm, outcome)
        return out

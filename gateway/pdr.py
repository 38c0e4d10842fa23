"""Parallel draft → distill → refine (PDR): an answer built from several upstream calls.

:class:`PDRRunner` runs the ``pdr`` strategy (:class:`router.strategy.PDRStrategy`) for one chat
request. It does no I/O of its own: the gateway hands it callables bound to a backend, so the
orchestration is tested with fakes and does not care how requests travel::

    complete(body: dict) -> dict               # one non-streaming chat completion; raises on failure
    stream(body: dict) -> AsyncIterator[bytes]  # one streaming chat completion, as SSE bytes

Each round::

    drafts   n parallel calls, temperature draft_temperature, seeds base+k, max_tokens draft_max_tokens
    distill  one call summarising the drafts into a workspace, max_tokens = workspace_tokens
    refine   the client's own body, its last user turn carrying the workspace

Round r > 1 drafts see round r-1's answer and are asked to improve it. Drafts and distill are
never streamed; the last refine is streamed when the client asked for a stream. ``usage`` sums
every stage. A failed draft is dropped while another succeeds; when all fail, the first error
is raised. Cancelling the caller (a client disconnect) cancels every in-flight upstream call.

Only ``/v1/chat/completions`` bodies are supported: the distill and refine prompts are chat
turns, and a completions prompt has no turn to attach the workspace to.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest, UpstreamError, sse_error_event
from router.strategy import PDRStrategy

log = logging.getLogger("gateway.pdr")

CompleteFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StreamFn = Callable[[dict[str, Any]], AsyncIterator[bytes]]
StageHook = Callable[[str, float], None]

STAGES = ("draft", "distill", "refine")
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_SEP = b"\n\n"
_DONE = b"data: [DONE]"
# Fields that make no sense for a draft or a distill call (the gateway decides them).
_STREAM_FIELDS = ("stream", "stream_options")

_DRAFT_RETRY_NOTE = (
    "A previous attempt at this request produced the answer below. Check it carefully, fix any "
    "mistakes and write an improved, complete answer.\n\n--- previous answer ---\n{answer}\n--- end ---"
)
_REFINE_NOTE = (
    "Notes from several independent attempts at this request (they may contain errors):\n\n"
    "--- notes ---\n{workspace}\n--- end of notes ---\n\n"
    "Using what is correct in the notes, write your best, complete answer to the request above. "
    "Do not mention the notes."
)
_DISTILL_PROMPT = (
    "Below is a conversation and {n} candidate answer(s) to its last request, written "
    "independently.{previous}\n\nWrite a compact workspace of at most about {budget} tokens that "
    "records: the key steps and intermediate results, the final answer each candidate reached, where "
    "they agree, where they disagree and which version looks right and why. Do not write a new full "
    "answer; be terse.\n\n=== conversation ===\n{conversation}\n\n{candidates}"
)


class PDRRunner:
    """Runs PDR for **one** request; build one per request (it keeps that request's usage).

    ``complete`` / ``stream`` run the distill and refine stages (bound to ``refine_arm`` or the
    arm itself); ``draft_complete`` runs the drafts (bound to ``draft_arm``; default
    ``complete``). The callables set the upstream ``model`` themselves; the runner passes the
    client's. ``on_stage(stage, seconds)`` is called after each stage finishes (``stage`` in
    :data:`STAGES`, once per round; a stage that fails or is cancelled is not reported); it
    must not raise. ``seed``: base seed of the drafts; default the body's ``seed``, else
    random. Not safe for concurrent use; safe to cancel at any point.
    """

    def __init__(
        self,
        strategy: PDRStrategy,
        complete: CompleteFn,
        stream: StreamFn,
        *,
        draft_complete: CompleteFn | None = None,
        on_stage: StageHook | None = None,
        seed: int | None = None,
    ) -> None:
        self.strategy = strategy
        self._complete = complete
        self._stream = stream
        self._draft_complete = draft_complete or complete
        self._on_stage = on_stage
        self._seed = seed
        self.usage: dict[str, int] = dict.fromkeys(_USAGE_KEYS, 0)
        """Token usage summed over every stage that answered so far (final stage included)."""
        self.failed_drafts: list[BaseException] = []
        """Errors of the drafts that failed (the request went on with the others)."""
        self._answers: list[str] = []

    # ------------------------------------------------------------------ public entry points

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer ``body`` (a chat completion request) with one ``chat.completion`` object whose
        ``choices`` are the final refine's and whose ``usage`` sums every stage.

        Raises :class:`InvalidRequest` for a body without ``messages``, the first draft's error
        when every draft fails, or a distill/refine stage's error as raised by the callables.
        """
        response = await self._rounds(body, self.strategy.rounds)
        out = dict(response) if response is not None else {}
        out["usage"] = dict(self.usage)
        return out

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """Answer ``body`` as SSE bytes: the final refine relayed event by event, its usage chunk
        (kept only if the client set ``stream_options.include_usage``) carrying the summed usage.

        Errors before the first yielded byte propagate (so the gateway can still answer with a
        JSON error); after it they become an SSE error event followed by ``data: [DONE]``, as does
        an upstream stream that ends without ``[DONE]``. :meth:`open_stream` does the former for
        you. Closing the generator closes the upstream stream.
        """
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await self._rounds(body, self.strategy.rounds - 1)
        final = await self._prepare_refine(body, self.strategy.rounds - 1)
        final["stream"] = True
        final["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        relay = _UsageRelay(dict(self.usage), wants_usage)
        started = time.perf_counter()
        upstream = self._stream(final)
        try:
            async for chunk in upstream:
                data = relay.feed(chunk)
                if data:
                    yield data
            tail = relay.finish()
            if tail:
                yield tail
        except Exception as exc:
            if not relay.sent:
                raise
            err = exc if isinstance(exc, GatewayError) else UpstreamError(f"refine stream failed: {exc}", kind="stream")
            yield sse_error_event(err)
            return
        finally:
            self.usage = relay.usage
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not relay.saw_done:
            err = UpstreamError("pdr refine stream ended without [DONE]; the answer is incomplete", kind="protocol")
            if not relay.sent:
                raise err
            yield sse_error_event(err)
            return
        self._stage("refine", started)

    async def open_stream(self, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """Run :meth:`stream` up to its first SSE bytes and return a generator over all of them.

        Errors of the draft, distill and refine stages before the first byte are raised here,
        so the gateway can answer them as JSON errors before starting the HTTP response.
        """
        gen = self.stream(body)
        try:
            first = await gen.__anext__()
        except BaseException:
            await gen.aclose()
            raise

        async def rest() -> AsyncGenerator[bytes, None]:
            try:
                yield first
                async for chunk in gen:
                    yield chunk
            finally:
                await gen.aclose()

        return rest()

    # ------------------------------------------------------------------ stages

    async def _rounds(self, body: dict[str, Any], rounds: int) -> dict[str, Any] | None:
        """``rounds`` full non-streaming rounds, each answer fed to the next; the last response."""
        response = None
        for _ in range(rounds):
            refine = await self._prepare_refine(body, len(self._answers))
            refine.pop("stream_options", None)
            refine["stream"] = False
            started = time.perf_counter()
            response = await self._complete(refine)
            self._add_usage(response)
            self._stage("refine", started)
            self._answers.append(_text(response, "refine"))
        return response

    async def _prepare_refine(self, body: dict[str, Any], round_: int) -> dict[str, Any]:
        """Drafts and distill of round ``round_``; returns its refine body (the client's, annotated)."""
        messages = _messages(body)
        answer = self._answers[-1] if self._answers else None
        drafts = await self._drafts(body, messages, round_, answer)
        workspace = await self._distill(body, messages, drafts, answer)
        refine = {k: v for k, v in body.items() if k != "messages"}
        refine["messages"] = _with_note(messages, _REFINE_NOTE.format(workspace=workspace))
        return refine

    async def _drafts(self, body: dict[str, Any], messages: list[Any], round_: int, answer: str | None) -> list[str]:
        s = self.strategy
        base = self._base_seed(body)
        draft_messages = messages if answer is None else _with_note(messages, _DRAFT_RETRY_NOTE.format(answer=answer))
        template = {k: v for k, v in body.items() if k not in (*_STREAM_FIELDS, "messages", "max_completion_tokens")}
        template.update(stream=False, n=1, temperature=s.draft_temperature, max_tokens=s.draft_max_tokens)
        bodies = []
        for k in range(s.drafts):
            b = dict(template, messages=draft_messages)
            b["seed"] = base + round_ * s.drafts + k
            bodies.append(b)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:  # cancelling the caller cancels (and awaits) every draft
            tasks = [tg.create_task(self._one_draft(b)) for b in bodies]
        results = [t.result() for t in tasks]
        texts = [r for r in results if isinstance(r, str)]
        errors = [r for r in results if isinstance(r, BaseException)]
        self.failed_drafts.extend(errors)
        if not texts:
            raise errors[0]
        if errors:
            log.warning("pdr: %d of %d drafts failed; going on with %d", len(errors), len(bodies), len(texts))
        self._stage("draft", started)
        return texts

    async def _one_draft(self, body: dict[str, Any]) -> str | Exception:
        try:
            response = await self._draft_complete(body)
            self._add_usage(response)
            return _text(response, "draft")
        except Exception as exc:  # one failed draft must not fail the others
            return exc

    async def _distill(self, body: dict[str, Any], messages: list[Any], drafts: list[str], answer: str | None) -> str:
        budget = self.strategy.workspace_tokens
        candidates = "\n\n".join(f"=== candidate {i} ===\n{d}" for i, d in enumerate(drafts, 1))
        previous = ""
        if answer is not None:
            previous = " The previous round's answer is shown first."
            candidates = f"=== previous answer ===\n{answer}\n\n{candidates}"
        prompt = _DISTILL_PROMPT.format(
            n=len(drafts),
            previous=previous,
            budget=budget,
            conversation=_render(messages),
            candidates=candidates,
        )
        request = {
            "model": body.get("model"),
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": budget,
            "temperature": 0.0,
            "stream": False,
        }
        started = time.perf_counter()
        response = await self._complete(request)
        self._add_usage(response)
        workspace = _text(response, "distill")
        self._stage("distill", started)
        return workspace

    # ------------------------------------------------------------------ bookkeeping

    def _base_seed(self, body: dict[str, Any]) -> int:
        if self._seed is None:
            seed = body.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool):
                self._seed = seed
            else:
                self._seed = random.randrange(1 << 30)
        return self._seed

    def _add_usage(self, response: Any) -> None:
        self.usage = _summed(self.usage, response.get("usage") if isinstance(response, dict) else None)

    def _stage(self, stage: str, started: float) -> None:
        if self._on_stage is not None:
            self._on_stage(stage, time.perf_counter() - started)


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "the 'pdr' strategy answers chat completions only; the body needs 'messages'", param="messages"
        )
    return messages


def _summed(total: dict[str, int], usage: Any) -> dict[str, int]:
    out = dict(total)
    if not isinstance(usage, dict):
        return out
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] += value
    if not isinstance(usage.get("total_tokens"), int):
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def _text(response: Any, stage: str) -> str:
    """The first choice's text; a response without any is a protocol error."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else choices[0].get("text")
        if isinstance(content, str) and content.strip():
            return content.strip()
    raise UpstreamError(f"pdr {stage} stage: upstream answer has no text", kind="protocol")


def _render(messages: list[Any]) -> str:
    lines = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and content:
            lines.append(f"[{m.get('role', 'user')}]\n{content}")
    return "\n\n".join(lines)


def _with_note(messages: list[Any], note: str) -> list[Any]:
    """``messages`` with ``note`` appended to the last user turn (a new user turn if the last is not
    one): some chat templates reject a second system message or two user turns in a row."""
    out = list(messages)
    last = out[-1]
    if not (isinstance(last, dict) and last.get("role") == "user"):
        return [*out, {"role": "user", "content": note}]
    turn = copy.copy(last)
    content = turn.get("content")
    if isinstance(content, list):
        turn["content"] = [*content, {"type": "text", "text": "\n\n" + note}]
    else:
        turn["content"] = f"{content or ''}\n\n{note}"
    out[-1] = turn
    return out


def _chunk_head(event: bytes) -> dict[str, Any] | None:
    """``id``/``object``/``created``/``model`` of a chunk, to synthesise a usage chunk like it."""
    try:
        data = orjson.loads(event[5:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in ("id", "object", "created", "model") if k in data}


def _usage_event(head: dict[str, Any] | None, usage: dict[str, int]) -> bytes:
    chunk = {"object": "chat.completion.chunk", **(head or {}), "choices": [], "usage": dict(usage)}
    return b"data: " + orjson.dumps(chunk)


class _UsageRelay:
    """Splits the final stage's SSE bytes into events and rewrites its usage to the summed one.

    ``before``: usage of the earlier stages. The usage-only chunk is dropped unless the client
    asked for it; if the upstream sent none, one is made up before ``[DONE]`` (earlier stages only).
    Token chunks pass through as bytes; JSON is parsed for the usage chunk and the first chunk.
    """

    def __init__(self, before: dict[str, int], wants_usage: bool) -> None:
        self.before = before
        self.usage = dict(before)
        self.wants_usage = wants_usage
        self.buf = b""
        self.head: dict[str, Any] | None = None
        self.sent = False
        self.saw_usage = False
        self.saw_done = False

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        if _SEP not in self.buf:
            return b""
        *events, self.buf = self.buf.split(_SEP)
        return self._emit(events)

    def finish(self) -> bytes:
        events, self.buf = [self.buf], b""
        return self._emit(events)

    def _emit(self, events: list[bytes]) -> bytes:
        out = [e for e in (self._event(ev.strip(b"\r\n")) for ev in events) if e]
        if not out:
            return b""
        self.sent = True
        return _SEP.join(out) + _SEP

    def _event(self, ev: bytes) -> bytes:
        if not ev:
            return b""
        if ev.startswith(_DONE):
            self.saw_done = True
            if self.wants_usage and not self.saw_usage:
                return _usage_event(self.head, self.usage) + _SEP + ev
            return ev
        if not ev.startswith(b"data:"):
            return ev
        if b'"usage":{' in ev:
            try:
                data = orjson.loads(ev[5:])
            except orjson.JSONDecodeError:
                return ev
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict):
                self.saw_usage = True
                self.usage = _summed(self.before, usage)
                if not self.wants_usage and data.get("choices") == []:
                    return b""
                data["usage"] = dict(self.usage)
                return b"data: " + orjson.dumps(data)
        if self.head is None:
            self.head = _chunk_head(ev)
        return ev

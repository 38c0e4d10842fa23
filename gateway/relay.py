"""Relaying an upstream SSE stream to the client, chunk by chunk, without buffering.

:class:`RelayResponse` is the ASGI response of every stream, single-call or PDR. For each upstream
read it takes the complete events (:class:`gateway.sse.EventSplitter`), rewrites the served model
name to the public one, drops the usage-only chunk when the client did not ask for usage,
timestamps token events for TTFT / inter-token latency, and writes what it has in one ASGI message;
the message that holds ``[DONE]`` ends the response (one write with the chunked terminator), and
nothing after ``[DONE]`` is relayed (the upstream is still read to its end, for its connection).
JSON is parsed only for the usage chunk (and for every event of an upstream that writes spaced
JSON, normalised once per event: :func:`gateway.sse.compact`).

A PDR stream passes ``usage_before`` (its earlier stages' usage): the usage chunk then carries the
sum. An upstream that sends no usage chunk (not every OpenAI-compatible server does: llama.cpp's
does not) gets one made up before ``[DONE]``: completion tokens counted from the token events, prompt
tokens estimated as for a rate limit (:func:`gateway.limits.estimate_prompt_tokens`; a PDR stream's
earlier stages' usage instead), marked by an ``: x-usage-estimated`` comment and counted in
``gateway_estimated_usage_total``, so token metrics and charges still settle.

Failure after the first byte — a read error, an idle timeout, a stream that ends without ``[DONE]``,
a ``[DONE]`` before any choice had a ``finish_reason`` (a truncated answer, whatever the upstream), a
``data:`` event that is not a JSON object (checked by its first and last byte, not parsed), an
event larger than ``streaming.max_event_bytes`` (never buffered past it) — becomes an SSE error
event followed by ``data: [DONE]``: the client always learns that the answer is incomplete — unless
the backend died (read error, idle timeout, end without ``[DONE]``) and a
:class:`gateway.resume.Resumer` continues the answer on another backend of the arm: then the
continuation is relayed into the same stream through a :class:`gateway.resume.Seam` (one ``id``, one
role chunk, the whole answer's usage) and an SSE comment before ``[DONE]`` says so. Only a stream
that may be resumed keeps what it sends (one list append per write, no parsing); the text is read
back from it when a resume is asked for. A client disconnect cancels the relay and closes the
upstream response, so vLLM aborts the generation. When the relay ends, for any reason, the call is
closed and :meth:`gateway.accounting.Accounting.finish` gets the
:class:`~gateway.accounting.Outcome`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import response_state
from gateway.accounting import Accounting, Outcome
from gateway.calls import Call, upstream_error
from gateway.disconnect import DisconnectWatch
from gateway.errors import ShutDown, UpstreamError
from gateway.limits import estimate_prompt_tokens, token_count
from gateway.response_state import ResponseState
from gateway.resume import Resumer, Seam
from gateway.sse import (
    DONE,
    MAX_EVENT_BYTES,
    SEP,
    EventSplitter,
    EventTooLarge,
    Rename,
    compact,
    error_data,
    error_event,
    has_finish,
    is_spaced,
    is_token_event,
    summed,
    usage_event,
    usage_of,
    with_usage,
)
from gateway.upstream import UpstreamIOError

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class RelayResponse(Response):
    """An ASGI response that relays ``call`` (a stream whose headers have arrived) and accounts for it.

    (A :class:`Response` subclass so the framework passes it through untouched; only ``__call__`` is
    used.)
    """

    def __init__(
        self,
        call: Call,
        headers: dict[str, str],
        rename: Rename,
        strip_usage: bool,
        accounting: Accounting,
        outcome: Outcome,
        usage_before: dict[str, int] | None = None,
        resumer: Resumer | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.call = call
        self.max_event_bytes = max_event_bytes
        self.status_code = 200
        self.background = None
        self.route_headers = headers
        self.rename = rename
        self.strip_usage = strip_usage
        self.accounting = accounting
        self.outcome = outcome
        self.usage_before = usage_before
        self.spaced: bool | None = None  # decided on the first JSON event
        self.head: bytes | None = None  # the first token event, renamed (a made-up usage chunk copies it)
        self.tokens = 0  # token events relayed (a made-up usage counts them)
        self.finished = False  # a choice's finish_reason was relayed
        self.broken = False
        self.resumer = resumer
        self.sent: list[bytes] | None = [] if resumer is not None and resumer.retains else None
        self.seam: Seam | None = None  # rewrites a continuation's events
        self.comments: list[bytes] | None = None  # x-route-resumed lines, sent before [DONE]
        self.started = False  # the response's start was sent (gateway.lean_app reads it)
        self.complete = False  # [DONE] was sent, with the end of the response
        self.state: ResponseState | None = None
        self.watch: DisconnectWatch | None = None  # the request's disconnect watch, if it has one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state = response_state.of(scope)

        raw_headers = _HEADERS + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.route_headers.items()]
        watch = self.watch = self.watch or DisconnectWatch(receive)
        try:
            # the relay runs in this task; a disconnect cancels it until the client has the whole answer
            await watch.guard(self._relay(send, raw_headers))
        except (ClientDisconnect, OSError):  # the client left: the upstream response is closed below
            self.outcome.disconnected = True
        except asyncio.CancelledError:  # the drain timed out (gateway/server.py)
            if self.outcome.error is None:
                self.outcome.error = ShutDown("the gateway shut down before the answer was complete")
            raise
        finally:
            watch.close()
            await self.call.aclose()
            self.accounting.finish(self.outcome)

    def _process(self, events: list[bytes], now: float) -> bytes:
        out = self.outcome
        if self.complete:
            return b""  # nothing after [DONE] reaches the client
        keep: list[bytes] = []
        for ev in events:
            if not ev.startswith(b"data:"):
                keep.append(ev)
                continue
            if ev.startswith(DONE):
                out.saw_done = True
                if not self.finished and out.error is None:
                    out.error = UpstreamError(
                        "upstream ended the stream before any finish_reason; the answer is incomplete",
                        kind="protocol",
                    )
                    keep.append(error_data(out.error))
                if self.comments is not None:
                    keep += self.comments
                if out.usage is None and out.error is None:
                    self._made_up_usage(keep)
                keep.append(ev)
                continue
            if not (ev.startswith(b"data: {") or ev.startswith(b"data:{")) or not (
                ev.endswith(b"}") or ev.rstrip().endswith(b"}")
            ):
                # not a JSON object: end here rather than pass it (or a [DONE] after it) on as valid
                out.error = UpstreamError(
                    "upstream sent a malformed SSE event; the answer is incomplete", kind="protocol"
                )
                self.broken = True
                break
            if self.spaced is None:
                self.spaced = is_spaced(ev)
            if self.spaced:
                ev = compact(ev)
            if self.seam is not None:
                rewritten = self.seam.event(ev)
                if rewritten is None:
                    continue
                ev = rewritten
            if b'"usage":{' in ev:
                ev = self._usage(ev)
                if self.strip_usage and b'"choices":[]' in ev:
                    continue
            elif b'"error"' in ev and b'"choices"' not in ev:
                out.error = UpstreamError(
                    "upstream reported an error mid-stream: " + ev[5:].decode("utf-8", "replace")[:300], kind="stream"
                )
                keep.append(ev)
                continue
            if not self.finished and has_finish(ev):
                self.finished = True
            if is_token_event(ev):
                self.tokens += 1
                if out.first_token_at is None:
                    out.first_token_at = now
                    self.head = self.rename.event(ev)  # public already: a continuation renames another name
                else:
                    out.itl.append(now - (out.last_token_at or now))
                out.last_token_at = now
            keep.append(ev)
        if not keep:
            return b""
        keep.append(b"")  # the last event's terminator
        return self.rename.events(SEP.join(keep))  # once per read, not per event

    def _usage(self, ev: bytes) -> bytes:
        """Take the usage of the usage chunk ``ev``; a PDR stream's is summed with its earlier stages'."""
        usage: dict[str, Any] | None = usage_of(ev)
        if usage is None:
            return ev
        if self.seam is not None:
            usage = self.seam.usage(usage)
            ev = with_usage(ev, usage)
        self.outcome.stream_tokens = token_count(usage.get("completion_tokens"))
        if self.usage_before is not None:
            usage = summed(self.usage_before, usage)
            ev = with_usage(ev, usage)
        self.outcome.usage = usage
        return ev

    def _made_up_usage(self, keep: list[bytes]) -> None:
        """The upstream sent no usage: completion tokens counted from the token events, prompt tokens
        estimated (a PDR stream: its earlier stages' usage plus the tokens counted here)."""
        out = self.outcome
        before = self.usage_before
        if before is None:
            before = {"prompt_tokens": estimate_prompt_tokens(out.exchange.body or {})}
        out.usage = usage = summed(before, {"completion_tokens": self.tokens})
        out.stream_tokens = self.tokens
        out.usage_estimated = True
        if not self.strip_usage:
            keep.append(b": x-usage-estimated")
            keep.append(usage_event(self.head, usage))  # from the renamed head: nothing left to rename

    async def _relay(self, send: Send, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        if self.state is not None:
            self.state.started = self.state.open = True
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        out = self.outcome
        while await self._pump(send) and self.resumer is not None and await self._resume(self.resumer):
            pass
        if self.complete:
            return
        if out.error is not None and not out.saw_done:
            await send({"type": "http.response.body", "body": error_event(out.error), "more_body": True})
        self._end()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send, data: bytes) -> None:
        """Send ``data``; once it holds ``[DONE]``, as the end of the response (one write, not two)."""
        done = self.outcome.saw_done
        if done:
            self._end()
        await send({"type": "http.response.body", "body": data, "more_body": not done})
        if self.sent is not None:
            self.sent.append(data)

    def _end(self) -> None:
        self.complete = True
        if self.watch is not None:
            self.watch.disarm()  # the client has the whole answer; the upstream is read to its end
        if self.state is not None:
            self.state.open = False

    async def _pump(self, send: Send) -> bool:
        """Relay the current call to its end; ``True`` when its backend died (read error, idle timeout,
        end without ``[DONE]``): the stream may be resumed."""
        out = self.outcome
        splitter = EventSplitter(self.max_event_bytes)
        try:
            async for chunk in self.call.chunks():
                events = splitter.feed(chunk)
                if events is None:
                    continue
                data = self._process(events, time.perf_counter())
                if data:
                    await self._write(send, data)
                if self.broken:
                    return False
            events = splitter.end()
            if events is not None and (data := self._process(events, time.perf_counter())):
                await self._write(send, data)
            if not out.saw_done and out.error is None:
                out.error = UpstreamError(
                    "upstream stream ended without [DONE]; the answer is incomplete", kind="protocol"
                )
                return True
        except UpstreamIOError as exc:
            out.error = upstream_error(exc, self.call.backend.name, "stream")
            return True
        except EventTooLarge:  # a protocol fault, not a dead backend: ended here, never resumed
            out.error = UpstreamError(
                f"upstream sent an SSE event larger than streaming.max_event_bytes ({self.max_event_bytes}); "
                "the answer is incomplete",
                kind="protocol",
            )
            self.broken = True
        return False

    async def _resume(self, resumer: Resumer) -> bool:
        """Switch to a continuation of the answer on another backend; ``False`` if there is none."""
        out = self.outcome
        assert out.error is not None
        await self.call.aclose()
        cont = await resumer.resume(self.call, out.error, self.sent)
        if cont is None:
            return False
        self.call, self.rename, self.seam, self.spaced = cont.call, cont.rename, cont.seam, None
        self.comments = [*(self.comments or ()), cont.comment]
        out.error, out.backend = None, cont.call.backend
        out.backends = f"{out.backends},{cont.call.backend.name}" if out.backends else cont.call.backend.name
        return True

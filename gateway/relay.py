"""Relaying an upstream SSE stream to the client, chunk by chunk, without buffering.

For each upstream read the relay splits complete SSE events, rewrites the served model name
to the public one (a bytes replace: upstream JSON is compact and a quoted ``"model":"x"``
cannot occur unescaped inside a string), drops the usage-only chunk when the client did not
ask for usage, timestamps token events for TTFT / inter-token latency, and writes what it has
in one ASGI message. JSON is parsed only for the usage chunk.

Failure after the first byte — a read error, an idle timeout, a stream that ends without
``[DONE]``, a ``data:`` event that is not a JSON object (checked by its first and last byte, not
parsed) — becomes an SSE error event followed by ``data: [DONE]``: the client always learns
that the answer is incomplete. A client disconnect cancels the relay and closes the upstream
response, so vLLM aborts the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import UpstreamError, sse_error_event
from gateway.upstream import UpstreamIOError, UpstreamResponse, UpstreamTimeout

_SEP = b"\n\n"
_DONE = b"data: [DONE]"


@dataclass
class StreamOutcome:
    """What the relay observed; read by the caller after the stream ends."""

    first_token_at: float | None = None
    last_token_at: float | None = None
    token_events: int = 0
    itl: list[float] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: UpstreamError | None = None
    saw_done: bool = False
    disconnected: bool = False


def _is_token_event(event: bytes) -> bool:
    # The chat role chunk carries "content":"" and the usage chunk "choices":[]; neither is a token.
    return b'"choices":[]' not in event and b'"content":""' not in event and b'"text":""' not in event


class RelayResponse(Response):
    """An ASGI response that relays ``upstream`` (a response whose headers have arrived).

    ``on_done(outcome)`` is called exactly once when the relay ends for any reason; it must
    not raise. The upstream response is always closed. (A :class:`Response` subclass so the
    framework passes it through untouched; only ``__call__`` is used.)
    """

    def __init__(
        self,
        upstream: UpstreamResponse,
        headers: dict[str, str],
        served_model: str,
        public_model: str,
        strip_usage: bool,
        on_done: Callable[[StreamOutcome], None],
    ) -> None:
        self.upstream = upstream
        self.status_code = 200
        self.background = None
        self.route_headers = headers
        self.needle = b'"model":' + orjson.dumps(served_model)
        self.replacement = b'"model":' + orjson.dumps(public_model)
        self.strip_usage = strip_usage
        self.on_done = on_done
        self.outcome = StreamOutcome()
        self.broken = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.route_headers.items()]
        relay = asyncio.ensure_future(self._relay(send, raw_headers))
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            done, _ = await asyncio.wait((relay, watcher), return_when=asyncio.FIRST_COMPLETED)
            if relay not in done:
                self.outcome.disconnected = True
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await relay
            else:
                relay.result()
        except OSError:
            self.outcome.disconnected = True
        finally:
            watcher.cancel()
            await self.upstream.aclose()
            self.on_done(self.outcome)

    @staticmethod
    async def _watch_disconnect(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    def _process(self, events: list[bytes], now: float) -> bytes:
        out = self.outcome
        keep: list[bytes] = []
        for ev in events:
            if not ev.startswith(b"data:"):
                keep.append(ev)
                continue
            if ev.startswith(_DONE):
                out.saw_done = True
                keep.append(ev)
                continue
            if not (ev.startswith(b"data: {") or ev.startswith(b"data:{")) or not ev.rstrip().endswith(b"}"):
                # not a JSON object: end here rather than pass it (or a [DONE] after it) on as valid
                out.error = UpstreamError(
                    "upstream sent a malformed SSE event; the answer is incomplete", kind="protocol"
                )
                self.broken = True
                break
            if b'"usage":{' in ev:
                try:
                    usage = orjson.loads(ev[5:]).get("usage")
                except (orjson.JSONDecodeError, AttributeError):
                    usage = None
                if isinstance(usage, dict):
                    out.usage = usage
                if self.strip_usage and b'"choices":[]' in ev:
                    continue
            elif b'"error"' in ev and b'"choices"' not in ev:
                out.error = UpstreamError(
                    "upstream reported an error mid-stream: " + ev[5:].decode("utf-8", "replace")[:300], kind="stream"
                )
                keep.append(ev)
                continue
            if _is_token_event(ev):
                if out.first_token_at is None:
                    out.first_token_at = now
                else:
                    out.itl.append(now - (out.last_token_at or now))
                out.last_token_at = now
                out.token_events += 1
            keep.append(ev.replace(self.needle, self.replacement, 1))
        if not keep:
            return b""
        return _SEP.join(keep) + _SEP

    async def _relay(self, send: Send, raw_headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        out = self.outcome
        buf = b""
        try:
            async for chunk in self.upstream.chunks():
                buf += chunk
                if _SEP not in buf:
                    continue
                *events, buf = buf.split(_SEP)
                data = self._process(events, time.perf_counter())
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                if self.broken:
                    break
            if not out.saw_done and out.error is None:
                out.error = UpstreamError(
                    "upstream stream ended without [DONE]; the answer is incomplete", kind="protocol"
                )
        except UpstreamTimeout:
            out.error = UpstreamError(
                "upstream stream went idle past the timeout; the answer is incomplete", kind="timeout", status=504
            )
        except UpstreamIOError as exc:
            out.error = UpstreamError(f"upstream stream failed: {exc.detail}; the answer is incomplete", kind="stream")
        if out.error is not None and not out.saw_done:
            await send({"type": "http.response.body", "body": sse_error_event(out.error), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

"""Traces of requests: the few calls the request path makes, whether tracing is on or off.

Off (``tracing.enabled: false``, the default), :func:`build_tracer` returns :data:`NO_TRACER`, and
nothing of OpenTelemetry is imported: every hook is a method of :data:`NO_TRACE` or
:data:`NO_ATTEMPT` that returns at once. The one thing the off path still does is W3C trace context
pass-through: a client's valid ``traceparent`` (with its ``tracestate``) goes upstream unchanged, so
vLLM's own spans (``--otlp-traces-endpoint``) join the client's trace.

On, :mod:`gateway.tracing_otel` (imported only then; the ``tracing`` extra) exports over OTLP a
trace per request, a child of the client's ``traceparent`` when it sent a valid one::

    POST /v1/chat/completions            SERVER  status, served arm, usage, error
    ├── admission                        body, checks, budget (ends with the decision)
    │   └── route                        chosen arm, reason, every arm's predictions
    ├── upstream POST /v1/chat/completions  CLIENT, one per attempt: backend, status, attempt,
    │                                    retry, failover, resume; its context goes upstream as traceparent
    ├── pdr.draft / pdr.distill / pdr.refine   stages of a pdr arm
    └── relay                            a stream: TTFT, tokens, tokens/s, resumes, events first_token
                                         and resume (a continuation on another backend)

Hooks (the only call sites): :meth:`Tracer.request` and :meth:`RequestTrace.deciding` /
:meth:`RequestTrace.decided` in :mod:`gateway.admission`; :func:`current` then
:meth:`RequestTrace.attempt` in :meth:`gateway.calls.Calls.open` (the trace is found through a
context variable, set per request task, so the strategies need not carry it);
:meth:`RequestTrace.relay` and :meth:`RequestTrace.finish` in :mod:`gateway.accounting`;
:meth:`RequestTrace.resuming` in :mod:`gateway.resume`;
:meth:`RequestTrace.stage` for PDR stages. Hooks never raise for a request's data and are called
from the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING

from gateway.settings import SettingsError, TracingSettings

if TYPE_CHECKING:
    from gateway.accounting import Outcome
    from router import Decision

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version 00 (and later versions, read as 00): trace id, parent id, flags; all-zero ids are invalid
_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$")


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` the gateway would join (or pass on)."""
    return len(value) >= 55 and _TRACEPARENT.match(value) is not None and (value[:2] != "00" or len(value) == 55)


class Attempt:
    """One upstream attempt, from the POST to its response headers. This base class is the no-op."""

    __slots__ = ()

    def answered(self, status: int) -> None:
        """Headers arrived with ``status`` (< 400: the answer follows)."""

    def failed(self, kind: str, status: int | None = None) -> None:
        """No usable answer: ``kind`` as in :mod:`gateway.calls` (``connect``, ``timeout``, ``http_5xx``...)."""


class RequestTrace:
    """The trace of one generation request. This base class is the no-op (:data:`NO_TRACE`)."""

    __slots__ = ()

    def deciding(self) -> None:
        """The routing decision starts."""

    def decided(self, decision: Decision, model: str, backends: Sequence[str]) -> None:
        """``decision`` was made for the requested ``model``; ``backends``: the chosen arm's (an attempt
        elsewhere after a failure is a failover). Ends the admission."""

    def attempt(self, backend: str, path: str, request_id: str, headers: MutableMapping[str, str]) -> Attempt:
        """An upstream POST to ``backend`` starts; adds ``traceparent``/``tracestate`` to ``headers``."""
        return NO_ATTEMPT

    def resuming(self, backend: str, at_tokens: int) -> None:
        """The stream from ``backend`` died after ``at_tokens`` token events reached the client; the next
        attempts open its continuation (:mod:`gateway.resume`)."""

    def stage(self, stage: str, seconds: float) -> None:
        """A PDR stage (``draft``, ``distill``, ``refine``) just ended after ``seconds``."""

    def relay(self, backend: str) -> None:
        """Relaying a stream from ``backend`` starts."""

    def finish(self, out: Outcome, status: int, ttft_s: float | None, tokens_per_s: float | None) -> None:
        """The request ended (:meth:`gateway.accounting.Accounting.finish`); ends every open span."""


class _PassThrough(RequestTrace):
    """Tracing off, the client sent a valid ``traceparent``: pass it (and ``tracestate``) upstream."""

    __slots__ = ("context",)

    def __init__(self, context: dict[str, str]) -> None:
        self.context = context

    def attempt(self, backend: str, path: str, request_id: str, headers: MutableMapping[str, str]) -> Attempt:
        headers.update(self.context)
        return NO_ATTEMPT


NO_ATTEMPT = Attempt()
NO_TRACE = RequestTrace()
_CURRENT: ContextVar[RequestTrace] = ContextVar("gateway_request_trace", default=NO_TRACE)


def current() -> RequestTrace:
    """The trace of the request this task serves (:data:`NO_TRACE` outside one)."""
    return _CURRENT.get()


class Tracer:
    """Makes a :class:`RequestTrace` per request. This base class is tracing off (:data:`NO_TRACER`)."""

    enabled = False

    def request(self, endpoint: str, request_id: str, headers: Mapping[str, str]) -> RequestTrace:
        """The trace of a new request (its HTTP ``headers`` carry the client's trace context), made the
        current one of this task."""
        trace = NO_TRACE
        parent = headers.get(TRACEPARENT)
        if parent is not None and valid_traceparent(parent := parent.strip()):
            context = {TRACEPARENT: parent}
            if state := headers.get(TRACESTATE):
                context[TRACESTATE] = state
            trace = _PassThrough(context)
        _CURRENT.set(trace)
        return trace

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: call from a thread)."""


NO_TRACER = Tracer()


def build_tracer(settings: TracingSettings) -> Tracer:
    """:data:`NO_TRACER` when tracing is off, else an OTLP-exporting tracer. Raises :class:`SettingsError`
    naming the extra to install when the OpenTelemetry SDK is missing."""
    if not settings.enabled:
        return NO_TRACER
    try:
        from gateway.tracing_otel import OTelTracer
    except ImportError as exc:
        raise SettingsError(
            f"tracing.enabled needs the OpenTelemetry SDK: pip install 'llm-gateway[tracing]' (missing: {exc.name})"
        ) from None
    return OTelTracer(settings)

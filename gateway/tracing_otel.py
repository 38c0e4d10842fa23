"""Tracing on: :class:`OTelTracer`, the OpenTelemetry SDK behind :mod:`gateway.tracing`'s façade.

Imported only when ``tracing.enabled`` (it needs the ``tracing`` extra; ``grpc`` the ``tracing-grpc``
one). One ``TracerProvider`` of its own (the global one is left alone), sampled
``ParentBased(TraceIdRatioBased(sample_ratio))`` (a client's sampled flag wins), a
``BatchSpanProcessor`` (spans are queued on the event loop and exported by its thread) and the OTLP
exporter of ``tracing.protocol``. Span and attribute names: :mod:`gateway.tracing`'s tree;
attributes follow the OpenTelemetry HTTP and GenAI conventions where one exists (``http.*``,
``server.address``, ``error.type``, ``gen_ai.*``), the gateway's own are ``gateway.*``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.settings import SettingsError, TracingSettings
from gateway.tracing import _CURRENT, Attempt, RequestTrace, Tracer

if TYPE_CHECKING:
    from gateway.accounting import Outcome
    from router import Decision

_OPERATION = {"chat": "chat", "completions": "text_completion"}
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_PROPAGATOR = TraceContextTextMapPropagator()


def _now_minus(seconds: float) -> int:
    """Epoch nanoseconds ``seconds`` ago."""
    return time.time_ns() - int(seconds * 1e9)


def exporter_for(settings: TracingSettings) -> SpanExporter:
    """The OTLP exporter of ``settings.protocol`` towards ``settings.endpoint``."""
    headers = dict(settings.headers) or None
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise SettingsError(
                "tracing.protocol grpc needs the gRPC exporter: pip install 'llm-gateway[tracing-grpc]'"
            ) from None
        endpoint = settings.endpoint or "http://localhost:4317"
        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"), headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.endpoint or "http://localhost:4318"
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


class OTelTracer(Tracer):
    """Exports a trace per request. ``processor`` replaces the batch processor and its exporter (tests)."""

    enabled = True

    def __init__(self, settings: TracingSettings, processor: SpanProcessor | None = None) -> None:
        from gateway import __version__

        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.provider.add_span_processor(processor or BatchSpanProcessor(exporter_for(settings)))
        self.tracer = self.provider.get_tracer("llm-gateway", __version__)

    def request(self, endpoint: str, request_id: str, headers: Mapping[str, str]) -> RequestTrace:
        parent = _PROPAGATOR.extract(headers)  # an invalid traceparent gives an empty context: a new trace
        path = _PATHS.get(endpoint, endpoint)
        span = self.tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": path,
                "gen_ai.operation.name": _OPERATION.get(endpoint, endpoint),
                "gateway.request_id": request_id,
            },
        )
        trace = _Trace(self, span)
        _CURRENT.set(trace)
        return trace

    def shutdown(self) -> None:
        self.provider.shutdown()


class _Attempt(Attempt):
    __slots__ = ("span", "trace")

    def __init__(self, trace: _Trace, span: Span) -> None:
        self.trace = trace
        self.span = span

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        self.span.end()

    def failed(self, kind: str, status: int | None = None) -> None:
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        span.end()
        self.trace.failures += 1


class _Trace(RequestTrace):
    """The spans of one request (see :mod:`gateway.tracing`). Not shared between requests."""

    __slots__ = (
        "admission",
        "arm_backends",
        "attempts",
        "context",
        "failures",
        "relay_span",
        "resumes",
        "route",
        "span",
        "tracer",
    )

    def __init__(self, tracer: OTelTracer, span: Span) -> None:
        self.tracer = tracer.tracer
        self.span = span
        self.context: Context = set_span_in_context(span)
        self.admission: Span | None = self.tracer.start_span("admission", context=self.context)
        self.route: Span | None = None
        self.relay_span: Span | None = None
        self.arm_backends: Sequence[str] = ()
        self.attempts = 0
        self.failures = 0
        self.resumes = 0

    def deciding(self) -> None:
        if self.admission is not None:
            self.route = self.tracer.start_span("route", context=set_span_in_context(self.admission))

    def decided(self, decision: Decision, model: str, backends: Sequence[str]) -> None:
        arm = decision.arm
        self.arm_backends = backends
        self.span.set_attribute("gen_ai.request.model", model)
        route = self.route
        if route is not None:
            route.set_attributes(
                {
                    "gateway.route.arm": arm.name,
                    "gateway.route.model": arm.model,
                    "gateway.route.strategy": arm.strategy.label,
                    "gateway.route.reason": decision.reason,
                    "gateway.route.ranked": [a.name for a in decision.ranked],
                }
            )
            if decision.explanation:
                route.set_attribute("gateway.route.explanation", decision.explanation)
            for name, prediction in decision.predictions.items():
                route.set_attributes(
                    {f"gateway.route.prediction.{name}.{k}": v for k, v in prediction.as_dict().items()}
                )
            route.end()
            self.route = None
        if self.admission is not None:
            self.admission.end()
            self.admission = None

    def attempt(self, backend: str, path: str, request_id: str, headers: MutableMapping[str, str]) -> Attempt:
        self.attempts += 1
        retry = self.failures > 0
        span = self.tracer.start_span(
            f"upstream POST {path}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes={
                "gateway.backend": backend,
                "http.request.method": "POST",
                "gateway.upstream.request_id": request_id,
                "gateway.upstream.attempt": self.attempts,
                "gateway.upstream.retry": retry,
                "gateway.upstream.failover": retry and backend not in self.arm_backends,
                "gateway.upstream.resume": self.resumes > 0,
            },
        )
        _PROPAGATOR.inject(headers, context=set_span_in_context(span))
        return _Attempt(self, span)

    def resuming(self, backend: str, at_tokens: int) -> None:
        self.resumes += 1
        if self.relay_span is not None:
            self.relay_span.add_event(
                "resume", attributes={"gateway.resume.from_backend": backend, "gateway.resume.at_tokens": at_tokens}
            )

    def stage(self, stage: str, seconds: float) -> None:
        span = self.tracer.start_span(
            f"pdr.{stage}",
            context=self.context,
            start_time=_now_minus(seconds),
            attributes={"gateway.pdr.stage": stage},
        )
        span.end()

    def relay(self, backend: str) -> None:
        self.relay_span = self.tracer.start_span("relay", context=self.context, attributes={"gateway.backend": backend})

    def finish(self, out: Outcome, status: int, ttft_s: float | None, tokens_per_s: float | None) -> None:
        span, error = self.span, out.error
        for open_span in (self.route, self.admission):  # refused before the decision
            if open_span is not None:
                open_span.set_status(Status(StatusCode.ERROR))
                open_span.end()
        self.route = self.admission = None
        if self.relay_span is not None:
            self._end_relay(self.relay_span, out, ttft_s, tokens_per_s, self.resumes)
        span.set_attribute("http.response.status_code", status)
        if out.live is not None:
            span.set_attributes(
                {
                    "gateway.arm": out.live.arm.name,
                    "gen_ai.response.model": out.live.arm.model,
                    "gateway.strategy": out.live.strategy_label,
                    "gateway.backend": out.backends or "",
                    "gateway.stream": out.exchange.stream,
                    "gateway.failover": out.exchange.decision is not None
                    and out.live.arm is not out.exchange.decision.arm,
                }
            )
        usage = out.usage
        if usage:
            for key, name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
                if isinstance(usage.get(key), int):
                    span.set_attribute(f"gen_ai.usage.{name}", usage[key])
        if out.disconnected:
            span.set_attribute("gateway.client_disconnected", True)
        if error is not None:
            span.set_attribute("error.type", str(getattr(error, "kind", None) or error.code or error.type))
            span.set_status(Status(StatusCode.ERROR, error.message[:200]))
        elif status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def _end_relay(span: Span, out: Outcome, ttft_s: float | None, tokens_per_s: float | None, resumes: int) -> None:
        now = time.perf_counter()
        span.set_attribute("gateway.stream.tokens", out.stream_tokens)
        span.set_attribute("gateway.stream.saw_done", out.saw_done)
        span.set_attribute("gateway.stream.resumes", resumes)
        if ttft_s is not None:
            span.set_attribute("gateway.stream.ttft_ms", round(ttft_s * 1000, 3))
        if tokens_per_s is not None:
            span.set_attribute("gateway.stream.tokens_per_s", round(tokens_per_s, 2))
        if out.first_token_at is not None:
            span.add_event("first_token", timestamp=_now_minus(now - out.first_token_at))
        if out.error is not None:
            span.set_status(Status(StatusCode.ERROR, out.error.message[:200]))
        span.end()

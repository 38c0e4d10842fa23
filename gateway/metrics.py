"""Every Prometheus collector the gateway exports, behind helper methods.

Names and labels are public (dashboards and alerts use them); change them only with a
migration note. Call sites use the methods of :class:`GatewayMetrics`, never the collectors.
Each app owns its own :class:`~prometheus_client.CollectorRegistry`, so tests can build many
apps in one process and compare exposition output.

Several worker processes (``server.workers`` > 1, :mod:`gateway.workers`) share one exposition through
prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is
imported, every value lives in a per-process file there and :meth:`GatewayMetrics.exposition` reads all
of them, so any worker's ``/metrics`` is the whole gateway's: counters and histograms summed over the
workers, in-flight gauges summed over the live ones (``livesum``), health, breaker and arm-info gauges the
largest value of a live worker (``livemax``: 1 when any worker sees it so).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

TTFT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
)
DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    180.0,
    300.0,
    600.0,
)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``reason`` values of ``gateway_rejected_requests_total`` (the ``reason`` of :mod:`gateway.errors`' and
#: :mod:`gateway.limits`' refusals). Exported at zero from the start, with the ``kind`` values below.
REJECT_REASONS = (
    "unauthorized",
    "model_not_allowed",
    "rate_limit_requests",
    "rate_limit_tokens",
    "payload_too_large",
    "max_tokens",
    "n",
    "messages",
)
#: ``kind`` values of ``gateway_upstream_errors_total`` (:mod:`gateway.upstream`, :mod:`gateway.relay`).
UPSTREAM_ERROR_KINDS = ("connect", "connect_timeout", "timeout", "http_5xx", "http_4xx", "stream", "protocol")
#: ``outcome`` values of ``gateway_stream_resumes_total`` (:mod:`gateway.resume`).
RESUME_OUTCOMES = ("resumed", "failed", "not_allowed")

# `*_created` series double the exposition size and no dashboard of ours uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, as one update per bucket touched and one of the sum
    instead of two locked increments per value (a 256-token stream has 255 inter-token gaps: ~0.6 µs
    each). Uses the child histogram's bucket bounds and values as prometheus_client keeps them; where
    it keeps them otherwise, one ``observe`` per value (tests/unit/test_metrics_batch.py checks that both
    ways give the same exposition)."""
    bounds: Sequence[float] | None = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= the value, as observe()
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    total.inc(sum(values))


@dataclass
class RequestSeries:
    """The labelled children for one (model, strategy) pair, resolved once and cached."""

    ttft: Histogram
    itl: Histogram
    duration: Histogram
    tokens_per_s: Histogram
    prompt_tokens: Counter
    output_tokens: Counter


class GatewayMetrics:
    """The gateway's metrics. Methods are safe to call from the event loop (no I/O)."""

    # Long by design: the declarative table of every collector the gateway exports, kept in one place.
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "gateway_requests_total",
            "Requests answered, by final HTTP status.",
            ["model", "strategy", "endpoint", "status"],
            registry=r,
        )
        self._ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From request received to the first generated token leaving the gateway.",
            ["model", "strategy"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "gateway_inter_token_latency_seconds",
            "Time between consecutive streamed chunks.",
            ["model", "strategy"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._duration = Histogram(
            "gateway_request_duration_seconds",
            "From request received to the last byte sent.",
            ["model", "strategy"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._tps = Histogram(
            "gateway_output_tokens_per_second",
            "Per request: decode rate after the first token (output tokens - 1) / decode time.",
            ["model", "strategy"],
            buckets=TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        self._prompt_tokens = Counter(
            "gateway_prompt_tokens_total", "Prompt tokens, from upstream usage.", ["model", "strategy"], registry=r
        )
        self._output_tokens = Counter(
            "gateway_output_tokens_total", "Generated tokens, from upstream usage.", ["model", "strategy"], registry=r
        )
        self._inflight = Gauge(
            "gateway_inflight_requests",
            "Requests in flight to each backend.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._backend_up = Gauge(
            "gateway_backend_up",
            "1 if the backend passes health checks, else 0.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._breaker_open = Gauge(
            "gateway_backend_breaker_open",
            "1 while the backend's circuit breaker is open or half-open (request failures in a row), else 0.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures by kind (connect, timeout, http_5xx, http_4xx, stream, protocol).",
            ["backend", "kind"],
            registry=r,
        )
        self._decisions = Counter(
            "gateway_routing_decisions_total",
            "Routing decisions by chosen arm and reason.",
            ["model", "strategy", "reason"],
            registry=r,
        )
        self._family_decisions = Counter(
            "gateway_routing_family_decisions_total",
            "Routing decisions by the prompt's predicted task family (the router artifact's families) and chosen arm.",
            ["family", "model", "strategy"],
            registry=r,
        )
        self._decision_seconds = Histogram(
            "gateway_router_decision_seconds", "Time the router took to decide.", buckets=DECISION_BUCKETS, registry=r
        )
        self._rejected = Counter(
            "gateway_rejected_requests_total",
            "Requests refused by policy, by reason (unauthorized, model_not_allowed, rate_limit_requests, "
            "rate_limit_tokens, payload_too_large, max_tokens, n, messages) and API key name ('none' without one).",
            ["reason", "key"],
            registry=r,
        )
        self._pdr_stage = Histogram(
            "gateway_pdr_stage_seconds",
            "Wall time of one stage (draft: all parallel drafts, distill, refine) of a PDR round.",
            ["model", "strategy", "stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._arm_info = Gauge(
            "gateway_arm_info",
            "1 per configured (arm, backend): joins vLLM's per-backend series to arms and strategies.",
            ["arm", "model", "strategy", "backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._failovers = Counter(
            "gateway_failovers_total",
            "Requests answered by another arm than the router chose (its backends failed before the first byte).",
            ["model", "strategy"],
            registry=r,
        )
        self._affinity = Counter(
            "gateway_affinity_total",
            "Backend choices of arms with replica affinity (arms[].affinity): kept (the key's replica on the "
            "ring took it) or spilled (none could within the load bound: least-loaded instead).",
            ["arm", "outcome"],
            registry=r,
        )
        self._stream_resumes = Counter(
            "gateway_stream_resumes_total",
            "Streams whose backend died mid-answer, by what happened: resumed (continued on another backend "
            "of the arm), failed (none could continue it in time, or max_resumes reached), not_allowed "
            "(resuming is off, or the request cannot be continued exactly enough: n, logprobs, tools, ...).",
            ["arm", "outcome"],
            registry=r,
        )
        self._estimated_usage = Counter(
            "gateway_estimated_usage_total",
            "Streams whose upstream sent no usage chunk (not every OpenAI-compatible server does): their token "
            "counts were made up, completion tokens from the token events, prompt tokens estimated.",
            ["model", "strategy"],
            registry=r,
        )
        self._decision_log_errors = Counter(
            "gateway_decision_log_errors_total",
            "Decision-log lines (routing.decision_log) that could not be written; the requests were answered.",
            registry=r,
        )
        self._series: dict[tuple[str, str], RequestSeries] = {}
        # per-request counters' children by label values (bounded: configured models, strategies,
        # endpoints, reasons, families, HTTP statuses), resolved once instead of by labels() each time
        self._counted: dict[tuple[object, ...], Counter] = {}

    def known_labels(self, backends: Iterable[str], keys: Iterable[str] = ()) -> None:
        """Export the rejection and upstream-error counters at zero for every known label set: every
        reason for no key (``none``) and each configured key name, every kind for each backend. A counter
        that first appears with its first event shows no increase to ``rate()`` and leaves dashboard panels
        at "No data" on a healthy system. Call once at start-up; unknown labels still work later."""
        for key in ("none", *keys):
            for reason in REJECT_REASONS:
                if reason != "unauthorized" or key == "none":  # a refused caller has no key
                    self._rejected.labels(reason, key)
        for backend in backends:
            for kind in UPSTREAM_ERROR_KINDS:
                self._upstream_errors.labels(backend, kind)

    def known_resume_arms(self, arms: Iterable[str]) -> None:
        """Export ``gateway_stream_resumes_total`` at zero for every outcome of each arm in ``arms``
        (those whose streams can be resumed); call once at start-up, like :meth:`known_labels`."""
        for arm in arms:
            for outcome in RESUME_OUTCOMES:
                self._stream_resumes.labels(arm, outcome)

    def series(self, model: str, strategy: str) -> RequestSeries:
        """Per-(model, strategy) children; cache-friendly for the streaming hot path."""
        key = (model, strategy)
        s = self._series.get(key)
        if s is None:
            s = RequestSeries(
                ttft=self._ttft.labels(model, strategy),
                itl=self._itl.labels(model, strategy),
                duration=self._duration.labels(model, strategy),
                tokens_per_s=self._tps.labels(model, strategy),
                prompt_tokens=self._prompt_tokens.labels(model, strategy),
                output_tokens=self._output_tokens.labels(model, strategy),
            )
            self._series[key] = s
        return s

    def _count(self, counter: Counter, *values: str) -> None:
        """``counter.labels(*values).inc()``, the child looked up in a dict after its first use (not
        prometheus_client's lock, checks and ``str()`` of every value on each request)."""
        key = (counter, *values)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = counter.labels(*values)
        child.inc()

    def request_done(self, model: str, strategy: str, endpoint: str, status: int) -> None:
        self._count(self._requests, model, strategy, endpoint, str(status))

    def observe_usage(self, series: RequestSeries, prompt_tokens: int, output_tokens: int) -> None:
        if prompt_tokens > 0:
            series.prompt_tokens.inc(prompt_tokens)
        if output_tokens > 0:
            series.output_tokens.inc(output_tokens)

    def inflight(self, backend: str) -> Gauge:
        return self._inflight.labels(backend)

    def set_backend_up(self, backend: str, up: bool) -> None:
        self._backend_up.labels(backend).set(1 if up else 0)

    def set_breaker_open(self, backend: str, tripped: bool) -> None:
        self._breaker_open.labels(backend).set(1 if tripped else 0)

    def upstream_error(self, backend: str, kind: str) -> None:
        self._upstream_errors.labels(backend, kind).inc()

    def decision(self, model: str, strategy: str, reason: str, seconds: float, family: str | None = None) -> None:
        self._count(self._decisions, model, strategy, reason)
        self._decision_seconds.observe(seconds)
        if family is not None:
            self._count(self._family_decisions, family, model, strategy)

    def known_families(self, families: Iterable[str], arms: Iterable[tuple[str, str]]) -> None:
        """Export ``gateway_routing_family_decisions_total`` at zero for every family and (model,
        strategy); call once at start-up, like :meth:`known_labels`."""
        for family in families:
            for model, strategy in arms:
                self._family_decisions.labels(family, model, strategy)

    def rejected(self, reason: str, key: str | None) -> None:
        """``key`` is the key's configured *name* (never the key); ``None`` when there is none."""
        self._rejected.labels(reason, key or "none").inc()

    def arm_info(self, arm: str, model: str, strategy: str, backend: str) -> None:
        self._arm_info.labels(arm, model, strategy, backend).set(1)

    def failover(self, model: str, strategy: str) -> None:
        """The arm that answered (``model``, ``strategy``) was not the router's first choice."""
        self._failovers.labels(model, strategy).inc()

    def affinity(self, arm: str, outcome: str) -> None:
        """One backend choice of an arm with affinity (``outcome``: kept or spilled)."""
        self._affinity.labels(arm, outcome).inc()

    def stream_resume(self, arm: str, outcome: str) -> None:
        """A stream of ``arm`` broke mid-answer; ``outcome``: resumed, failed or not_allowed."""
        self._stream_resumes.labels(arm, outcome).inc()

    def pdr_stage(self, model: str, strategy: str, stage: str, seconds: float) -> None:
        """One finished stage of a PDR request (``stage``: draft, distill or refine)."""
        self._pdr_stage.labels(model, strategy, stage).observe(seconds)

    def estimated_usage(self, model: str, strategy: str) -> None:
        self._estimated_usage.labels(model, strategy).inc()

    def decision_log_error(self) -> None:
        """One decision-log line was lost (the write failed)."""
        self._decision_log_errors.inc()

    def exposition(self) -> bytes:
        """The text exposition: this app's registry, or with ``PROMETHEUS_MULTIPROC_DIR`` set (several
        workers) every worker's values, read from that folder."""
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

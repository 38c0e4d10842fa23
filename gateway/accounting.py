"""The end of a request, in one place: :meth:`Accounting.finish` of its :class:`Outcome`.

Every generation request ends here exactly once, whatever its strategy and however it ended
(answered whole, streamed, broken mid-stream, refused, client gone):

* metrics: ``gateway_requests_total`` by final status; for an answer, duration, usage counters and,
  for a stream, TTFT, inter-token latency and tokens/s; ``gateway_rejected_requests_total`` for a
  refusal by policy;
* the backend pool: a stream's end, success or failure, on the backend that streamed it (calls
  report what they see before that: :mod:`gateway.calls`);
* the arm's live corrections (measured ÷ forecast TTFT and decode speed) and the policy's latency
  residuals (``policy.observe``), for a successful answer the policy forecast;
* the key's token charge: corrected with the answer's usage, given back for a refusal, kept as
  estimated when the usage is unknown (client gone, broken stream);
* the decision log's record (``routing.decision_log``), if the request has one;
* the request log's line (``server.log_format: json``, :mod:`gateway.request_log`);
* the request's trace: its relay span and its own end (:mod:`gateway.tracing`; a no-op while off).

:meth:`Accounting.answered` is the other end-of-routing step, when an arm has answered (headers in):
the failover counter and the record that ``POST /v1/feedback`` joins ratings with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.admission import Exchange
from gateway.arms import LiveArm
from gateway.backends import Backend, BackendPool
from gateway.errors import GatewayError
from gateway.feedback import RouteLog
from gateway.limits import token_count, total_tokens
from gateway.metrics import GatewayMetrics, observe_many
from gateway.protocol import prompt_text
from gateway.request_log import RequestLog
from router import Policy
from router.predictor import Prediction


@dataclass(slots=True, eq=False)
class Outcome:
    """How one exchange ended; filled by its strategy and, for a stream, by the relay.

    ``live`` is the arm that answered (``None``: refused or failed before any did, ``error`` saying
    why). ``backend``: the backend of a relayed stream (its end goes to the pool); ``backends``: the
    name(s) for the decision log. ``usage``: the answer's (a PDR answer's summed over its stages);
    ``usage_estimated``: ``usage`` was made up (the upstream sent none); ``stream_tokens``: completion tokens
    of the streamed call alone (for tokens/s). Times are
    ``time.perf_counter()`` values.
    """

    exchange: Exchange
    status: int = 200
    live: LiveArm | None = None
    backend: Backend | None = None
    backends: str | None = None
    usage: dict[str, Any] | None = None
    usage_estimated: bool = False  # a stream whose upstream sent no usage: ``usage`` was made up (relay)
    stream_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    itl: list[float] = field(default_factory=list)
    error: GatewayError | None = None
    saw_done: bool = False
    disconnected: bool = False
    forecast: Prediction | None = None  # the policy's forecast for the arm that answered, if it made one
    stage_started: float | None = None  # a PDR stream's final refine: its stage time ends with the stream


class Accounting:
    """Ends the requests of one app. Call from the event loop; never raises for a request's data."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        pool: BackendPool,
        policy: Policy,
        routes: RouteLog | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.policy = policy
        self.routes = routes
        self.request_log = request_log

    def answered(self, ex: Exchange, live: LiveArm, backends: str, backend: Backend | None = None) -> Outcome:
        """``live`` answers ``ex`` on ``backends`` (headers in): count a failover, remember the route for
        feedback, and return the outcome to fill (``backend``: a stream's, reported at its end)."""
        decision = ex.decision
        assert decision is not None and ex.body is not None
        if live.arm is not decision.arm:
            self.metrics.failover(live.arm.model, live.strategy_label)
        reason = decision.reason if live.arm is decision.arm else "failover"
        if self.routes is not None:
            self.routes.remember(
                ex.request_id,
                endpoint=ex.endpoint,
                arm=live.arm.name,
                model=live.arm.model,
                strategy=live.strategy_label,
                backend=backends,
                reason=reason,
                prompt=prompt_text(ex.body),
                key=ex.key.name if ex.key is not None else None,
            )
        if backend is not None:
            ex.span.relay(backend.name)
        return Outcome(
            ex, live=live, backend=backend, backends=backends, forecast=decision.predictions.get(live.arm.name)
        )

    def refused(self, ex: Exchange, status: int, error: GatewayError | None = None) -> None:
        """``ex`` ended before any arm answered: ``error`` (a refusal or an upstream failure), or the
        client went away (``status`` 499, no error)."""
        self.finish(Outcome(ex, status=status, error=error))

    def finish(self, out: Outcome) -> None:
        """Account for ``out`` (see the module docstring); later calls for the same exchange do nothing."""
        ex = out.exchange
        ex.sent()
        if ex.finished:
            return
        ex.finished = True
        end = time.perf_counter()
        elapsed = end - ex.started
        live = out.live
        if live is None:
            self._unanswered(out, elapsed)
            return
        status = 499 if out.disconnected else out.error.status if out.error is not None else out.status
        metrics = self.metrics
        series = metrics.series(live.arm.model, live.strategy_label)
        series.duration.observe(elapsed)
        ttft = tps = None
        if out.first_token_at is not None:
            ttft = out.first_token_at - ex.started
            series.ttft.observe(ttft)
            observe_many(series.itl, out.itl)
            tokens, last = out.stream_tokens, out.last_token_at
            if tokens > 1 and last is not None and last > out.first_token_at:
                tps = (tokens - 1) / (last - out.first_token_at)
                series.tokens_per_s.observe(tps)
        usage, completion = out.usage, None
        if usage is not None:
            completion = token_count(usage.get("completion_tokens"))
            metrics.observe_usage(series, token_count(usage.get("prompt_tokens")), completion)
            if out.usage_estimated:
                metrics.estimated_usage(live.arm.model, live.strategy_label)
        if status < 400:
            if out.backend is not None:
                self.pool.report_success(out.backend)
            forecast = out.forecast
            live.record(ttft, tps, live_ratios(forecast, ttft, tps) if forecast is not None else (None, None))
            if forecast is not None:
                self.policy.observe(live.arm.name, forecast.latency_s, elapsed)
            if out.stage_started is not None:
                metrics.pdr_stage(live.arm.model, live.strategy_label, "refine", end - out.stage_started)
                ex.span.stage("refine", end - out.stage_started)
        elif out.error is not None and out.backend is not None and status != 499:
            self.pool.report_failure(out.backend, getattr(out.error, "kind", "stream"), out.error.message)
        if self.request_log is not None:
            self.request_log.finished(out, status, elapsed, ttft, tps)
        if ex.trace is not None:
            ex.trace.finish(
                status,
                served_arm=live.arm.name,
                backend=out.backends,
                ttft_s=ttft,
                output_tokens=completion,
                latency_s=elapsed,
                tokens_per_s=tps,
            )
        metrics.request_done(live.arm.model, live.strategy_label, ex.endpoint, status)
        if ex.charge is not None:
            ex.charge.settle(total_tokens(usage))
        ex.span.finish(out, status, ttft, tps)

    def _unanswered(self, out: Outcome, elapsed: float) -> None:
        ex, exc = out.exchange, out.error
        if self.request_log is not None:
            self.request_log.finished(out, out.status, elapsed)
        if ex.charge is not None and exc is not None:
            ex.charge.settle(0)  # refused before any backend answered: nothing was generated
        if ex.trace is not None:
            ex.trace.finish(out.status, latency_s=elapsed)
        if exc is not None and exc.reason is not None:
            self.metrics.rejected(exc.reason, ex.key.name if ex.key else None)
        decision = ex.decision
        model, label = (decision.arm.model, decision.arm.strategy.label) if decision else ("unknown", "none")
        self.metrics.request_done(model, label, ex.endpoint, out.status)
        ex.span.finish(out, out.status, None, None)


def live_ratios(
    forecast: Prediction, ttft_s: float | None, tokens_per_s: float | None
) -> tuple[float | None, float | None]:
    """Measured ÷ forecast TTFT and decode speed of one stream, against the forecast without its live
    corrections (made for this prompt at the load of its time): what :meth:`LiveArm.record` folds in."""
    ttft = forecast.ttft_s / forecast.live_ttft_ratio
    tps = forecast.tokens_per_s / forecast.live_speed_ratio
    return (
        ttft_s / ttft if ttft_s is not None and ttft > 0 else None,
        tokens_per_s / tps if tokens_per_s is not None and tps > 0 else None,
    )

"""Serving ``/v1/chat/completions``, ``/v1/completions``, ``/v1/route`` and ``/v1/feedback``.

One direction for a generation request::

    app (gateway.lean_app) → Proxy.handle → admission (body, flags, caps, budget, router decision)
        → executors[arm] (gateway.strategies: single, pdr) → calls → upstream
        → a whole answer, or the relay (gateway.relay, using gateway.sse) for a stream
        → accounting.finish (metrics, pool, live arm stats, policy, token charge, decision log)

A request that no arm answers (refused, or every upstream attempt failed) is accounted for here and
answered with an OpenAI error; a client that leaves while the gateway waits cancels the upstream
call (:class:`gateway.disconnect.DisconnectWatch`; a stream's relay goes on with the same watch).
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.accounting import Accounting
from gateway.admission import Admission, Exchange
from gateway.arms import ArmCatalog
from gateway.auth import ApiKey
from gateway.backends import BackendPool
from gateway.calls import Calls
from gateway.decision_log import DecisionLog
from gateway.disconnect import DisconnectWatch
from gateway.errors import GatewayError, error_response
from gateway.feedback import FeedbackLog, RouteLog
from gateway.feedback_endpoint import FeedbackEndpoint
from gateway.metrics import GatewayMetrics
from gateway.protocol import Endpoint
from gateway.relay import RelayResponse
from gateway.request_id import RequestIds
from gateway.request_log import RequestLog
from gateway.settings import Settings
from gateway.strategies import Services, build_executors
from gateway.tracing import NO_TRACER, Tracer
from gateway.upstream import Upstream
from router import Policy


class Proxy:
    """Serves generation requests. One instance per app; safe for concurrent requests."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        pool: BackendPool,
        catalog: ArmCatalog,
        policy: Policy,
        metrics: GatewayMetrics,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.policy = policy
        self.metrics = metrics
        fb = settings.feedback
        routes = (
            RouteLog(fb.remember, store_prompts=fb.store_prompts, prompt_memory_bytes=fb.prompt_memory_bytes)
            if fb.path
            else None
        )
        feedback_log = FeedbackLog(fb.path) if fb.path else None
        self.feedback = FeedbackEndpoint(fb, settings.server.max_body_bytes, routes, feedback_log, metrics)
        path = settings.routing.decision_log
        decision_log = (
            DecisionLog(path, store_prompts=fb.store_prompts, on_error=metrics.decision_log_error) if path else None
        )
        self.admission = Admission(settings, catalog, pool, policy, metrics, decision_log, tracer)
        request_log = RequestLog() if settings.server.log_format == "json" else None
        self.accounting = Accounting(metrics, pool, policy, routes, request_log)
        calls = Calls(upstream, pool, metrics, settings.timeouts.retry_after_s)
        self.executors = build_executors(Services(settings, catalog, calls, self.accounting, metrics))
        self.ids = RequestIds()  # the caller's X-Request-Id, or a generated one

    async def handle(self, endpoint: Endpoint, request: Request, key: ApiKey | None = None) -> Response:
        """Answer one request for ``key`` (``None``: auth is off); every failure becomes an OpenAI
        error response (never raises)."""
        ex = Exchange(self.ids.assign(request.headers), endpoint, time.perf_counter(), key)
        self.ids.hold(ex.request_id, ex)
        try:
            await self.admission.admit(ex, request)
            assert ex.decision is not None
            run = self.executors[ex.decision.arm.name].run(ex)
            watch = DisconnectWatch(request.receive)
            try:
                response = await watch.guard(run)  # a client gone cancels the wait
            except BaseException:
                watch.close()
                raise
            if isinstance(response, RelayResponse):
                response.watch = watch  # the relay goes on watching with it
            else:
                watch.close()
            return response
        except GatewayError as exc:
            self.accounting.refused(ex, exc.status, exc)
            exc.headers["x-request-id"] = ex.request_id
            return error_response(exc)
        except ClientDisconnect:
            self.accounting.refused(ex, 499)
            return Response(status_code=499)

    async def dry_run(self, request: Request, key: ApiKey | None = None) -> Response:
        """``POST /v1/route``: the decision for a chat or completion body, without calling any backend."""
        started = time.perf_counter()
        try:
            decision = await self.admission.dry_run(request, key)
        except GatewayError as exc:
            if exc.reason is not None:
                self.metrics.rejected(exc.reason, key.name if key else None)
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        live = self.catalog.arms[decision.arm.name]
        doc = {
            "arm": decision.arm.name,
            "model": decision.arm.model,
            "strategy": live.strategy_label,
            "backends": list(live.backends),
            "reason": decision.reason,
            "family": decision.family,
            "explanation": decision.explanation,
            "ranked": [a.name for a in decision.ranked],
            "predictions": {name: p.as_dict() for name, p in decision.predictions.items()},
            "decision_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return Response(orjson.dumps(doc), media_type="application/json")

"""Serving ``/v1/chat/completions`` and ``/v1/completions``: validate, route, forward, relay.

The request's own JSON goes upstream with two changes only: ``model`` becomes the backend's
``served_model`` and, for streams, ``stream_options.include_usage`` is forced on so token
counts are always known (the usage chunk is removed again when the client did not ask for it).

Before the first byte reaches the client, a connection failure, timeout, 5xx or broken read
is retried on the next least-loaded backend of the arm, then of the next-ranked arm, up to
``max_attempts``. After the first byte, failures are reported in-stream (see :mod:`relay`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.arms import ArmCatalog, LiveArm
from gateway.auth import ApiKey
from gateway.backends import Backend, BackendPool
from gateway.decision_log import DecisionLog, DecisionRecord
from gateway.disconnect import unless_disconnected
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyBackend,
    RouteUnmeetableError,
    UpstreamError,
    UpstreamHTTPError,
    error_response,
)
from gateway.feedback import FeedbackLog, RouteLog
from gateway.feedback_endpoint import feedback_response
from gateway.limits import Charge, RateLimiter, check_caps, estimate_tokens, settle_at_end, token_count
from gateway.metrics import GatewayMetrics
from gateway.pdr_forwarding import PDRForwarder
from gateway.protocol import ChatCompletionRequest, CompletionRequest, Endpoint, prompt_text
from gateway.relay import RelayResponse, StreamOutcome
from gateway.request_body import read_body, validation_error
from gateway.settings import Settings
from gateway.upstream import Upstream, UpstreamIOError, UpstreamResponse, UpstreamTimeout
from router import (
    Decision,
    FlagError,
    NoArmAvailable,
    Policy,
    RouteFlags,
    RouteRequest,
    RouteUnmeetable,
    parse_flags,
)
from router.strategy import PDRStrategy

log = logging.getLogger("gateway.serving")

_PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_MODELS: dict[str, type[BaseModel]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
# cheap features grow with the text (0.1 ms at 1k chars, 4 ms at 10k): longer prompts go to a thread
_INLINE_FEATURE_CHARS = 4000
_UNKNOWN = "unknown"
_NONE = "none"


class Proxy:
    """Forwards generation requests. One instance per app; safe for concurrent requests."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        pool: BackendPool,
        catalog: ArmCatalog,
        policy: Policy,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.pool = pool
        self.catalog = catalog
        self.policy = policy
        self.metrics = metrics
        self.limiter = RateLimiter()
        fb = settings.feedback
        self.routes = RouteLog(fb.remember, store_prompts=fb.store_prompts) if fb.path else None
        self.feedback_log = FeedbackLog(fb.path) if fb.path else None
        path = settings.routing.decision_log
        self.decision_log = (
            DecisionLog(path, store_prompts=fb.store_prompts, on_error=metrics.decision_log_error) if path else None
        )
        self.pdr = PDRForwarder(catalog, pool, metrics, settings.timeouts.retry_after_s, self._send, self._remember)

    def _flags(self, body: dict[str, Any], request: Request, arms: list[LiveArm]) -> RouteFlags:
        """Parse (and remove from the body) the caller's routing flags; check a pinned arm."""
        try:
            flags = parse_flags(body.pop("route", None), request.headers)
        except FlagError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        if flags.arm is not None and not any(a.arm.name == flags.arm for a in arms):
            param = "route.arm" if flags.arm not in self.catalog.arms else "model"
            raise InvalidRequest(
                f"unknown arm '{flags.arm}' for model '{body['model']}'; arms: " + ", ".join(a.arm.name for a in arms),
                param=param,
            )
        return flags

    async def _decide(
        self, body: dict[str, Any], arms: list[LiveArm], flags: RouteFlags, record: bool = True
    ) -> tuple[Decision, RouteRequest]:
        started = time.perf_counter()
        prompt, features = "", None
        if self.policy.needs_features and flags.arm is None and len(arms) > 1:
            prompt = prompt_text(body)
            if self.policy.cheap_features and len(prompt) <= _INLINE_FEATURE_CHARS:
                features = self.policy.featurize(prompt)
            else:
                features = await asyncio.to_thread(self.policy.featurize, prompt)  # encoder: keep it off the loop
        req = RouteRequest(prompt=prompt, flags=flags, max_tokens=body.get("max_tokens"), features=features)
        try:
            decision = self.policy.decide(req, self.catalog.states(arms, self.pool))
        except RouteUnmeetable as exc:
            raise RouteUnmeetableError(exc.message, param=exc.param) from None
        except NoArmAvailable as exc:
            raise NoHealthyBackend(
                f"no healthy backend for model '{body['model']}': {exc}",
                headers={"retry-after": str(self.settings.timeouts.retry_after_s)},
            ) from None
        if record:
            self.metrics.decision(
                decision.arm.model, decision.arm.strategy.label, decision.reason, time.perf_counter() - started
            )
        return decision, req

    def _arms(self, model: str, key: ApiKey | None) -> list[LiveArm]:
        """The arms that may answer ``model`` for ``key``; a model the key may not use looks nonexistent."""
        arms = self.catalog.candidates(model)
        public = self.catalog.public_models()
        if key is None:
            if arms is None:
                raise ModelNotFound(
                    f"The model '{model}' does not exist; available: " + ", ".join(public), param="model"
                )
            return arms
        allowed = key.models
        reason = None
        if arms is not None and allowed is not None:
            reason = "model_not_allowed"
            arms = [a for a in arms if a.arm.model in allowed] if key.allows(model) else []
        if not arms:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it; available: "
                + ", ".join(key.visible(public)),
                param="model",
                reason=reason,
            )
        return arms

    async def _route(
        self,
        endpoint: Endpoint,
        request: Request,
        key: ApiKey | None,
        body: dict[str, Any] | None = None,
        record: bool = True,
    ) -> tuple[dict[str, Any], Decision, Charge | None, RouteRequest]:
        """Validate, check caps and the key's models and budget, decide. ``record=False`` (dry run):
        no decision metrics, one request taken from the key's ``rpm`` budget and no tokens (the returned
        charge is ``None``).
        Also returns what the policy was asked (prompt, flags, features)."""
        if body is None:
            body = await read_body(request, self.settings.server.max_body_bytes)
        try:
            _MODELS[endpoint].model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc, body) from None
        check_caps(body, self.settings.limits)
        arms = self._arms(body["model"], key)
        flags = self._flags(body, request, arms)
        charge = None
        if not record and key is not None and key.rpm:  # a dry run takes a request, no tokens
            self.limiter.admit(key, 0, count_tokens=False)
        if record and key is not None and (key.rpm or key.tpm):  # the estimate walks the prompt: only if needed
            charge = self.limiter.admit(key, estimate_tokens(body, self.settings.limits) if key.tpm else 0)
        try:
            decision, asked = await self._decide(body, arms, flags, record)
            return body, decision, charge, asked
        except GatewayError:
            if charge is not None:
                charge.settle(0)
            raise

    def _rejected(self, exc: GatewayError, key: ApiKey | None) -> None:
        if exc.reason is not None:
            self.metrics.rejected(exc.reason, key.name if key else None)

    async def dry_run(self, request: Request, key: ApiKey | None = None) -> Response:
        """``POST /v1/route``: the decision for a chat or completion body, without calling any backend."""
        started = time.perf_counter()
        try:
            body = await read_body(request, self.settings.server.max_body_bytes)
            endpoint: Endpoint = "completions" if "prompt" in body and "messages" not in body else "chat"
            _, decision, _, _ = await self._route(endpoint, request, key, body, record=False)
        except GatewayError as exc:
            self._rejected(exc, key)
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
            "explanation": decision.explanation,
            "ranked": [a.name for a in decision.ranked],
            "predictions": {name: p.as_dict() for name, p in decision.predictions.items()},
            "decision_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return Response(orjson.dumps(doc), media_type="application/json")

    async def handle(self, endpoint: Endpoint, request: Request, key: ApiKey | None = None) -> Any:
        """Answer one request for ``key`` (``None``: auth is off); every failure becomes an OpenAI
        error response (never raises)."""
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        model_label, strategy_label = _UNKNOWN, _NONE
        charge: Charge | None = None
        trace: DecisionRecord | None = None
        try:
            body, decision, charge, asked = await self._route(endpoint, request, key)
            model_label, strategy_label = decision.arm.model, decision.arm.strategy.label
            if self.decision_log is not None and decision.predictions and asked.features is not None:
                # the learned policy chose among several arms (not pinned)
                features = self.policy.logged_features(asked.features)
                trace = self.decision_log.open(request_id, endpoint, asked, decision, features)
            forward = self._forward(endpoint, body, decision, started, request_id, trace)
            answer = await unless_disconnected(forward, request.receive)  # a client gone cancels the wait
            return settle_at_end(answer, charge)
        except GatewayError as exc:
            if charge is not None:
                charge.settle(0)  # refused before any backend answered: nothing was generated
            if trace is not None:
                trace.finish(exc.status, latency_s=time.perf_counter() - started)
            self._rejected(exc, key)
            self.metrics.request_done(model_label, strategy_label, endpoint, exc.status)
            return error_response(_with_headers(exc, {"x-request-id": request_id}))
        except ClientDisconnect:
            if trace is not None:
                trace.finish(499, latency_s=time.perf_counter() - started)
            self.metrics.request_done(model_label, strategy_label, endpoint, 499)
            return Response(status_code=499)

    async def _send(
        self, backend: Backend, endpoint: Endpoint, payload: bytes, stream: bool, request_id: str
    ) -> UpstreamResponse:
        # vLLM names its response after X-Request-Id (chatcmpl-<id>), so feedback can find the decision.
        headers = {"content-type": "application/json", "x-request-id": request_id, **backend.auth_header}
        return await self.upstream.post(backend.base_url + _PATHS[endpoint], payload, headers, stream)

    def _remember(
        self, request_id: str, endpoint: Endpoint, live: LiveArm, backend: str, reason: str, body: dict[str, Any]
    ) -> None:
        if self.routes is not None:
            self.routes.remember(
                request_id,
                endpoint=endpoint,
                arm=live.arm.name,
                model=live.arm.model,
                strategy=live.strategy_label,
                backend=backend,
                reason=reason,
                prompt=prompt_text(body),
            )

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback``: see :func:`gateway.feedback_endpoint.feedback_response`."""
        return await feedback_response(request, self.routes, self.feedback_log, self.settings.server.max_body_bytes)

    async def _forward(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        decision: Decision,
        started: float,
        request_id: str,
        trace: DecisionRecord | None = None,
    ) -> Any:
        if isinstance(decision.arm.strategy, PDRStrategy):
            return await self.pdr.forward(endpoint, body, decision, started, request_id, trace)
        stream = bool(body.get("stream"))
        client_opts = body.get("stream_options") or {}
        wants_usage = bool(client_opts.get("include_usage"))
        if stream:
            body["stream_options"] = {**client_opts, "include_usage": True}
        last_error: GatewayError | None = None
        tried: set[str] = set()
        attempts = 0
        for arm in decision.ranked or (decision.arm,):
            live = self.catalog.arms[arm.name]
            while attempts < self.settings.max_attempts:
                backend = self.pool.choose(live.backends, tried)
                if backend is None:
                    break
                tried.add(backend.name)
                attempts += 1
                body["model"] = backend.settings.served_model
                backend.acquire()
                try:
                    resp = await self._send(backend, endpoint, orjson.dumps(body), stream, request_id)
                except UpstreamTimeout as exc:
                    backend.release()
                    self.pool.report_failure(backend, exc.kind, exc.detail)
                    last_error = UpstreamError(
                        f"backend '{backend.name}' timed out ({exc.detail})", kind="timeout", status=504
                    )
                    continue
                except UpstreamIOError as exc:
                    backend.release()
                    self.pool.report_failure(backend, exc.kind, exc.detail)
                    last_error = UpstreamError(f"backend '{backend.name}' failed: {exc.detail}", kind=exc.kind)
                    continue
                except asyncio.CancelledError:  # the client left while we waited for the headers
                    backend.release()
                    raise
                headers = {
                    "x-route-arm": live.arm.name,
                    "x-route-model": live.arm.model,
                    "x-route-strategy": live.strategy_label,
                    "x-route-backend": backend.name,
                    "x-route-reason": decision.reason if live.arm is decision.arm else "failover",
                    "x-request-id": request_id,
                }
                if resp.status >= 400:
                    try:
                        payload = await resp.read()
                    except UpstreamIOError:
                        payload = b""
                    finally:
                        await resp.aclose()
                        backend.release()
                    if resp.status >= 500:
                        self.pool.report_failure(backend, "http_5xx", str(resp.status))
                        last_error = UpstreamHTTPError(resp.status, payload)
                        continue
                    self.metrics.upstream_error(backend.name, "http_4xx")
                    raise _with_headers(UpstreamHTTPError(resp.status, payload), headers)
                self._remember(request_id, endpoint, live, backend.name, headers["x-route-reason"], body)
                if live.arm is not decision.arm:
                    self.metrics.failover(live.arm.model, live.strategy_label)
                forecast = decision.predictions.get(live.arm.name)
                predicted = forecast.latency_s if forecast is not None else None
                if stream:
                    return self._relay(endpoint, live, backend, resp, headers, wants_usage, started, predicted, trace)
                try:
                    return await self._complete(endpoint, live, backend, resp, headers, started, predicted, trace)
                except UpstreamError as exc:
                    last_error = exc
                    continue
        if last_error is not None:
            raise last_error
        raise NoHealthyBackend(
            f"no healthy backend for model '{decision.arm.model}'",
            headers={"retry-after": str(self.settings.timeouts.retry_after_s)},
        )

    async def _complete(
        self,
        endpoint: Endpoint,
        live: LiveArm,
        backend: Backend,
        resp: UpstreamResponse,
        headers: dict[str, str],
        started: float,
        predicted_s: float | None = None,
        trace: DecisionRecord | None = None,
    ) -> Response:
        try:
            content = await resp.read()
        except UpstreamIOError as exc:
            kind = "timeout" if isinstance(exc, UpstreamTimeout) else "stream"
            self.pool.report_failure(backend, kind, exc.detail)
            raise UpstreamError(
                f"backend '{backend.name}' failed while answering: {exc.detail}",
                kind=kind,
                status=504 if kind == "timeout" else 502,
            ) from None
        finally:
            await resp.aclose()
            backend.release()
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):  # e.g. a proxy's HTML page: never pass it on as an answer
            self.pool.report_failure(backend, "protocol", "malformed answer")
            raise UpstreamError(
                f"backend '{backend.name}' sent a malformed answer (not a JSON object)", kind="protocol"
            )
        self.pool.report_success(backend)
        needle = b'"model":' + orjson.dumps(backend.settings.served_model)
        content = content.replace(needle, b'"model":' + orjson.dumps(live.arm.model), 1)
        series = self.metrics.series(live.arm.model, live.strategy_label)
        usage = answer.get("usage") or {}
        completion = None
        if isinstance(usage, dict):
            completion = token_count(usage.get("completion_tokens"))
            self.metrics.observe_usage(series, token_count(usage.get("prompt_tokens")), completion)
        elapsed = time.perf_counter() - started
        series.duration.observe(elapsed)
        if predicted_s is not None and resp.status < 400:
            self.policy.observe(live.arm.name, predicted_s, elapsed)
        if trace is not None:
            trace.finish(
                resp.status, served_arm=live.arm.name, backend=backend.name, output_tokens=completion, latency_s=elapsed
            )
        self.metrics.request_done(live.arm.model, live.strategy_label, endpoint, resp.status)
        return Response(content, status_code=resp.status, media_type=resp.content_type, headers=headers)

    def _relay(
        self,
        endpoint: Endpoint,
        live: LiveArm,
        backend: Backend,
        resp: UpstreamResponse,
        headers: dict[str, str],
        wants_usage: bool,
        started: float,
        predicted_s: float | None = None,
        trace: DecisionRecord | None = None,
    ) -> RelayResponse:
        metrics = self.metrics
        series = metrics.series(live.arm.model, live.strategy_label)
        # the load this stream's measurements are taken under: the others in flight as it starts
        # (a queued request's TTFT is set by what was ahead of it, not by what is left at its end)
        beside = max(0.0, backend.load - 1.0)

        def done(out: StreamOutcome) -> None:
            backend.release()
            end = time.perf_counter()
            series.duration.observe(end - started)
            ttft = None
            if out.first_token_at is not None:
                ttft = out.first_token_at - started
                series.ttft.observe(ttft)
                for gap in out.itl:
                    series.itl.observe(gap)
            completion = 0
            if out.usage:
                completion = token_count(out.usage.get("completion_tokens"))
                metrics.observe_usage(series, token_count(out.usage.get("prompt_tokens")), completion)
            tps = None
            if completion > 1 and out.first_token_at is not None and out.last_token_at is not None:
                span = out.last_token_at - out.first_token_at
                if span > 0:
                    tps = (completion - 1) / span
                    series.tokens_per_s.observe(tps)
            if out.disconnected:
                status = 499
            elif out.error is not None:
                status = out.error.status
                self.pool.report_failure(backend, out.error.kind, out.error.message)
            else:
                status = 200
                self.pool.report_success(backend)
                live.record(ttft, tps, beside)
                if predicted_s is not None:
                    self.policy.observe(live.arm.name, predicted_s, end - started)
            if trace is not None:
                tokens = completion if out.usage else None
                trace.finish(
                    status,
                    served_arm=live.arm.name,
                    backend=backend.name,
                    ttft_s=ttft,
                    output_tokens=tokens,
                    latency_s=end - started,
                    tokens_per_s=tps,
                )
            metrics.request_done(live.arm.model, live.strategy_label, endpoint, status)

        return RelayResponse(
            resp, headers, backend.settings.served_model, live.arm.model, strip_usage=not wants_usage, on_done=done
        )


def _with_headers(exc: GatewayError, headers: dict[str, str]) -> GatewayError:
    exc.headers.update(headers)
    return exc

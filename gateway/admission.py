"""Admission: from an HTTP request to a routed :class:`Exchange`, or a refusal.

In order: read the body (:mod:`gateway.request_body`), validate it against the endpoint's model,
check the caps (:func:`gateway.limits.check_caps`), the key's models, the routing flags (``route`` in
the body, removed, or ``x-route-*`` headers), the key's budgets (:class:`gateway.limits.RateLimiter`),
then ask the policy (:mod:`router`) for a :class:`router.Decision`. Every refusal is a
:class:`gateway.errors.GatewayError`; a refusal after the charge gives the tokens back.

For streams the client's ``stream_options.include_usage`` is remembered (:attr:`Exchange.wants_usage`)
and forced on in the body: token counts are always asked upstream, and the relay drops the usage
chunk again when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.affinity import SESSION_HEADER
from gateway.arms import ArmCatalog, LiveArm
from gateway.auth import ApiKey
from gateway.backends import BackendPool
from gateway.decision_log import DecisionLog, DecisionRecord
from gateway.errors import InvalidRequest, ModelNotFound, NoHealthyBackend, RouteUnmeetableError
from gateway.limits import Charge, RateLimiter, check_caps, check_message_count, estimate_tokens
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint, prompt_text
from gateway.request_body import read_body, validation_error
from gateway.settings import Settings
from gateway.tracing import NO_TRACE, NO_TRACER, RequestTrace, Tracer
from router import Decision, FlagError, NoArmAvailable, Policy, RouteFlags, RouteRequest, RouteUnmeetable, parse_flags
from router.policy import LeastLoadedPolicy

_MODELS: dict[str, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}
# cheap features grow with the text (0.1 ms at 1k chars, 4 ms at 10k): longer prompts go to a thread
_INLINE_FEATURE_CHARS = 4000


@dataclass(slots=True, eq=False, weakref_slot=True)  # weakref: its id is in flight while it lives
class Exchange:
    """One generation request from admission to its end; filled in by :meth:`Admission.admit`.

    ``charge`` is ``None`` without a key budget; ``trace`` is the decision log's record, if any.
    """

    request_id: str
    endpoint: Endpoint
    started: float
    key: ApiKey | None = None
    body: dict[str, Any] | None = None
    decision: Decision | None = None
    asked: RouteRequest | None = None
    charge: Charge | None = None
    trace: DecisionRecord | None = None
    stream: bool = False
    wants_usage: bool = False
    finished: bool = False
    session: str | None = None  # the x-session-id header: a key for replica affinity (gateway/affinity.py)
    pending: LiveArm | None = None  # the decided arm, while this request counts in its ``pending``

    def sent(self) -> None:
        """This request has reached a backend (which counts it from now) or ended: it no longer counts
        as pending on the arm it was routed to. Idempotent."""
        if self.pending is not None:
            self.pending.pending -= 1
            self.pending = None

    span: RequestTrace = NO_TRACE  # its trace (gateway/tracing.py); the no-op while tracing is off

    def route_headers(self, live: LiveArm, backend: str) -> dict[str, str]:
        """The ``x-route-*`` headers of an answer from ``live`` on ``backend`` (names, comma separated)."""
        decision = self.decision
        assert decision is not None
        return {
            "x-route-arm": live.arm.name,
            "x-route-model": live.arm.model,
            "x-route-strategy": live.strategy_label,
            "x-route-backend": backend,
            "x-route-reason": decision.reason if live.arm is decision.arm else "failover",
            "x-request-id": self.request_id,
        }


class Admission:
    """Admits requests for one app. Safe for concurrent requests on the event loop."""

    def __init__(
        self,
        settings: Settings,
        catalog: ArmCatalog,
        pool: BackendPool,
        policy: Policy,
        metrics: GatewayMetrics,
        decision_log: DecisionLog | None = None,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self.settings = settings
        self.tracer = tracer
        self.catalog = catalog
        self.pool = pool
        self.policy = policy
        self.metrics = metrics
        self.decision_log = decision_log
        self.limiter = RateLimiter()
        # embeddings and pinned-only arms are not routed on the prompt: least-loaded (or pinned) among the arms
        self.plain_policy = LeastLoadedPolicy()

    async def admit(self, ex: Exchange, request: Request) -> None:
        """Fill ``ex`` with the body, the decision, the charge and the trace; raise a
        :class:`GatewayError` to refuse."""
        ex.span = span = self.tracer.request(ex.endpoint, ex.request_id, request.headers)
        body = await read_body(request, self.settings.server.max_body_bytes)
        arms, flags = self._check(ex.endpoint, body, request, ex.key)
        key = ex.key
        if key is not None and (key.rpm or key.tpm):  # the estimate walks the prompt: only if needed
            ex.charge = self.limiter.admit(key, estimate_tokens(body, self.settings.limits) if key.tpm else 0)
        ex.body = body
        ex.session = request.headers.get(SESSION_HEADER)
        span.deciding()
        decision, asked = await self._decide(body, arms, flags, endpoint=ex.endpoint)
        span.decided(decision, body["model"], self.catalog.arms[decision.arm.name].backends)
        ex.decision, ex.asked = decision, asked
        # counted as load on its arm from now until it reaches a backend (the backend counts it from
        # there): a request decided meanwhile sees it, so a burst spreads over arms
        ex.pending = self.catalog.arms[decision.arm.name]
        ex.pending.pending += 1
        if self.decision_log is not None and decision.predictions and flags.arm is None and len(arms) > 1:
            # the learned policy chose among several arms (not pinned, not a one-arm model)
            features = self.policy.logged_features(asked.features)
            ex.trace = self.decision_log.open(ex.request_id, ex.endpoint, asked, decision, features)
        if body.get("stream") and ex.endpoint != "embeddings":
            options = body.get("stream_options") or {}
            ex.stream, ex.wants_usage = True, bool(options.get("include_usage"))
            body["stream_options"] = {**options, "include_usage": True}

    async def dry_run(self, request: Request, key: ApiKey | None) -> Decision:
        """The decision for a chat or completion body, without decision metrics; takes one request
        from the key's ``rpm`` budget and no tokens."""
        body = await read_body(request, self.settings.server.max_body_bytes)
        endpoint: Endpoint = "completions" if "prompt" in body and "messages" not in body else "chat"
        arms, flags = self._check(endpoint, body, request, key)
        if key is not None and key.rpm:
            self.limiter.admit(key, 0, count_tokens=False)
        decision, _ = await self._decide(body, arms, flags, record=False)
        return decision

    def _check(
        self, endpoint: Endpoint, body: dict[str, Any], request: Request, key: ApiKey | None
    ) -> tuple[list[LiveArm], RouteFlags]:
        """Validate ``body``, check the caps and the key's models; the arms it may use and the caller's
        routing flags."""
        check_message_count(body, self.settings.limits)
        try:
            _MODELS[endpoint].model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc, body) from None
        check_caps(body, self.settings.limits)
        arms = self._arms(body["model"], key, endpoint)
        flags = self._flags(body, request, arms)
        return self.catalog.routable(arms, flags.arm), flags

    async def _decide(
        self, body: dict[str, Any], arms: list[LiveArm], flags: RouteFlags, record: bool = True, endpoint: str = ""
    ) -> tuple[Decision, RouteRequest]:
        """The policy's decision among ``arms``, and what it was asked (prompt, flags, features)."""
        started = time.perf_counter()
        prompt, features = "", None
        plain = endpoint == "embeddings" or self.catalog.needs_no_policy(arms)
        policy = self.plain_policy if plain else self.policy
        if policy.needs_features:
            # a pinned arm or a one-arm model needs no choice, but its forecast feeds the arm's live
            # corrections and a strict budget: it is made for this prompt, never an empty one
            prompt = prompt_text(body)
            if self.policy.cheap_features and len(prompt) <= _INLINE_FEATURE_CHARS:
                features = self.policy.featurize(prompt)
            else:
                features = await asyncio.to_thread(self.policy.featurize, prompt)  # encoder: keep it off the loop
        req = RouteRequest(prompt=prompt, flags=flags, max_tokens=body.get("max_tokens"), features=features)
        try:
            decision = policy.decide(req, self.catalog.states(arms, self.pool))
        except RouteUnmeetable as exc:
            raise RouteUnmeetableError(exc.message, param=exc.param) from None
        except NoArmAvailable as exc:
            raise NoHealthyBackend(
                f"no healthy backend for model '{body['model']}': {exc}",
                headers={"retry-after": str(self.settings.timeouts.retry_after_s)},
            ) from None
        if record:
            self.metrics.decision(
                decision.arm.model,
                decision.arm.strategy.label,
                decision.reason,
                time.perf_counter() - started,
                decision.family,
            )
        return decision, req

    def _flags(self, body: dict[str, Any], request: Request, arms: list[LiveArm]) -> RouteFlags:
        """Parse (and remove from the body) the caller's routing flags; check a pinned arm."""
        try:
            flags = parse_flags(body.pop("route", None), request.headers)
        except FlagError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        if flags.arm is not None and not any(a.arm.name == flags.arm for a in arms):
            # one answer whether the arm exists for another model or key or not at all: no oracle
            raise InvalidRequest(
                f"unknown arm '{flags.arm}' for model '{body['model']}'; arms: " + ", ".join(a.arm.name for a in arms),
                param="route.arm",
            )
        return flags

    def _arms(self, model: str, key: ApiKey | None, endpoint: Endpoint = "chat") -> list[LiveArm]:
        """The arms that may answer ``model`` on ``endpoint`` for ``key``; a model the key may not use
        looks nonexistent."""
        arms = self.catalog.candidates(model, endpoint)
        public = self.catalog.models_for(endpoint)
        if endpoint == "embeddings" and arms is None and (key is None or key.allows(model)):
            served = ", ".join(key.visible(public) if key else public)
            raise ModelNotFound(
                f"The model '{model}' does not serve embeddings; "
                + (f"embedding models: {served}" if served else "no arm serves embeddings (arms[].endpoints)"),
                param="model",
            )
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

"""``POST /v1/feedback``: validate a rating, join it with its routing decision, append it (JSONL).

In order: recording must be on (404 ``feedback_disabled``); the caller's ratings budget
(``feedback.rpm`` per API key, ``feedback.anonymous_rpm`` shared by every caller without one: 429
with ``Retry-After``); the body, at most :data:`gateway.protocol.FEEDBACK_MAX_BODY_BYTES` (413) and
valid (400 naming the field: labels and comment are bounded); then the decision it rates, which
must be remembered and made for the same key: anything else is one 404 ``response_not_found`` whose
message names only the id given, so a key learns nothing about other keys' answers. Only then is a
line written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.auth import ApiKey
from gateway.errors import GatewayError, InvalidRequest, error_response
from gateway.feedback import FeedbackLog, RouteLog
from gateway.limits import PerMinute
from gateway.metrics import GatewayMetrics
from gateway.protocol import FEEDBACK_MAX_BODY_BYTES, FeedbackRequest
from gateway.request_body import read_body, validation_error
from gateway.settings import FeedbackSettings

log = logging.getLogger("gateway.serving")

_ANONYMOUS = ""  # the budget of callers without a key (key names are never empty)


class FeedbackEndpoint:
    """Serves ``POST /v1/feedback`` for one app; event-loop only (the budgets are not locked)."""

    def __init__(
        self,
        settings: FeedbackSettings,
        max_body_bytes: int,
        routes: RouteLog | None,
        feedback_log: FeedbackLog | None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_body_bytes = min(max_body_bytes, FEEDBACK_MAX_BODY_BYTES)
        self.routes = routes
        self.feedback_log = feedback_log
        self.budgets = PerMinute()

    async def __call__(self, request: Request, key: ApiKey | None) -> Response:
        """Record a rating by ``key`` (``None``: auth off); never raises (errors are OpenAI envelopes)."""
        try:
            rating, line = await self._record(request, key)
        except GatewayError as exc:
            if exc.reason is not None and self.metrics is not None:  # a spent budget, a body too large
                self.metrics.rejected(exc.reason, key.name if key is not None else None)
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        doc = {"object": "feedback", "id": rating.id, "recorded": True, "matched": True, "arm": line["route"]["arm"]}
        return Response(orjson.dumps(doc), media_type="application/json")

    async def _record(self, request: Request, key: ApiKey | None) -> tuple[FeedbackRequest, dict[str, Any]]:
        routes, feedback_log = self.routes, self.feedback_log
        if feedback_log is None or routes is None:
            off = InvalidRequest("feedback recording is off on this gateway (set feedback.path)")
            off.status, off.code = 404, "feedback_disabled"
            raise off
        if key is None:
            self.budgets.take(_ANONYMOUS, self.settings.anonymous_rpm, "feedback without an API key")
        else:
            self.budgets.take(key.name, self.settings.rpm, f"feedback of key '{key.name}'")
        body = await read_body(request, self.max_body_bytes)
        try:
            rating = FeedbackRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc, body) from None
        route = routes.find(rating.id, key=key.name if key is not None else None)
        if route is None:  # unknown, forgotten, or another key's: one answer for all three
            unknown = InvalidRequest(f"no answer with id '{rating.id}' is known to this gateway", param="id")
            unknown.status, unknown.code = 404, "response_not_found"
            raise unknown
        try:
            line = await asyncio.to_thread(
                feedback_log.record, rating.id, rating.rating, route, comment=rating.comment, labels=rating.labels
            )
        except OSError as exc:
            log.error("cannot write feedback to %s: %s", feedback_log.path, exc)
            raise GatewayError("feedback could not be recorded; see the gateway log", code="feedback_io") from None
        return rating, line

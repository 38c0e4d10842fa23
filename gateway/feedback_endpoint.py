"""``POST /v1/feedback``: validate a rating, join it with its routing decision, append it (JSONL)."""

from __future__ import annotations

import asyncio
import logging

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import GatewayError, InvalidRequest, error_response
from gateway.feedback import FeedbackLog, RouteLog
from gateway.protocol import FeedbackRequest
from gateway.request_body import read_body, validation_error

log = logging.getLogger("gateway.serving")


async def feedback_response(
    request: Request, routes: RouteLog | None, feedback_log: FeedbackLog | None, max_body_bytes: int
) -> Response:
    """Record a rating for an answer, joined with its routing decision; never raises (errors are
    OpenAI envelopes, 404 ``feedback_disabled`` when recording is off)."""
    try:
        if feedback_log is None or routes is None:
            off = InvalidRequest("feedback recording is off on this gateway (set feedback.path)")
            off.status, off.code = 404, "feedback_disabled"
            raise off
        body = await read_body(request, max_body_bytes)
        try:
            rating = FeedbackRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc, body) from None
        try:
            line = await asyncio.to_thread(
                feedback_log.record,
                rating.id,
                rating.rating,
                routes.find(rating.id),
                comment=rating.comment,
                labels=rating.labels,
            )
        except OSError as exc:
            log.error("cannot write feedback to %s: %s", feedback_log.path, exc)
            raise GatewayError("feedback could not be recorded; see the gateway log", code="feedback_io") from None
    except GatewayError as exc:
        return error_response(exc)
    except ClientDisconnect:
        return Response(status_code=499)
    doc = {"object": "feedback", "id": rating.id, "recorded": True, "matched": line["matched"]}
    if "route" in line:
        doc["arm"] = line["route"]["arm"]
    return Response(orjson.dumps(doc), media_type="application/json")

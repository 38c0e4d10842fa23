"""The gateway's error hierarchy, mapped to OpenAI's envelope in one place.

::

    GatewayError                     status  type                    code
    ├── InvalidRequest               400     invalid_request_error   (param named)
    ├── Unauthorized                 401     invalid_request_error   missing_api_key / invalid_api_key
    ├── ModelNotFound                404     invalid_request_error   model_not_found (also: not allowed for the key)
    ├── PayloadTooLarge              413     invalid_request_error   payload_too_large
    ├── RouteUnmeetableError         422     invalid_request_error   route_unmeetable (route.strict; param named)
    ├── RateLimited                  429     requests / tokens       rate_limit_exceeded (+Retry-After)
    ├── NoHealthyBackend             503     service_unavailable     no_healthy_backend (+Retry-After)
    ├── ShutDown                     503     service_unavailable     shutting_down (drain timed out)
    ├── UpstreamError                502/504 upstream_error          upstream_<kind>
    └── UpstreamHTTPError            4xx as upstream (429 keeps Retry-After); 5xx: 502 upstream_http_5xx

Handlers raise these; :func:`error_response` renders them. Once a stream has started an error
becomes an SSE ``data:`` event followed by ``data: [DONE]`` (:func:`gateway.sse.error_event`).
Upstream failures become these in one place, :mod:`gateway.calls`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    """``reason``: set on errors that refuse a request by policy (auth, limits, caps); it is the
    ``reason`` label of ``gateway_rejected_requests_total`` and never shown to the client."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    reason: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class RouteUnmeetableError(GatewayError):
    """``route.strict`` is set and no arm is predicted to meet the flags: refused before generating."""

    status = 422
    type = "invalid_request_error"
    code = "route_unmeetable"


class Unauthorized(GatewayError):
    """No API key or an unknown one. Carries ``WWW-Authenticate`` (RFC 6750)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    reason = "unauthorized"

    def __init__(self, message: str, *, code: str = "invalid_api_key") -> None:
        challenge = 'Bearer realm="llm-gateway"'
        if code == "invalid_api_key":
            challenge += ', error="invalid_token"'
        super().__init__(message, code=code, headers={"www-authenticate": challenge})


class RateLimited(GatewayError):
    """A key's requests- or tokens-per-minute budget is spent. ``type`` names which, as OpenAI does."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after_s)}, reason=f"rate_limit_{limit}")
        self.type = limit


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    reason = "payload_too_large"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NoHealthyBackend(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_backend"


class ShutDown(GatewayError):
    """The drain timeout (``server.drain_timeout_s``) cut the request off (gateway/server.py)."""

    status = 503
    type = "service_unavailable"
    code = "shutting_down"


class UpstreamError(GatewayError):
    """The upstream could not be reached, timed out, or broke the protocol."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, kind: str, status: int = 502) -> None:
        super().__init__(message, code=f"upstream_{kind}")
        self.kind = kind
        self.status = status


class UpstreamHTTPError(GatewayError):
    """The upstream answered with an error status ``upstream_status``; its message is kept.

    A 4xx is passed through as it is (a 429 with its ``Retry-After`` when that is well-formed); a 5xx
    becomes a 502 ``upstream_error`` / ``upstream_http_5xx`` whose message names the backend and the
    upstream status: a 500 from the gateway would read as its own bug."""

    def __init__(self, status: int, payload: bytes, backend: str = "upstream", retry_after: str | None = None) -> None:
        message, etype, param, code = _parse_upstream_error(payload, status)
        self.upstream_status = status
        if status >= 500:
            super().__init__(f"backend '{backend}' answered HTTP {status}: {message}", code="upstream_http_5xx")
            self.status, self.type = 502, "upstream_error"
            return
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = etype
        if status == 429 and retry_after is not None and _RETRY_AFTER.fullmatch(retry_after):
            self.headers["retry-after"] = retry_after


#: a ``Retry-After`` worth passing on: delay-seconds or an HTTP date
_RETRY_AFTER = re.compile(r"[0-9]{1,10}|[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")


def _parse_upstream_error(payload: bytes, status: int) -> tuple[str, str, str | None, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        nested = data.get("error")
        err: dict[str, Any] = nested if isinstance(nested, dict) else data
        message = err.get("message") or err.get("detail")
        if message is not None:
            etype = err.get("type") or ("invalid_request_error" if status < 500 else "upstream_error")
            return str(message), str(etype), err.get("param"), err.get("code")
    text = payload.decode("utf-8", "replace").strip()[:500] or f"upstream returned HTTP {status}"
    return text, "invalid_request_error" if status < 500 else "upstream_error", None, None


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """Render ``exc`` as a JSON response in OpenAI's envelope."""
    merged = {**(headers or {}), **exc.headers}
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=merged)

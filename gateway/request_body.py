"""Reading a request's JSON body, and naming what is wrong with it, as OpenAI-style errors.

The body is read in chunks against ``server.max_body_bytes`` (413 ``payload_too_large`` as soon as it
is exceeded, or at once when ``content-length`` says so); a problem found by the request model
becomes a 400 whose ``param`` is the field as the client wrote it (``messages.0.content``).
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge

#: ``orjson.dumps`` refuses this many levels of nesting (its recursion limit).
_MAX_DEPTH = 255


async def read_body(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object: 413 past ``limit`` bytes (declared or read), 400 when empty, not JSON or
    not an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    _check_depth(raw, body)
    return body


def _check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """400 for a body nested deeper than the gateway can forward: ``orjson.loads`` takes 1,024 levels,
    ``orjson.dumps`` (which builds the upstream request) stops at 255. Only bodies with enough brackets
    to be that deep are re-encoded to check."""
    if raw.count(b"[") + raw.count(b"{") < _MAX_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequest(f"request body is nested too deeply (at most {_MAX_DEPTH - 1} levels)") from None


def _param(loc: tuple[int | str, ...], body: Any, missing: bool) -> str | None:
    """``loc`` as the client wrote it: pydantic's union-member tags (``prompt.list[int]``) dropped."""
    parts: list[str] = []
    node = body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and (part in node or (missing and i == len(loc) - 1)):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        parts.append(str(part))
    return ".".join(parts) or None


def validation_error(exc: ValidationError, body: dict[str, Any]) -> InvalidRequest:
    """A 400 for a body the request model refused: the first problem, with its field as the client wrote it."""
    err = exc.errors()[0]
    param = _param(err["loc"], body, err["type"] == "missing")
    msg = err["msg"]
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return InvalidRequest(f"{param}: {msg}{suffix}" if param else msg + suffix, param=param)

"""The gateway's ASGI app: FastAPI, with the two generation endpoints served beneath it.

``POST /v1/chat/completions`` and ``POST /v1/completions`` are most of the traffic, and FastAPI's
stack (error and telemetry middlewares, body-limit and exit-stack wrappers, the router, dependency
solving) costs CPU on every request and a wrapper call on every message a stream sends. So
:class:`GatewayApp` answers a POST to either exact path itself, with the handler the FastAPI route
has, and leaves everything else to FastAPI (which still declares both routes, for the OpenAPI
document and for whatever this does not match: another method, a path with a trailing slash, an app
under a ``root_path``). What the drain cutoff needs to know of the response
(:mod:`gateway.response_state`) is kept without wrapping the stream's ``send``.

What the request needs is kept, with the same results as through FastAPI: the handler authenticates
(401 before the body is read) and :meth:`gateway.serving.Proxy.handle` does the rest (body limit,
validation, rate limits, routing, metrics, errors as OpenAI envelopes). A :class:`GatewayError` that
escapes the handler is rendered as its envelope, as FastAPI's exception handler does; an unexpected
exception is logged and answered with the ``internal_error`` envelope (500) when nothing was sent yet,
then re-raised to the server, as Starlette's ``ServerErrorMiddleware`` does.

Async-safety: stateless apart from the handler table, filled once by :func:`gateway.app.create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import response_state
from gateway.errors import GatewayError, error_response

log = logging.getLogger("gateway.app")

Handler = Callable[[Request], Awaitable[Response]]


def internal_error(request: Request) -> Response:
    """Log the exception being handled and render the envelope the client gets instead."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError("internal gateway error; see the gateway log", code="internal_error"))


class GatewayApp(FastAPI):
    """FastAPI plus a direct path for the generation endpoints (see the module docstring)."""

    keeps_response_state = True  # gateway.server.DrainCutoff need not wrap its send

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct: dict[str, Handler] = {}  # exact path of a POST → its handler

    def serve_directly(self, path: str, handler: Handler) -> None:
        """Answer ``POST path`` with ``handler`` beneath FastAPI's stack."""
        self.direct[path] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.direct.get(scope["path"])
            if handler is not None:
                await _serve(handler, scope, receive, send)
                return
        state = response_state.of(scope)
        await super().__call__(scope, receive, send if state is None else state.tracking(send))


class IndexedHeaders(Headers):
    """Starlette's request :class:`Headers` with ``get`` / ``[]`` / ``in`` answered from a dict built
    once, instead of a scan of every header per lookup (a generation request looks up a dozen: auth,
    the routing flags, request id, trace context, session, content length; the official clients send
    fifteen headers or more). The first of a repeated header wins, as in :class:`Headers`."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self.first = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(self._list)}

    def __getitem__(self, key: str) -> str:
        try:
            return self.first[key.lower()]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self.first

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self.first.get(key.lower(), default)


class GatewayRequest(Request):
    """A :class:`Request` whose headers are :class:`IndexedHeaders`."""

    @property
    def headers(self) -> Headers:
        headers: Headers | None = self.__dict__.get("_headers")
        if headers is None:
            headers = self._headers = IndexedHeaders(self.scope)
        return headers


async def _serve(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    request = GatewayRequest(scope, receive, send)
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(exc)
    except Exception:
        await internal_error(request)(scope, receive, send)
        raise
    if (state := response_state.of(scope)) is not None and getattr(response, "started", None) is None:
        state.started = True  # a plain response sends its start first thing (a stream says so itself)
    try:
        await response(scope, receive, send)
    except Exception:
        # a plain response sends its start first thing; a stream says whether it got that far
        if not getattr(response, "started", True):
            await internal_error(request)(scope, receive, send)
        raise
